"""FAISS binary index backends (flat, IVF) behind one small interface of plain functions.

Codes are packed K-bit codes, uint8 arrays of shape (n, K // 8); rows carry int64 ids; search
results are ordered by (Hamming distance, id).
"""

from __future__ import annotations

from indexes.binary import (
    add_codes,
    faiss_threads,
    hamming_radius,
    hamming_topk,
    is_mapped,
    load_index,
    new_index,
    save_index,
    scan_order_is_id_order,
)
from indexes.ivf import default_nlist, train_ivf

__all__ = [
    "add_codes",
    "default_nlist",
    "faiss_threads",
    "hamming_radius",
    "hamming_topk",
    "is_mapped",
    "load_index",
    "new_index",
    "save_index",
    "scan_order_is_id_order",
    "train_ivf",
]
