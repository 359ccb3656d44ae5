"""Several FAISS binary indexes searched as one, with the results of one flat index over all rows.

A ``ShardedIndex`` holds parts; each part is a FAISS binary index and, when its ids are not
stored in it, a ``RowRanges`` that turns its positions into ids:

* a plain ``IndexBinaryFlat`` plus ``RowRanges``: the rows are contiguous id ranges laid out in
  ascending id order, so no id is stored (an ``IndexBinaryIDMap`` would keep 8 bytes per row,
  800 MB per 100 M rows), and FAISS's scan in position order already orders ties by id;
* an ``IndexBinaryIDMap`` or ``IndexBinaryIVF``, whose ids are stored in it.

``hamming_topk`` takes the first k by (distance, id) of every part and merges them: the k
smallest of the union are among them, so the result is exactly that of one flat index holding
every row (IVF parts: of the rows in their probed lists), ties included. ``hamming_radius``
concatenates every part's hits and sorts them. Parts are searched in parallel threads (FAISS
releases the GIL) when there are fewer queries than threads, as FAISS parallelises a search
over its queries only.

Ids must be unique across parts (not checked: the parts of an index store hold disjoint row
ranges by construction).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import faiss
import numpy as np

from dahash_index.errors import check_bits
from dahash_index.indexes.binary import CompositeIndex, as_ivf, is_mapped
from dahash_index.indexes.registry import register_kind
from dahash_index.indexes.search import _sort_candidates, hamming_radius, hamming_topk


class RowRanges:
    """Position -> id for rows stored as contiguous id ranges in ascending id order.

    first_ids: int64 (r,), the id of each range's first row, strictly ascending; counts: int64
    (r,), rows per range (positive), ranges not overlapping. Position p lies in range
    j = searchsorted(starts, p, 'right') - 1 and has id first_ids[j] + p - starts[j]: memory is
    O(r), not O(rows).
    """

    def __init__(self, first_ids: np.ndarray, counts: np.ndarray) -> None:
        first_ids = np.asarray(first_ids, dtype=np.int64).reshape(-1)
        counts = np.asarray(counts, dtype=np.int64).reshape(-1)
        if first_ids.shape != counts.shape:
            raise ValueError("first_ids and counts must have the same length")
        if len(counts) and (counts.min() < 1 or first_ids.min() < 0):
            raise ValueError("row ranges need non-negative first ids and positive counts")
        if np.any(first_ids[1:] < first_ids[:-1] + counts[:-1]):
            raise ValueError("row ranges must ascend without overlapping")
        self.first_ids = first_ids
        self.counts = counts
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)

    @classmethod
    def of(cls, ranges: Sequence[Sequence[int]]) -> RowRanges:
        """From ``[[first_id, count], ...]`` (as a manifest stores them)."""
        pairs = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
        return cls(pairs[:, 0], pairs[:, 1])

    def __len__(self) -> int:
        return int(self.counts.sum())

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, RowRanges) and np.array_equal(self.first_ids, other.first_ids)
                and np.array_equal(self.counts, other.counts))

    def __hash__(self) -> int:
        return hash((self.first_ids.tobytes(), self.counts.tobytes()))

    def ids(self, positions: np.ndarray) -> np.ndarray:
        """int64 ids of ``positions`` (integer, any shape); -1 (no result) stays -1."""
        positions = np.asarray(positions, dtype=np.int64)
        j = np.searchsorted(self.starts, positions, side="right") - 1
        j = np.maximum(j, 0)
        ids = self.first_ids[j] + positions - self.starts[j] if len(self.starts) else positions
        return np.where(positions < 0, -1, ids)


@dataclass(frozen=True)
class Part:
    """One part of a ``ShardedIndex``: a FAISS index, for a plain flat one its RowRanges, and a
    label naming it for the caller (e.g. the file it came from, to reuse it in a later index)."""

    index: faiss.IndexBinary
    rows: RowRanges | None = None
    label: Hashable = None


def check_part(
    bits: int, index: faiss.IndexBinary, rows: RowRanges | None, label: Hashable = None
) -> Part:
    """A Part of ``index`` after checking that ``rows`` is given exactly when the index stores
    no ids (a plain ``IndexBinaryFlat``) and covers its rows, and that K matches."""
    # Type checks on a downcast view; the Part keeps the caller's object, which may be the one
    # that owns the C++ index (a downcast proxy does not keep it alive).
    view = faiss.downcast_IndexBinary(index)
    if view.d != bits:
        raise ValueError(f"a {view.d}-bit index cannot be a part of a {bits}-bit index")
    if isinstance(view, faiss.IndexBinaryFlat):
        if rows is None:
            raise ValueError("a plain IndexBinaryFlat part needs RowRanges (it stores no ids)")
        if len(rows) != index.ntotal:
            raise ValueError(f"RowRanges cover {len(rows)} rows, the index holds {index.ntotal}")
        # The id order of ties relies on FAISS's heap scan (see scan_order_is_id_order).
        if not view.use_heap:
            raise ValueError("a flat part must search with use_heap=True")
    elif isinstance(view, (faiss.IndexBinaryIDMap, faiss.IndexBinaryIDMap2,
                           faiss.IndexBinaryIVF)):
        if rows is not None:
            raise ValueError(f"{type(view).__name__} stores its ids: give no RowRanges")
    else:
        raise ValueError(f"cannot search a {type(view).__name__} as a part")
    return Part(index, rows, label)


class ShardedIndex(CompositeIndex):
    """Parts searched as one index of K-bit codes; see the module docstring."""

    def __init__(self, bits: int, parts: Sequence[Part] = ()) -> None:
        self.d = check_bits(bits)
        self.code_size = self.d // 8
        self.parts: list[Part] = []
        for part in parts:
            self.add_part(part.index, part.rows, part.label)

    @property
    def ntotal(self) -> int:
        return sum(p.index.ntotal for p in self.parts)

    @property
    def is_trained(self) -> bool:
        return True

    @property
    def nlist(self) -> int | None:
        """The nlist of the IVF parts (all share one), None when no part is an IVF."""
        nlists = {as_ivf(p.index).nlist for p in self.parts if as_ivf(p.index) is not None}
        return nlists.pop() if nlists else None

    @property
    def mapped(self) -> bool:
        """True if every part's codes are memory-mapped (and there is a part)."""
        return bool(self.parts) and all(is_mapped(p.index) for p in self.parts)

    def add_part(
        self, index: faiss.IndexBinary, rows: RowRanges | None = None, label: Hashable = None
    ) -> None:
        """Add a part (see ``check_part``); IVF parts must all have one nlist. The index is
        searched, never modified, so one part may serve several ShardedIndexes."""
        part = check_part(self.d, index, rows, label)
        ivf = as_ivf(part.index)
        nlist = self.nlist
        if ivf is not None and nlist is not None and ivf.nlist != nlist:
            raise ValueError(f"IVF parts must share one nlist: {ivf.nlist} != {nlist}")
        self.parts.append(part)

    def topk(
        self, queries: np.ndarray, k: int, nprobe: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``hamming_topk``: distances int32 (q, k), ids int64 (q, k), padded with -1."""
        self._check_nprobe(nprobe)
        nq = len(queries)
        pieces = self._map(lambda p: _part_topk(p, queries, k, nprobe), nq)
        if not pieces:
            return np.full((nq, k), -1, np.int32), np.full((nq, k), -1, np.int64)
        if len(pieces) == 1:
            return pieces[0]
        d, ids = _sort_candidates(np.hstack([d for d, _ in pieces]),
                                  np.hstack([i for _, i in pieces]))
        d, ids = d[:, :k], ids[:, :k]
        d[ids < 0] = -1
        return d, ids

    def radius(
        self, queries: np.ndarray, radius: int, nprobe: int | None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``hamming_radius``: per query, (distances int32 (h,), ids int64 (h,)) by (d, id)."""
        self._check_nprobe(nprobe)
        nq = len(queries)
        pieces = self._map(lambda p: _part_radius(p, queries, radius, nprobe), nq)
        out = []
        for q in range(nq):
            d = np.concatenate([np.empty(0, np.int32), *(piece[q][0] for piece in pieces)])
            ids = np.concatenate([np.empty(0, np.int64), *(piece[q][1] for piece in pieces)])
            order = np.lexsort((ids, d))
            out.append((d[order], ids[order]))
        return out

    def _check_nprobe(self, nprobe: int | None) -> None:
        if nprobe is not None and self.nlist is None:
            raise ValueError("nprobe applies only to IVF indexes")

    def _map(self, search: Callable[[Part], object], nq: int) -> list:
        """search(part) for every non-empty part, in part order; in threads when the parts
        outnumber what FAISS parallelises by itself (one thread per query)."""
        parts = [p for p in self.parts if p.index.ntotal]
        threads = faiss.omp_get_max_threads()
        if len(parts) < 2 or threads < 2 or nq >= threads:
            return [search(p) for p in parts]
        return list(_pool(threads).map(search, parts))


def _part_topk(part: Part, queries: np.ndarray, k: int, nprobe: int | None):
    if part.rows is None:
        is_ivf = as_ivf(part.index) is not None
        return hamming_topk(part.index, queries, k, nprobe if is_ivf else None)
    # Positions ascend with ids, so the first k by (distance, position) that FAISS's heap scan
    # keeps (scan_order_is_id_order) are the first k by (distance, id): one search, no id stored.
    d, pos = hamming_topk(part.index, queries, k)
    return d, part.rows.ids(pos)


def _part_radius(part: Part, queries: np.ndarray, radius: int, nprobe: int | None):
    if part.rows is None:
        is_ivf = as_ivf(part.index) is not None
        return hamming_radius(part.index, queries, radius, nprobe if is_ivf else None)
    found = hamming_radius(part.index, queries, radius)  # ids = positions, then translated
    return [(d, part.rows.ids(pos)) for d, pos in found]


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _one_omp_thread() -> None:
    # Each part search runs one query on one core; an OpenMP team per worker thread would only
    # spin on the cores the other workers need.
    faiss.omp_set_num_threads(1)


def _pool(threads: int) -> ThreadPoolExecutor:
    with _pools_lock:
        if threads not in _pools:
            _pools[threads] = ThreadPoolExecutor(
                threads, thread_name_prefix="sharded-search", initializer=_one_omp_thread
            )
        return _pools[threads]


@register_kind("sharded", "several flat or IVF indexes searched as one (exact merge)")
def _new_sharded(bits: int, nlist: int | None) -> ShardedIndex:
    return ShardedIndex(bits)
