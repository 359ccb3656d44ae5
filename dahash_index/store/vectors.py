"""A shard's re-rank vectors on disk (``model.rerank``): one ``.npy`` file of int8 (rows, D),
row i for the shard's i-th row, memory-mapped by readers so that the vectors of a query's
shortlist cost a gather, not a read of the file.

A unit vector is stored as int8, scaled so that its largest component is +-127: one byte a
dimension, so 128 dimensions fit in 128 bytes a row. Readers scale each row back to unit
length (``decode_vectors``); the score it gives differs from the float vector's by about
0.002. Indexes from before int8 hold float16 (rows, D) and are read as they are."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from dahash_index.store.blocks import BlockChecks
from dahash_index.store.layout import IndexStoreError, unreadable, verify_checksum

STORED = np.dtype(np.int8)
LEGACY = np.dtype(np.float16)  # what indexes from before int8 hold


def quantize_vectors(vectors: np.ndarray) -> np.ndarray:
    """Float vectors (n, D) -> int8 (n, D): each row scaled so that its largest component is
    +-127, then rounded (a zero row stays zero)."""
    v = np.asarray(vectors, np.float32)
    peak = np.abs(v).max(axis=1, keepdims=True) if v.size else np.ones((len(v), 1), np.float32)
    return np.rint(v * (127.0 / np.maximum(peak, 1e-30))).astype(STORED)


def _floats_and_norms(stored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stored vectors (n, D) -> (a float32 copy (n, D), each row's length (n,))."""
    x = np.asarray(stored).astype(np.float32)
    return x, np.sqrt(np.einsum("ij,ij->i", x, x))


def decode_vectors(stored: np.ndarray) -> np.ndarray:
    """Stored vectors (n, D), int8 or float16 -> unit rows (n, D) float32 (a zero row stays
    zero). Scaled in place: a query's shortlist is decoded thousands of rows at a time."""
    x, norms = _floats_and_norms(stored)
    x /= np.maximum(norms, 1e-30)[:, None]
    return x


def check_vectors(vectors: np.ndarray, rows: int, what: str) -> np.ndarray:
    """``vectors`` (rows, D) as stored: floats quantized (``quantize_vectors``), int8 (already
    quantized, as a staged result holds them) as they are; C-contiguous. ValueError naming
    ``what`` for any other dtype or shape."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) != rows or (vectors.dtype.kind != "f"
                                                     and vectors.dtype != STORED):
        raise ValueError(f"{what}: re-rank vectors must be floats of shape ({rows}, D), got "
                         f"{vectors.dtype} {vectors.shape}")
    if vectors.dtype == STORED:
        return np.ascontiguousarray(vectors)
    return quantize_vectors(vectors)


def write_vectors(vectors: np.ndarray, f: BinaryIO) -> None:
    np.save(f, vectors, allow_pickle=False)


def open_vectors(directory: Path, rel: str, rows: int) -> np.ndarray:
    """The vectors file ``rel`` of an index, memory-mapped: int8 (rows, D), or float16 in an
    index from before int8; IndexStoreError when it is missing, unreadable or not ``rows``
    rows."""
    try:
        vectors = np.load(directory / rel, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise unreadable(directory, rel, err) from None
    if vectors.ndim != 2 or len(vectors) != rows or vectors.dtype not in (STORED, LEGACY):
        raise IndexStoreError(f"{directory}: {rel} holds {vectors.dtype} {vectors.shape}, "
                              f"expected int8 ({rows}, D)")
    return vectors


class ShardVectors:
    """A shard's vectors file, memory-mapped, its rows verified against their blocks'
    ``digests`` (``store.blocks``) as they are read; without digests (an entry from before
    block checksums) the whole file is verified against ``sha256`` now."""

    def __init__(self, directory: Path, rel: str, rows: int, sha256: str | None,
                 digests: bytes | str | None, block_bytes: int | None) -> None:
        self.checks = None
        if digests:
            self.checks = BlockChecks(directory, rel, digests, block_bytes)
            self.checks.verify(np.array([0]))  # the .npy header: shape and dtype
        else:
            verify_checksum(directory, rel, sha256)
        self.mapped = open_vectors(directory, rel, rows)

    def take(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Rows ``rows`` (int64 (n,)) of the shard into ``out`` (n, D) of the file's dtype."""
        if self.checks is not None:  # the rows' bytes, verified before they are used
            row_bytes = self.mapped.shape[1] * self.mapped.itemsize
            first = self.mapped.offset + rows * row_bytes
            self.checks.verify_bytes(first, first + row_bytes - 1)
        np.take(self.mapped.view(np.ndarray), rows, axis=0, out=out)  # not a memmap: faster


def gather_vectors(shard_of: np.ndarray, rows: np.ndarray, shards: int,
                   shard: Callable[[int], ShardVectors]) -> np.ndarray:
    """The vectors of row ``rows[i]`` of shard ``shard_of[i]`` (int64 (m,) each, m > 0), in
    order, as stored (m, D): int8, or float16 from an index before int8; unit float32 rows
    when shards of both kinds are asked for. Gathered shard by shard, then put in order in
    one pass over the stored bytes (decoding is left to the caller: ``decode_vectors``,
    ``cosine_scores``). ``shard``: a shard's number (of ``shards``) -> its vectors."""
    by_shard = np.argsort(shard_of, kind="stable")
    counts = np.bincount(shard_of, minlength=shards)
    ends = np.cumsum(counts)
    present = {s: shard(s) for s in np.flatnonzero(counts).tolist()}
    dtypes = {v.mapped.dtype for v in present.values()}
    dim = next(iter(present.values())).mapped.shape[1]
    # one dtype (the usual case): gathered as stored into one array; float16 shards beside
    # int8 ones: each decoded to unit floats
    gathered = np.empty((len(rows), dim), dtypes.pop() if len(dtypes) == 1 else np.float32)
    for s, vectors in present.items():
        lo, hi = ends[s] - counts[s], ends[s]
        if vectors.mapped.dtype == gathered.dtype:
            vectors.take(rows[by_shard[lo:hi]], gathered[lo:hi])
        else:
            part = np.empty((hi - lo, dim), vectors.mapped.dtype)
            vectors.take(rows[by_shard[lo:hi]], part)
            gathered[lo:hi] = decode_vectors(part)
    out = np.empty_like(gathered)
    out[by_shard] = gathered
    return out


def cosine_scores(stored: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The cosine of each stored vector (n, D: int8, float16 or float32, as
    ``gather_vectors`` gives them) with a unit query vector (D,) -> float32 (n,). Decoded
    here, a query's shortlist at a time, so that the floats stay in the CPU's cache."""
    x, norms = _floats_and_norms(stored)
    return (x @ np.asarray(query, np.float32)) / np.maximum(norms, 1e-30)
