"""A shard's re-rank vectors on disk (``model.rerank``): one ``.npy`` file of float16 (rows, D),
row i for the shard's i-th row, memory-mapped by readers so that the vectors of a query's
shortlist cost a gather, not a read of the file."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

from dahash_index.model.rerank import DTYPE
from dahash_index.store.layout import IndexStoreError, unreadable


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
