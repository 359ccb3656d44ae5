"""The on-disk index: a self-describing directory and its crash-safe commit protocol.

Layout of an index directory::

    manifest.json            the commit point: format, model, K, kind, shards, row count, ...
    model.pt                 a copy of the checkpoint the codes came from
    parts/<NNNNNN>.parquet   one per committed shard: row_id, code and the scene metadata
    errors/<NNNNNN>.parquet  one per committed shard: the scenes that could not be indexed
    lookup/<NNNNNN>.arrow    one per committed shard: its metadata again, addressable by row,
                             for the hits of queries (``lookup``; absent in older indexes)
    vectors/<NNNNNN>.npy     one per committed shard of a model with re-rank vectors: its
                             rows' vectors, float16 (``vectors``; absent in older indexes)
    staging/<id>.result/     shard results written by workers, waiting to be adopted
    index.faiss/<G>-<i>.faiss  the FAISS side written by ``finalize`` (a cache of the parts):
                             segments of whole shards, searched as one, memory-mappable

A shard's codes live in its Parquet part (a fixed-size binary ``code`` column), so one file
makes a shard's codes and metadata durable together and they can never disagree. Row ids are
int64, ascending in commit order, and never reused: the n rows of a shard get
``[next_row_id, next_row_id + n)``; a shard that is indexed again (its contents changed) gets
new ids and its old ones are retired in the same commit.

Commit protocol. Every file is written to ``<name>.tmp``, fsynced and renamed into place; a
shard's part, errors and lookup files, under names no manifest has used yet (the new
generation number), become durable before the new ``manifest.json`` is, and only the rename of
``manifest.json`` commits the shard. A process killed at any instant therefore leaves either the
old manifest (whose files are all intact; the new files are unreferenced leftovers) or the new
one (whose files are all durable). Leftovers are deleted when a writer next opens the index,
after it has read the manifest that does not reference them. The checksums of a shard's files
are recorded in the manifest, and ``check_index`` verifies them.

Readers read ``manifest.json`` at open and see that committed state however the writer goes
on; ``IndexReader.reopen`` moves on to the newest one.

Modules: ``layout`` (names, schemas, errors), ``manifest`` (the typed manifest, its one reader
and one writer), ``directory`` (create, lock, clean up),
``parts`` (Parquet files), ``lookup`` (lookup files), ``staging`` (shard results before
adoption), ``faiss_file`` (the FAISS segments), ``writer`` (the one committer), ``reader``,
``check``.
"""

from dahash_index.store.check import (
    CheckReport,
    Damage,
    check_index,
    quick_check,
    repair_index,
)
from dahash_index.store.layout import (
    ERRORS_SCHEMA,
    KINDS,
    MANIFEST,
    METADATA_SCHEMA,
    MODEL,
    IndexStoreError,
    ModelMismatchError,
    metadata_schema,
)
from dahash_index.store.manifest import FORMAT, Manifest, ShardEntry
from dahash_index.store.reader import IndexReader
from dahash_index.store.writer import IndexWriter

__all__ = [
    "ERRORS_SCHEMA",
    "FORMAT",
    "KINDS",
    "MANIFEST",
    "METADATA_SCHEMA",
    "MODEL",
    "CheckReport",
    "Damage",
    "IndexReader",
    "IndexStoreError",
    "IndexWriter",
    "Manifest",
    "ModelMismatchError",
    "ShardEntry",
    "check_index",
    "metadata_schema",
    "quick_check",
    "repair_index",
]
