"""Reading the last committed state of an index directory."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from dahash_index.arrow_arrays import numeric_array
from dahash_index.indexes import ShardedIndex
from dahash_index.lru import BytesLru
from dahash_index.store.blocks import read_digests
from dahash_index.store.faiss_file import faiss_index
from dahash_index.store.layout import (
    ERRORS_SCHEMA,
    MODEL,
    IndexStoreError,
    ModelMismatchError,
    metadata_schema,
    model_sha256,
    verify_checksum,
)
from dahash_index.store.lookup import LookupFile
from dahash_index.store.manifest import Manifest, check_files, mismatch, read_manifest
from dahash_index.store.parts import (
    PartFooter,
    check_row_ids,
    codes_from_arrow,
    read_footer,
    read_parquet,
    read_row_groups,
)
from dahash_index.store.vectors import (
    ShardVectors,
    decode_vectors,
    gather_vectors,
    open_vectors,
)

# Decoded row groups a reader keeps (shared with the readers ``reopen`` makes): hits looked up
# again (a result page shown twice, a scene's thumbnail after its row) read nothing. Bounded
# in bytes, so that a query process's memory does not grow with the index.
ROW_GROUP_CACHE_BYTES = 64 << 20


class IndexReader:
    """The last committed state of an index directory, as of ``open`` (or ``reopen``).

    Metadata is read lazily, so a reader's memory stays small whatever the row count: the rows
    of hits come from the shards' lookup files (``store.lookup``: memory-mapped, uncompressed,
    only the hits' rows touched). Where a shard has none (committed before them), or the codes
    are asked for, from its Parquet part: its footer once (its row groups' sizes, a few kB),
    then only the row groups and columns that the rows need. A running writer does not
    disturb it (it never rewrites a shard's files, and deletes only files that no manifest
    names any more).
    """

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        mmap: bool = False,
        footers: dict[str, PartFooter] | None = None,
        lookups: dict[str, LookupFile] | None = None,
        base: tuple[Manifest, ShardedIndex] | None = None,
        cache: BytesLru[pa.Table] | None = None,
    ) -> None:
        self.path = path
        self._manifest = manifest
        self._mmap = mmap
        self._footers: dict[str, PartFooter] = dict(footers or {})
        self._lookups: dict[str, LookupFile] = dict(lookups or {})
        self._cache = cache if cache is not None else _row_group_cache()
        entries = list(manifest.shards.values())
        self._starts = np.array([e.first_row for e in entries], dtype=np.int64)
        self._ends = self._starts + np.array([e.rows for e in entries], dtype=np.int64)
        self._index: ShardedIndex | None = None
        self._base = base
        self._vector_files: dict[str, ShardVectors] = {}
        self._digest_files: dict[str, tuple[bytes, bytes]] = {}

    @classmethod
    def open(cls, path: str | os.PathLike, mmap: bool = False) -> IndexReader:
        """Read the manifest (once) and check that the files it names exist.

        mmap: memory-map the Parquet parts and the FAISS file (the latter only when it covers
        every shard, see ``faiss_index``).
        """
        path = Path(path)
        manifest = read_manifest(path)
        check_files(path, manifest)
        return cls(path, manifest, mmap)

    def reopen(self) -> IndexReader:
        """The directory's newest committed state: ``self`` when nothing was committed since,
        else a new reader that reuses what this one has read (the footers, lookup files and
        cached row groups of shards still committed unchanged, and the FAISS segments and
        in-memory parts of its index that are still valid: only new segments and new shards'
        codes are read)."""
        manifest = read_manifest(self.path)
        if manifest.generation == self._manifest.generation:
            return self
        check_files(self.path, manifest)
        footers = {
            key: footer
            for key, footer in self._footers.items()
            if manifest.shards.get(key) == self._manifest.shards[key]
        }
        # The new shards' footers now (a few kB each): a damaged new part then fails the
        # reopen, and the caller keeps answering from this state, rather than failing a later
        # query. The FAISS segments no longer read the parts that they cover.
        for key in manifest.shards:
            if key not in footers:
                footers[key] = read_footer(self.path, manifest, key)
        lookups = {
            key: lookup
            for key, lookup in self._lookups.items()
            if manifest.shards.get(key) == self._manifest.shards[key]
        }
        base = None
        if self._index is not None:  # its segments are read-only, mapped or not: all reusable
            base = (self._manifest, self._index)
        # The cache is keyed by part file, and a committed part's name is never reused.
        return IndexReader(self.path, manifest, self._mmap, footers, lookups, base, self._cache)

    @property
    def manifest(self) -> Manifest:
        """A copy of the manifest this reader reads."""
        return copy.deepcopy(self._manifest)

    @property
    def generation(self) -> int:
        """The commit this reader sees; every commit increases it."""
        return self._manifest.generation

    @property
    def bits(self) -> int:
        return self._manifest.bits

    @property
    def kind(self) -> str:
        return self._manifest.kind

    @property
    def row_count(self) -> int:
        return self._manifest.row_count

    @property
    def model_path(self) -> Path:
        return self.path / MODEL

    @property
    def model_sha256(self) -> str:
        return self._manifest.model_sha256

    def check_model(self, checkpoint_path: str | os.PathLike) -> None:
        """Raise ModelMismatchError unless the checkpoint is the index's model (by SHA-256)."""
        sha = model_sha256(checkpoint_path)
        if sha != self.model_sha256:
            raise ModelMismatchError(mismatch(self.path, self._manifest, checkpoint_path, sha))

    def faiss_index(self) -> ShardedIndex:
        """The index of every row, ids = row ids, for ``indexes.hamming_topk`` and
        ``hamming_radius``; built once, then cached.

        A ``ShardedIndex`` (see ``store.faiss_file.faiss_index``): the finalized segments,
        memory-mapped when the reader was opened with ``mmap=True`` (a segment that lost
        retired rows is loaded instead), plus the shards committed since, indexed in memory
        from their parts. ``indexes.nlist_of(index)`` is the IVF's nlist, None when nprobe
        does not apply. After ``reopen``, segments and in-memory parts still valid are reused.
        """
        if self._index is None:
            self._index, _ = faiss_index(self.path, self._manifest, self._mmap, base=self._base)
            self._base = None
        return self._index

    def metadata(
        self, row_ids: np.ndarray | None = None, columns: Sequence[str] | None = None
    ) -> pa.Table:
        """Metadata rows in the order of ``row_ids`` (integer (m,); -1 gives a row of nulls);
        None means all rows in row-id order.

        columns: default all of the part schema but ``code``. With row_ids every column is
        nullable in the result, as -1 rows are null throughout. A row id that no committed
        shard holds (never assigned, or retired when its shard was re-indexed) is refused.
        With row_ids only their rows of the lookup files are read (or, for shards without one,
        the row groups of the parts that hold them, their ``columns`` only).
        """
        schema = metadata_schema(self.bits)
        if columns is None:
            columns = [name for name in schema.names if name != "code"]
        unknown = sorted(set(columns) - set(schema.names))
        if unknown:
            raise ValueError(f"unknown columns {unknown}; the columns are {schema.names}")
        columns = list(columns)
        keys = list(self._manifest.shards)
        if row_ids is None:
            tables = [self._read_whole(key, columns) for key in keys]
            return pa.concat_tables(tables) if tables else _empty(schema, columns)

        ids = np.asarray(row_ids)
        if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
            raise ValueError(f"row_ids must be integers of shape (m,), got {ids.dtype} {ids.shape}")
        ids = ids.astype(np.int64)
        valid = ids >= 0
        live = np.zeros(len(ids), dtype=bool)
        if len(self._starts):
            part_of = np.searchsorted(self._starts, ids, side="right") - 1
            live = (part_of >= 0) & (ids < self._ends[np.maximum(part_of, 0)])
        bad = valid & ~live
        if np.any(bad) or np.any(ids < -1):
            wrong = ids[bad | (ids < -1)][0]
            raise ValueError(f"row id {wrong} is not in this index (-1 or a committed row)")
        relaxed = pa.schema([schema.field(c).with_nullable(True) for c in columns])
        # Sorted, the ids of one part and of one batch or row group are runs: each is read once.
        order = np.argsort(ids[valid], kind="stable")
        wanted = ids[valid][order]
        lows = np.searchsorted(wanted, self._starts)
        highs = np.searchsorted(wanted, self._ends)
        pieces: list[pa.Table] = []
        # rows of lookup files, for wanted[taken_from:]: given their row ids and cast at once
        taken: list[pa.Table] = []
        taken_from = 0
        for key, start, lo, hi in zip(keys, self._starts, lows, highs, strict=True):
            if hi == lo:
                continue
            lookup = self._lookup(key) if "code" not in columns else None
            if lookup is None:
                if taken:
                    pieces.append(_with_row_ids(taken, wanted[taken_from:lo], columns, relaxed))
                    taken = []
                pieces += self._take(key, wanted[lo:hi] - start, columns, relaxed)
                taken_from = hi
            else:
                taken.append(lookup.take(wanted[lo:hi] - start))
        if taken:
            pieces.append(_with_row_ids(taken, wanted[taken_from:], columns, relaxed))
        if pieces:
            gathered = pa.concat_tables(pieces).combine_chunks()
        else:  # only -1s, or no ids: something for the masked take below to index
            gathered = pa.Table.from_pylist([{}], schema=relaxed)
        # gathered[j] is the row of ids[valid][order[j]]; put every row back in place.
        position = np.zeros(len(ids), dtype=np.int64)
        position[np.flatnonzero(valid)[order]] = np.arange(len(wanted))
        return gathered.take(numeric_array(position, pa.int64(), ~valid))

    @property
    def has_vectors(self) -> bool:
        """Whether every committed shard has re-rank vectors (an index built before them, or
        with a model without them, has none: its queries rank by Hamming distance alone)."""
        shards = self._manifest.shards.values()
        return bool(shards) and all(e.vectors for e in shards)

    def vector_forms(self) -> list[str]:
        """How the shards store their re-rank vectors, e.g. ["128-d int8"] (["64-d float16"]
        for an index from before int8; both after appending to one), from the files' headers.
        Requires ``has_vectors``."""
        forms = set()
        for entry in self._manifest.shards.values():  # the headers only: nothing is verified
            mapped = open_vectors(self.path, entry.vectors, entry.rows)
            forms.add(f"{mapped.shape[1]}-d {mapped.dtype}")
        return sorted(forms)

    def vectors(self, row_ids: np.ndarray, as_stored: bool = False) -> np.ndarray:
        """The re-rank vectors of ``row_ids`` (int (m,), committed rows), unit rows (m, D)
        float32, in their order; from the shards' memory-mapped vectors files (a gather, no
        read of the files). as_stored: as the files hold them (``store.vectors``: int8, or
        float16 in an index from before int8), for ``cosine_scores``. Requires
        ``has_vectors``."""
        ids = np.asarray(row_ids, dtype=np.int64)
        if not self.has_vectors:
            raise IndexStoreError(f"{self.path}: this index keeps no re-rank vectors")
        keys = list(self._manifest.shards)
        part_of = np.searchsorted(self._starts, ids, side="right") - 1
        if len(ids) and (np.any(part_of < 0) or np.any(ids >= self._ends[np.maximum(part_of, 0)])):
            raise ValueError("row ids must be committed rows of this index")
        if not len(ids):
            return np.empty((0, 0), np.float32)
        stored = gather_vectors(part_of, ids - self._starts[part_of], len(keys),
                                lambda shard: self._vectors(keys[shard]))
        return stored if as_stored else decode_vectors(stored)

    def _vectors(self, key: str) -> ShardVectors:
        """A shard's vectors file, opened once."""
        found = self._vector_files.get(key)
        if found is None:
            entry = self._manifest.shards[key]
            found = ShardVectors(self.path, entry.vectors, entry.rows, entry.vectors_sha256,
                                 self._block_digests(key, "vectors"), entry.block_bytes)
            self._vector_files[key] = found
        return found

    def _block_digests(self, key: str, kind: str) -> bytes | str | None:
        """The block digests of a shard's "lookup" or "vectors" file: from its digests file
        (read and checked once), or, for an entry from before digests files, the manifest's
        hex; None for an entry from before block digests."""
        entry = self._manifest.shards[key]
        if not entry.digests:
            return getattr(entry, f"{kind}_blocks")
        found = self._digest_files.get(key)
        if found is None:
            found = read_digests(self.path, entry.digests, entry.digests_sha256)
            self._digest_files[key] = found
        return found[0] if kind == "lookup" else found[1]

    def errors(self) -> pa.Table:
        """The scenes that could not be indexed, of every committed shard (ERRORS_SCHEMA)."""
        tables = [
            read_parquet(self.path, e.errors, ERRORS_SCHEMA, e.error_count)
            for e in self._manifest.shards.values()
        ]
        return pa.concat_tables(tables) if tables else ERRORS_SCHEMA.empty_table()

    def row_ids(self) -> np.ndarray:
        """All row ids, int64 (row_count,), ascending (with gaps where shards were retired).

        Reads the parts' row_id column only."""
        out = np.empty(self.row_count, dtype=np.int64)
        start = 0
        for key in self._manifest.shards:
            footer = self._footer(key)
            column = self._read_whole(key, ["row_id"])["row_id"]
            check_row_ids(self.path, footer.rel, column, footer.first_row, footer.rows)
            out[start : start + footer.rows] = column.to_numpy()
            start += footer.rows
        return out

    def codes(self) -> np.ndarray:
        """All codes, uint8 (row_count, K/8), in row-id order (row i has ``row_ids()[i]``).

        Reads the parts' code column only, one part at a time into the result."""
        size = self.bits // 8
        out = np.empty((self.row_count, size), dtype=np.uint8)
        start = 0
        for key in self._manifest.shards:
            rows = self._footer(key).rows
            out[start : start + rows] = codes_from_arrow(self._read_whole(key, ["code"])["code"],
                                                         size)
            start += rows
        return out

    def _footer(self, key: str) -> PartFooter:
        """A shard's checked part footer, read once (a race reads it twice, harmlessly)."""
        footer = self._footers.get(key)
        if footer is None:
            entry = self._manifest.shards[key]
            verify_checksum(self.path, entry.part, entry.part_sha256)
            footer = read_footer(self.path, self._manifest, key)
            self._footers[key] = footer
        return footer

    def _read_whole(self, key: str, columns: list[str]) -> pa.Table:
        """Every row of a shard's part, ``columns`` only (not cached: callers read it once)."""
        footer = self._footer(key)
        if footer.groups == 0:
            return _empty(metadata_schema(self.bits), columns)
        return read_row_groups(footer, range(footer.groups), columns, self._mmap)

    def _lookup(self, key: str) -> LookupFile | None:
        """A shard's open lookup file, opened once; None for a shard committed before them."""
        lookup = self._lookups.get(key)
        if lookup is None:
            entry = self._manifest.shards[key]
            if not entry.lookup:
                return None
            digests = self._block_digests(key, "lookup")
            if not digests:  # committed before block checksums: the whole file
                verify_checksum(self.path, entry.lookup, entry.lookup_sha256)
            lookup = LookupFile(self.path, entry.lookup, entry.rows, digests,
                                entry.lookup_batches, entry.block_bytes)
            self._lookups[key] = lookup
        return lookup

    def _take(self, key: str, rows: np.ndarray, columns: list[str], relaxed: pa.Schema
              ) -> list[pa.Table]:
        """The part-relative ``rows`` (int64 (m,), ascending) of a shard from its Parquet part,
        as ``relaxed`` tables, one per row group read."""
        footer = self._footer(key)
        groups = footer.groups_of(rows)
        bounds = np.flatnonzero(np.diff(groups)) + 1
        pieces = []
        for run in np.split(np.arange(len(rows)), bounds):
            group = int(groups[run[0]])
            table = self._row_group(footer, group, columns)
            local = rows[run] - footer.group_starts[group]
            pieces.append(table.take(numeric_array(local)).cast(relaxed))
        return pieces

    def _row_group(self, footer: PartFooter, group: int, columns: list[str]) -> pa.Table:
        """One row group's ``columns``, from the cache or read (its low-cardinality strings as
        dictionaries: the taken rows are cast back to plain strings)."""
        key = (footer.rel, group, tuple(columns))
        table = self._cache.get(key)
        if table is None:
            compact = [c for c in columns if c in footer.compact_strings]
            table = read_row_groups(footer, [group], columns, self._mmap, compact)
            self._cache.put(key, table)
        return table


def _row_group_cache() -> BytesLru[pa.Table]:
    return BytesLru(ROW_GROUP_CACHE_BYTES, lambda table: table.nbytes)


def _with_row_ids(tables: list[pa.Table], ids: np.ndarray, columns: list[str],
                  relaxed: pa.Schema) -> pa.Table:
    """Rows taken from lookup files (METADATA_SCHEMA tables, in turn) with their row ids
    (int64 (m,), one a row), as one ``relaxed`` table of ``columns``."""
    table = pa.concat_tables(tables)
    row_ids = numeric_array(ids)
    return pa.table({c: row_ids if c == "row_id" else table[c] for c in columns}).cast(relaxed)


def _empty(schema: pa.Schema, columns: Sequence[str]) -> pa.Table:
    return pa.schema([schema.field(c) for c in columns]).empty_table()
