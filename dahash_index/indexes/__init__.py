"""FAISS binary index backends (flat, IVF, sharded) behind one small interface of plain functions
and one registry of kinds (``indexes.registry``).

Codes are packed K-bit codes, uint8 arrays of shape (n, K // 8); rows carry int64 ids; search
results are ordered by (Hamming distance, id).
"""

from __future__ import annotations

from dahash_index.indexes.binary import (
    CompositeIndex,
    add_codes,
    faiss_threads,
    is_mapped,
    load_index,
    new_index,
    nlist_of,
    write_index,
)
from dahash_index.indexes.ivf import default_nlist, default_nprobe, train_ivf
from dahash_index.indexes.registry import IndexKind, get_kind, list_kinds, register_kind
from dahash_index.indexes.search import hamming_radius, hamming_topk, scan_order_is_id_order
from dahash_index.indexes.sharded import RowRanges, ShardedIndex

__all__ = [
    "CompositeIndex",
    "IndexKind",
    "RowRanges",
    "ShardedIndex",
    "add_codes",
    "default_nlist",
    "default_nprobe",
    "faiss_threads",
    "get_kind",
    "hamming_radius",
    "hamming_topk",
    "is_mapped",
    "list_kinds",
    "load_index",
    "new_index",
    "nlist_of",
    "register_kind",
    "scan_order_is_id_order",
    "write_index",
    "train_ivf",
]
