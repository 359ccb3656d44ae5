"""A shard's re-rank vectors on disk (``model.rerank``): one ``.npy`` file of float16 (rows, D),
row i for the shard's i-th row, memory-mapped by readers so that the vectors of a query's
shortlist cost a gather, not a read of the file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from dahash_index.model.rerank import DTYPE
from dahash_index.store.blocks import BlockChecks
from dahash_index.store.layout import IndexStoreError, unreadable, verify_checksum


def check_vectors(vectors: np.ndarray, rows: int, what: str) -> np.ndarray:
    """``vectors`` as C-contiguous float16 (rows, D), or ValueError naming ``what``."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) != rows or vectors.dtype.kind != "f":
        raise ValueError(f"{what}: re-rank vectors must be floats of shape ({rows}, D), got "
                         f"{vectors.dtype} {vectors.shape}")
    return np.ascontiguousarray(vectors, dtype=DTYPE)


def write_vectors(vectors: np.ndarray, f: BinaryIO) -> None:
    np.save(f, vectors, allow_pickle=False)


def open_vectors(directory: Path, rel: str, rows: int) -> np.ndarray:
    """The vectors file ``rel`` of an index, memory-mapped: float16 (rows, D); IndexStoreError
    when it is missing, unreadable or not ``rows`` rows."""
    try:
        vectors = np.load(directory / rel, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise unreadable(directory, rel, err) from None
    if vectors.ndim != 2 or len(vectors) != rows or vectors.dtype != DTYPE:
        raise IndexStoreError(f"{directory}: {rel} holds {vectors.dtype} {vectors.shape}, "
                              f"expected float16 ({rows}, D)")
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
        """Rows ``rows`` (int64 (n,)) of the shard into ``out`` (n, D) float16."""
        if self.checks is not None:  # the rows' bytes, verified before they are used
            row_bytes = self.mapped.shape[1] * self.mapped.itemsize
            first = self.mapped.offset + rows * row_bytes
            self.checks.verify_bytes(first, first + row_bytes - 1)
        np.take(self.mapped.view(np.ndarray), rows, axis=0, out=out)  # not a memmap: faster


def gather_vectors(shard_of: np.ndarray, rows: np.ndarray, shards: int,
                   shard: Callable[[int], ShardVectors], dtype: np.dtype) -> np.ndarray:
    """The vectors of row ``rows[i]`` of shard ``shard_of[i]`` (int64 (m,) each, m > 0), as
    (m, D) of ``dtype``: gathered shard by shard as float16, then put in order (and
    converted) in one pass. ``shard``: a shard's number (of ``shards``) -> its vectors."""
    by_shard = np.argsort(shard_of, kind="stable")
    counts = np.bincount(shard_of, minlength=shards)
    ends = np.cumsum(counts)
    gathered = None
    for s in np.flatnonzero(counts).tolist():
        vectors = shard(s)
        if gathered is None:
            gathered = np.empty((len(rows), vectors.mapped.shape[1]), vectors.mapped.dtype)
        lo, hi = ends[s] - counts[s], ends[s]
        vectors.take(rows[by_shard[lo:hi]], gathered[lo:hi])
    out = np.empty(gathered.shape, dtype)
    out[by_shard] = gathered
    return out
