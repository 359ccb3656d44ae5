"""The Python query API: open an index once, query many scenes or codes in one call.

    from dahash_index import SceneIndex
    index = SceneIndex.open("runs/index")
    hits = index.query(["a.tif", "b.jpg"], top=50)        # pyarrow.Table, one row per hit
    hits.to_pandas()

Queries may be file paths or URLs (anything fsspec opens), encoded bytes, (H, W, 3) uint8
arrays, or already-computed packed codes ((n, K/8) uint8 via ``query_codes``). The result
is one table: query number and name, rank, Hamming distance, row id and the scene's
metadata. A query that cannot be decoded gets one row with its ``error`` and no hit, and the
other queries go on. Safe to share between threads.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import torch

import indexes
from dahash_index.backbones import image_to_tensor
from dahash_index.checkpoint import load_checkpoint
from dahash_index.encoder import SceneEncoder
from dahash_index.images import SceneDecodeError, decode_scene
from dahash_index.store import IndexReader

QueryInput = str | Path | bytes | np.ndarray


class SceneIndex:
    """A read-only, opened index plus the model that made its codes."""

    def __init__(self, reader: IndexReader, encoder_device: str | None = None,
                 nprobe: int | None = None) -> None:
        self.reader = reader
        self.bits = reader.bits
        self.nprobe = nprobe
        self._faiss = reader.faiss_index()
        self._device = encoder_device
        self._encoder: SceneEncoder | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path, model: str | Path | None = None, mmap: bool = False,
             nprobe: int | None = None, device: str | None = None) -> SceneIndex:
        """Open ``path``; with ``model``, refuse it unless it is the model the index was built
        with (``ModelMismatchError``)."""
        reader = IndexReader.open(path, mmap=mmap)
        if model is not None:
            reader.check_model(model)
        return cls(reader, device, nprobe)

    @property
    def encoder(self) -> SceneEncoder:
        """The backbone + hash network, loaded on first use (code queries never need it)."""
        with self._lock:
            if self._encoder is None:
                self._encoder = SceneEncoder(load_checkpoint(self.reader.model_path),
                                             self._device)
            return self._encoder

    def encode(self, queries: Sequence[QueryInput], bands=None, batch_size: int = 32
               ) -> tuple[np.ndarray, list[str], list[str | None]]:
        """-> (codes (n, K/8) uint8 for the decodable queries, names of all n queries,
        per-query error or None). Codes rows follow the queries whose error is None.
        Queries are decoded and encoded ``batch_size`` at a time, so memory stays bounded."""
        names: list[str] = []
        errors: list[str | None] = []
        codes = [np.zeros((0, self.bits // 8), np.uint8)]
        for start in range(0, len(queries), batch_size):
            inputs = []
            for i, query in enumerate(queries[start:start + batch_size], start):
                name, error, x = _load_query(query, i, bands)
                names.append(name)
                errors.append(error)
                if x is not None:
                    inputs.append(x)
            if inputs:
                codes.append(self.encoder.encode(torch.stack(inputs), batch_size))
        return np.concatenate(codes), names, errors

    def query(self, queries: Sequence[QueryInput], top: int = 50, radius: int | None = None,
              nprobe: int | None = None, bands=None) -> pa.Table:
        """Rank the index for each query (top ``top``, or all within Hamming ``radius``)."""
        codes, names, errors = self.encode(queries, bands)
        return self._search(codes, names, errors, top, radius, nprobe)

    def query_codes(self, codes: np.ndarray, top: int = 50, radius: int | None = None,
                    nprobe: int | None = None, names: Sequence[str] | None = None) -> pa.Table:
        """Like ``query`` for packed codes (n, K/8) uint8 computed elsewhere."""
        codes = np.asarray(codes)
        names = list(names) if names is not None else [f"code {i}" for i in range(len(codes))]
        return self._search(codes, names, [None] * len(codes), top, radius, nprobe)

    def _search(self, codes: np.ndarray, names: list[str], errors: list[str | None],
                top: int, radius: int | None, nprobe: int | None) -> pa.Table:
        nprobe = nprobe if nprobe is not None else self.nprobe
        if self.reader.kind == "flat":
            nprobe = None
        if radius is not None:
            found = indexes.hamming_radius(self._faiss, codes, radius, nprobe)
            hit_counts = np.array([len(i) for _, i in found], dtype=np.int64)
            hit_d = np.concatenate([d for d, _ in found]) if found else np.empty(0, np.int32)
            hit_ids = np.concatenate([i for _, i in found]) if found else np.empty(0, np.int64)
        else:
            d, ids = indexes.hamming_topk(self._faiss, codes, top, nprobe)
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
        meta = self.reader.metadata(ids)
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


def _load_query(query: QueryInput, i: int, bands) -> tuple[str, str | None, torch.Tensor | None]:
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
            with fsspec.open(name, "rb") as f:
                data = f.read()
        except (OSError, ValueError) as err:
            return name, f"cannot read: {err}", None
    try:
        image, _ = decode_scene(data, suffix_hint, bands)
    except SceneDecodeError as err:
        return name, str(err), None
    return name, None, image_to_tensor(image)
