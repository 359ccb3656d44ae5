"""The on-disk index: a self-describing directory and its crash-safe commit protocol.

Layout of an index directory::

    manifest.json            the commit point: format, model, K, kind, shards, row count, ...
    model.pt                 a copy of the checkpoint the codes came from
    parts/<NNNNNN>.parquet   one per committed shard: row_id, code and the scene metadata
    errors/<NNNNNN>.parquet  one per committed shard: the scenes that could not be indexed
    lookup/<NNNNNN>.arrow    one per committed shard: its metadata again, addressable by row,
                             for the hits of queries (``lookup``; absent in older indexes)
    vectors/<NNNNNN>.npy     one per committed shard of a model with re-rank vectors: its
                             rows' vectors, int8 (``vectors``; float16 in older indexes, absent
                             in the oldest)
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
after it has read the manifest that does not reference them.

Integrity. Every file's SHA-256 is recorded at commit: a shard's files and each FAISS segment
in the manifest, the model copy as the manifest's model, and the manifest's own over its
canonical JSON. ``check_index`` verifies them all. A reader verifies each file the first time
it reads it (the manifest at open, a segment before it is loaded, a shard's lookup, vectors or
part file at its first hit), and refuses one that differs in one line: sha256 costs about
1.3 s a GB on the 2-core machine, so a cold query pays for the files its hits touch (a
100 M-row index: ~1 s for its 800 MB of segments, a few ms a shard) and a service pays once.
The last ``KEEP_MANIFESTS`` manifests are kept under ``manifests/``; ``repair_index`` restores
the newest good one, the model copy from the user's model, drops shards with damaged files and
rebuilds damaged segments from the parts' codes.

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
from dahash_index.store.manifest import FORMAT, Manifest, ShardEntry, read_manifest
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
    "read_manifest",
    "repair_index",
]
