"""Reading the last committed state of an index directory."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from dahash_index.store.faiss_file import faiss_index
from dahash_index.store.layout import (
    ERRORS_SCHEMA,
    MODEL,
    ModelMismatchError,
    check_files,
    metadata_schema,
    mismatch,
    model_sha256,
    read_manifest,
)
from dahash_index.store.parts import codes_from_arrow, read_parquet, read_part


class IndexReader:
    """The last committed state of an index directory, as of ``open`` (or ``reopen``).

    Parts are read at first use and kept in memory; a running writer does not disturb them
    (it never rewrites a part, and deletes only parts that no manifest names any more).
    """

    def __init__(
        self,
        path: Path,
        manifest: dict,
        mmap: bool = False,
        parts: dict[str, pa.Table] | None = None,
        base: tuple[dict, faiss.IndexBinary] | None = None,
    ) -> None:
        self.path = path
        self._manifest = manifest
        self._mmap = mmap
        self._parts: dict[str, pa.Table] = dict(parts or {})
        entries = list(manifest["shards"].values())
        self._starts = np.array([e["first_row"] for e in entries], dtype=np.int64)
        self._ends = self._starts + np.array([e["rows"] for e in entries], dtype=np.int64)
        self._index: faiss.IndexBinary | None = None
        self._base = base

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
        else a new reader that reuses what this one has read (the parts of shards still
        committed unchanged, and the FAISS index, to which only the new shards' codes are
        added)."""
        manifest = read_manifest(self.path)
        if manifest["generation"] == self._manifest["generation"]:
            return self
        check_files(self.path, manifest)
        parts = {
            key: table
            for key, table in self._parts.items()
            if manifest["shards"].get(key) == self._manifest["shards"][key]
        }
        base = None
        if self._index is not None and not self._mmap:
            base = (self._manifest, self._index)
        return IndexReader(self.path, manifest, self._mmap, parts, base)

    @property
    def manifest(self) -> dict:
        """A copy of the manifest this reader reads."""
        return copy.deepcopy(self._manifest)

    @property
    def generation(self) -> int:
        """The commit this reader sees; every commit increases it."""
        return self._manifest["generation"]

    @property
    def bits(self) -> int:
        return self._manifest["bits"]

    @property
    def kind(self) -> str:
        return self._manifest["kind"]

    @property
    def row_count(self) -> int:
        return self._manifest["row_count"]

    @property
    def model_path(self) -> Path:
        return self.path / MODEL

    @property
    def model_sha256(self) -> str:
        return self._manifest["model_sha256"]

    def check_model(self, checkpoint_path: str | os.PathLike) -> None:
        """Raise ModelMismatchError unless the checkpoint is the index's model (by SHA-256)."""
        sha = model_sha256(checkpoint_path)
        if sha != self.model_sha256:
            raise ModelMismatchError(mismatch(self.path, self._manifest, checkpoint_path, sha))

    def faiss_index(self) -> faiss.IndexBinary:
        """The FAISS binary index of every row, ids = row ids; built once, then cached.

        See ``store.faiss_file.faiss_index``: the finalized file, completed from the parts
        (loaded without mmap then, as a mapped index is read-only), or built from the parts.
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
        """
        parts = self._load_parts()
        schema = metadata_schema(self.bits)
        if columns is None:
            columns = [name for name in schema.names if name != "code"]
        unknown = sorted(set(columns) - set(schema.names))
        if unknown:
            raise ValueError(f"unknown columns {unknown}; the columns are {schema.names}")
        columns = list(columns)
        if row_ids is None:
            return pa.concat_tables(parts).select(columns) if parts else _empty(schema, columns)

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
        # Take from each part separately: a take on the concatenated (chunked) table would
        # concatenate every chunk first, costing time in the size of the whole index.
        order = np.argsort(ids[valid], kind="stable")
        wanted = ids[valid][order]
        lows = np.searchsorted(wanted, self._starts)
        highs = np.searchsorted(wanted, self._ends)
        pieces = [
            part.select(columns).take(wanted[lo:hi] - start)
            for part, start, lo, hi in zip(parts, self._starts, lows, highs, strict=True)
            if hi > lo
        ]
        relaxed = pa.schema([schema.field(c).with_nullable(True) for c in columns])
        if pieces:
            gathered = pa.concat_tables(pieces).combine_chunks().cast(relaxed)
        else:  # only -1s, or no ids: something for the masked take below to index
            gathered = pa.Table.from_pylist([{}], schema=relaxed)
        # gathered[j] is the row of ids[valid][order[j]]; put every row back in place.
        position = np.zeros(len(ids), dtype=np.int64)
        position[np.flatnonzero(valid)[order]] = np.arange(len(wanted))
        return gathered.take(pa.array(position, mask=~valid))

    def errors(self) -> pa.Table:
        """The scenes that could not be indexed, of every committed shard (ERRORS_SCHEMA)."""
        tables = [
            read_parquet(self.path, e["errors"], ERRORS_SCHEMA, e["error_count"])
            for e in self._manifest["shards"].values()
        ]
        return pa.concat_tables(tables) if tables else ERRORS_SCHEMA.empty_table()

    def row_ids(self) -> np.ndarray:
        """All row ids, int64 (row_count,), ascending (with gaps where shards were retired)."""
        parts = self._load_parts()
        if not parts:
            return np.empty(0, dtype=np.int64)
        return pa.concat_tables(parts)["row_id"].to_numpy()

    def codes(self) -> np.ndarray:
        """All codes, uint8 (row_count, K/8), in row-id order (row i has ``row_ids()[i]``)."""
        parts = self._load_parts()
        size = self.bits // 8
        if not parts:
            return np.empty((0, size), dtype=np.uint8)
        return codes_from_arrow(pa.concat_tables(parts)["code"], size)

    def _load_parts(self) -> list[pa.Table]:
        for key in self._manifest["shards"]:
            if key not in self._parts:
                self._parts[key] = read_part(self.path, self._manifest, key, mmap=self._mmap)
        return [self._parts[key] for key in self._manifest["shards"]]


def _empty(schema: pa.Schema, columns: Sequence[str]) -> pa.Table:
    return pa.schema([schema.field(c) for c in columns]).empty_table()
