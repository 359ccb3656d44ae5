"""The Python query API: open an index once, query many scenes or codes in one call.

    from dahash_index.api import SceneIndex
    index = SceneIndex.open("runs/index")
    hits = index.query(["a.tif", "b.jpg"], top=50)        # pyarrow.Table, one row per hit
    hits.to_pandas()

Queries may be file paths or URLs (anything fsspec opens), encoded bytes, (H, W, 3) uint8
arrays, or already-computed packed codes ((n, K/8) uint8 via ``query_codes``). The result
is one table: query number and name, rank, Hamming distance, row id and the scene's
metadata. A query that cannot be decoded gets one row with its ``error`` and no hit, and the
other queries go on. Safe to share between threads.

A ``SceneIndex`` answers from the committed state it opened. ``refresh()`` moves it to the
newest committed state (adding only the new shards' codes); ``reload="auto"`` does that by
itself, looking at the manifest at most once a second, so a long-lived process sees a build's
shards as they commit. Each query uses one state from start to end.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import torch

import indexes
from dahash_index.backbones import image_to_tensor
from dahash_index.checkpoint import load_checkpoint
from dahash_index.checks import check_int
from dahash_index.encoder import SceneEncoder
from dahash_index.images import DEFAULT_MAX_PIXELS, SceneDecodeError, decode_scene
from dahash_index.remote import RemoteError, read_url
from dahash_index.store import MANIFEST, IndexReader

QueryInput = str | Path | bytes | np.ndarray


_log = logging.getLogger(__name__)

RELOADS = ("never", "auto")
RELOAD_INTERVAL_S = 1.0  # reload="auto" looks at the manifest at most this often


class SceneIndex:
    """A read-only, opened index plus the model that made its codes."""

    def __init__(self, reader: IndexReader, encoder_device: str | None = None,
                 nprobe: int | None = None, reload: str = "never",
                 storage_options: dict | None = None) -> None:
        if reload not in RELOADS:
            raise ValueError(f"reload must be one of {RELOADS}, got {reload!r}")
        if nprobe is not None:
            check_int("nprobe", nprobe, 1)
        self.bits = reader.bits
        self.nprobe = nprobe
        self.reload = reload
        self.storage_options = dict(storage_options or {})
        self._state = (reader, reader.faiss_index())
        self._device = encoder_device
        self._encoder: SceneEncoder | None = None
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._checked = time.monotonic()
        self._manifest_stat = _stat(reader.path / MANIFEST)

    @classmethod
    def open(cls, path: str | Path, model: str | Path | None = None, mmap: bool = False,
             nprobe: int | None = None, device: str | None = None, reload: str = "never",
             storage_options: dict | None = None) -> SceneIndex:
        """Open ``path``; with ``model``, refuse it unless it is the model the index was built
        with (``ModelMismatchError``). reload: "never" (answer from the state opened, or
        refreshed with ``refresh()``) or "auto" (see the module docstring).
        storage_options: fsspec options for reading query URLs (e.g. an S3 endpoint)."""
        reader = IndexReader.open(path, mmap=mmap)
        if model is not None:
            reader.check_model(model)
        return cls(reader, device, nprobe, reload, storage_options)

    @property
    def reader(self) -> IndexReader:
        """The reader of the committed state queries are answered from now."""
        return self._state[0]

    @property
    def row_count(self) -> int:
        return self._state[0].row_count

    def refresh(self) -> bool:
        """Move to the newest committed state; True if there was a newer one. Queries running
        meanwhile finish on the state they started with. Raises IndexStoreError (and keeps
        the current state) when the newest state cannot be read."""
        with self._refresh_lock:
            stat = _stat(self.reader.path / MANIFEST)
            reader = self.reader.reopen()
            changed = reader is not self.reader
            if changed:
                self._state = (reader, reader.faiss_index())
            self._manifest_stat = stat  # only once that state is in use
            return changed

    def _current(self) -> tuple[IndexReader, faiss.IndexBinary]:
        """The state a query uses; with reload="auto", refreshed first when the manifest was
        replaced (a stat at most once a second; one thread refreshes, the others go on).
        A refresh that fails is logged, the query is answered from the current state, and the
        next check tries again."""
        if self.reload == "auto" and time.monotonic() - self._checked >= RELOAD_INTERVAL_S:
            self._checked = time.monotonic()
            if _stat(self.reader.path / MANIFEST) != self._manifest_stat:
                if self._refresh_lock.acquire(blocking=False):
                    self._refresh_lock.release()
                    try:
                        self.refresh()
                    except (ValueError, OSError) as err:
                        _log.warning("cannot reload %s, answering from generation %d: %s",
                                     self.reader.path, self.reader.generation, err)
        return self._state

    @property
    def encoder(self) -> SceneEncoder:
        """The backbone + hash network, loaded on first use (code queries never need it)."""
        with self._lock:
            if self._encoder is None:
                self._encoder = SceneEncoder(load_checkpoint(self.reader.model_path),
                                             self._device)
            return self._encoder

    def encode(self, queries: Sequence[QueryInput], bands=None, batch_size: int = 32,
               max_pixels: int = DEFAULT_MAX_PIXELS
               ) -> tuple[np.ndarray, list[str], list[str | None]]:
        """-> (codes (n, K/8) uint8 for the decodable queries, names of all n queries,
        per-query error or None). Codes rows follow the queries whose error is None.
        Queries are decoded and encoded ``batch_size`` at a time, so memory stays bounded.
        An image of more than ``max_pixels`` pixels is refused from its header."""
        names: list[str] = []
        errors: list[str | None] = []
        codes = [np.zeros((0, self.bits // 8), np.uint8)]
        for start in range(0, len(queries), batch_size):
            inputs = []
            for i, query in enumerate(queries[start:start + batch_size], start):
                name, error, x = _load_query(query, i, bands, self.storage_options,
                                             max_pixels)
                names.append(name)
                errors.append(error)
                if x is not None:
                    inputs.append(x)
            if inputs:
                codes.append(self.encoder.encode(torch.stack(inputs), batch_size))
        return np.concatenate(codes), names, errors

    def query(self, queries: Sequence[QueryInput], top: int | None = None,
              radius: int | None = None, nprobe: int | None = None, bands=None,
              names: Sequence[str] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
              ) -> pa.Table:
        """Rank the index for each query: the ``top`` nearest (default 50), or every row within
        Hamming distance ``radius`` (not both). Arguments are checked before any query is read.
        names: what to call the queries in the result and its errors (default: the path or
        URL, "bytes i", "array i"). max_pixels: see ``encode``.
        """
        top = _check_search(top, radius, nprobe)
        if names is not None and len(names) != len(queries):
            raise ValueError(f"{len(names)} names for {len(queries)} queries")
        codes, found, errors = self.encode(queries, bands, max_pixels=max_pixels)
        if names is not None:
            errors = [None if e is None else renamed_error(e, old, new)
                      for e, old, new in zip(errors, found, names, strict=True)]
            found = list(names)
        return self._search(codes, found, errors, top, radius, nprobe)

    def query_codes(self, codes: np.ndarray, top: int | None = None, radius: int | None = None,
                    nprobe: int | None = None, names: Sequence[str] | None = None) -> pa.Table:
        """Like ``query`` for packed codes (n, K/8) uint8 computed elsewhere."""
        top = _check_search(top, radius, nprobe)
        codes = np.asarray(codes)
        names = list(names) if names is not None else [f"code {i}" for i in range(len(codes))]
        return self._search(codes, names, [None] * len(codes), top, radius, nprobe)

    def _search(self, codes: np.ndarray, names: list[str], errors: list[str | None],
                top: int, radius: int | None, nprobe: int | None) -> pa.Table:
        reader, index = self._current()
        nprobe = nprobe if nprobe is not None else self.nprobe
        if indexes.nlist_of(index) is None:  # flat, or an IVF searched exactly until trained
            nprobe = None
        if radius is not None:
            found = indexes.hamming_radius(index, codes, radius, nprobe)
            hit_counts = np.array([len(i) for _, i in found], dtype=np.int64)
            hit_d = np.concatenate([d for d, _ in found]) if found else np.empty(0, np.int32)
            hit_ids = np.concatenate([i for _, i in found]) if found else np.empty(0, np.int64)
        else:
            d, ids = indexes.hamming_topk(index, codes, top, nprobe)
            valid = ids >= 0  # row-major boolean indexing keeps each query's rank order
            hit_counts, hit_d, hit_ids = valid.sum(axis=1), d[valid], ids[valid]
        # One row per hit, and one row carrying the error for each query that failed.
        is_error = np.array([e is not None for e in errors], dtype=bool)
        rows_per_query = np.ones(len(errors), dtype=np.int64)
        rows_per_query[~is_error] = hit_counts
        query_no = np.repeat(np.arange(len(errors)), rows_per_query)
        first_row = np.cumsum(rows_per_query) - rows_per_query
        rank = np.arange(len(query_no)) - np.repeat(first_row, rows_per_query) + 1
        is_hit = ~is_error[query_no]
        distance = np.zeros(len(query_no), dtype=np.int32)
        distance[is_hit] = hit_d
        ids = np.full(len(query_no), -1, dtype=np.int64)
        ids[is_hit] = hit_ids
        query_col = pa.array(query_no, pa.int32())
        meta = reader.metadata(ids)
        table = pa.table({
            "query": query_col,
            "query_name": pa.array(names, pa.string()).take(query_col),
            "rank": pa.array(rank, pa.int32(), mask=~is_hit),
            "distance": pa.array(distance, pa.int32(), mask=~is_hit),
            "row_id": pa.array(np.where(ids >= 0, ids, 0), pa.int64(), mask=ids < 0),
        })
        for column in meta.column_names:
            if column != "row_id":
                table = table.append_column(column, meta.column(column))
        return table.append_column("error", pa.array(errors, pa.string()).take(query_col))


def _check_search(top: int | None, radius: int | None, nprobe: int | None) -> int:
    """The number of hits to fetch (top's default 50); ValueError for bad arguments."""
    if top is not None and radius is not None:
        raise ValueError("give top (the nearest hits) or radius (every hit within it), not both")
    if radius is not None:
        check_int("radius", radius, 0)
    if nprobe is not None:
        check_int("nprobe", nprobe, 1)
    return check_int("top", 50 if top is None else top, 1)


def _stat(path: Path) -> tuple | None:
    # The manifest is replaced by a rename at every commit: a new inode and mtime.
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def renamed_error(error: str, old: str, new: str) -> str:
    """A query's error message naming it ``new`` (the message may start with ``old``)."""
    return f"{new}{error[len(old):]}" if error.startswith(old) else f"{new}: {error}"


def _load_query(query: QueryInput, i: int, bands, storage_options: dict | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS
                ) -> tuple[str, str | None, torch.Tensor | None]:
    """One query -> (name, error or None, network input (3, 299, 299) float or None)."""
    if isinstance(query, np.ndarray):
        name = f"array {i}"
        if query.ndim != 3 or query.shape[2] != 3 or query.dtype != np.uint8:
            return name, f"expected an (H, W, 3) uint8 array, got {query.shape} {query.dtype}", None
        return name, None, image_to_tensor(query)
    if isinstance(query, bytes):
        name, data = f"bytes {i}", query
        suffix_hint = "scene.tif" if data[:4] in (b"II*\x00", b"MM\x00*") else "scene.jpg"
    else:
        name = str(query)
        suffix_hint = name
        try:
            data = read_url(name, storage_options)
        except RemoteError as err:
            return name, str(err), None
    try:
        image, _ = decode_scene(data, suffix_hint, bands, max_pixels)
    except SceneDecodeError as err:
        return name, str(err), None
    return name, None, image_to_tensor(image)
