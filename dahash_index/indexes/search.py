"""Search of binary indexes by Hamming distance, with a deterministic order of ties.

Rows are ordered by ascending Hamming distance and, within equal distance, by ascending id.
FAISS's exhaustive scan keeps the k smallest by (distance, scan position), so a flat index whose
ids ascend in insertion order (as an index store's row ids do) is answered by one FAISS call.
Otherwise ``hamming_topk`` fetches enough candidates to see every row tied at the k-th distance
and re-sorts them. Composite indexes (``indexes.sharded``) search themselves under the same
contract.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import faiss
import numpy as np

from dahash_index.errors import check_int
from dahash_index.indexes.binary import (
    _INT32_MAX,
    CompositeIndex,
    as_ivf,
    check_codes,
)

# Extra candidates fetched on top of 2 * k, so that small k rarely needs a second search to see
# the whole tie group at the k-th distance.
_FETCH_MARGIN = 32
# FAISS's counting search (``hammings_knn_mc``) keeps, per query, up to k ids at each of the
# K + 1 distances: 8 (K + 1) k bytes a query, allocated but touched only where ids land (1,000
# queries at k = 500 over 1 M random 64-bit codes: 119 MB of the 260 MB). Queries are searched
# in batches of at most this many such bytes, each batch a pass over every code: a re-ranking
# shortlist of 500 in batches of 64 MiB took 1.2 x the time of one pass. When one query alone
# needs more, the heap search is used.
_COUNTING_BYTES = 256 << 20


def _search_params(index: faiss.IndexBinary, nprobe: int | None) -> faiss.SearchParameters | None:
    ivf = as_ivf(index)
    if nprobe is None:
        if ivf is None:
            return None
        from dahash_index.indexes.ivf import (
            default_nprobe,  # dahash_index.indexes.ivf builds on this module
        )

        nprobe = default_nprobe(ivf.nlist)
    if ivf is None:
        raise ValueError("nprobe applies only to IVF indexes")
    nprobe = check_int("nprobe", nprobe, 1)
    return faiss.SearchParametersIVF(nprobe=min(nprobe, ivf.nlist))


@contextlib.contextmanager
def _nprobe_set(index: faiss.IndexBinary, nprobe: int | None) -> Iterator[None]:
    # IndexBinaryIVF.range_search takes no SearchParameters (FAISS 1.15), so nprobe has to be set
    # on the index for the call and restored afterwards.
    params = _search_params(index, nprobe)
    if params is None:
        yield
        return
    ivf = as_ivf(index)
    previous = ivf.nprobe
    ivf.nprobe = params.nprobe
    try:
        yield
    finally:
        ivf.nprobe = previous


def _sort_candidates(d: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Padding (id -1) sorts last whatever distance FAISS gave it.
    d = np.where(ids < 0, _INT32_MAX, d).astype(np.int32, copy=False)
    order = np.lexsort((ids, d), axis=-1)
    return np.take_along_axis(d, order, -1), np.take_along_axis(ids, order, -1)


def scan_order_is_id_order(index: faiss.IndexBinary) -> bool:
    """True if FAISS's exhaustive search of ``index`` visits rows in ascending id order.

    That holds for an ``IndexBinaryFlat`` (the id is the position) and for an IDMap over one whose
    ids ascend in insertion order. FAISS's heap search scans rows in order, admits a row only
    when it is strictly nearer than the current k-th and breaks ties inside the heap by position,
    so it then returns exactly the k smallest by (distance, id); ``tests/test_indexes.py`` pins
    this for the installed FAISS. Cost: one pass over the id map, in blocks (no large temporary).
    False for a ``CompositeIndex`` (it orders its results itself).
    """
    if isinstance(index, CompositeIndex):
        return False
    index = faiss.downcast_IndexBinary(index)
    ids = None
    if isinstance(index, (faiss.IndexBinaryIDMap, faiss.IndexBinaryIDMap2)):
        ids = faiss.rev_swig_ptr(index.id_map.data(), index.ntotal) if index.ntotal else None
        index = faiss.downcast_IndexBinary(index.index)
    if not isinstance(index, faiss.IndexBinaryFlat) or not index.use_heap:
        return False
    if ids is None:
        return True
    block = 1 << 20
    for start in range(0, len(ids) - 1, block):
        chunk = ids[start:start + block + 1]
        if not np.all(chunk[1:] > chunk[:-1]):
            return False
    return True


def hamming_topk(
    index: faiss.IndexBinary, queries: np.ndarray, k: int, nprobe: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows of each query by Hamming distance, ties ordered by ascending id.

    queries: uint8 (q, K/8). Returns ``(distances int32 (q, k), ids int64 (q, k))``.

    Guarantee: row i lists exactly the first k entries of the candidate rows sorted by
    (distance, id). The candidates are all rows of a flat index, or the rows in the ``nprobe``
    inverted lists nearest to the query for an IVF index (all rows when nprobe >= nlist).
    ``k >= ntotal`` therefore gives every candidate row in (distance, id) order.
    When fewer than k candidates exist the tail is padded with distance -1 and id -1.

    nprobe: IVF only; None uses ``default_nprobe(nlist)`` (``index.nprobe`` is ignored). Passed
    per call, the index is not modified. A ``CompositeIndex`` (``indexes.sharded``) answers
    with the same guarantee over all its parts. When ``scan_order_is_id_order(index)`` this is
    one FAISS search for k rows. Otherwise one search for ``min(ntotal, 2k + 32)`` candidates,
    memory O(q * that), and for the queries whose tie group at the k-th distance may have been
    cut, one range search up to that distance (memory: the rows within it).
    """
    queries = check_codes(queries, index.code_size, "queries")
    k = check_int("k", k, 1)
    if isinstance(index, CompositeIndex):
        if nprobe is not None:
            nprobe = check_int("nprobe", nprobe, 1)
        return index.topk(queries, k, nprobe)
    params = _search_params(index, nprobe)
    nq, ntotal = len(queries), index.ntotal
    out_d = np.full((nq, k), -1, dtype=np.int32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    if nq == 0 or ntotal == 0:
        return out_d, out_i

    if scan_order_is_id_order(index):
        take = min(k, ntotal)
        d, ids = _exhaustive_search(index, queries, take)
        out_d[:, :take] = np.where(ids < 0, -1, d)
        out_i[:, :take] = ids
        return out_d, out_i

    fetch = min(ntotal, 2 * k + _FETCH_MARGIN)
    d, ids = _sort_candidates(*index.search(queries, fetch, params=params))
    take = min(k, fetch)
    out_d[:, :take], out_i[:, :take] = d[:, :take], ids[:, :take]
    if k < fetch < ntotal:
        # A row is settled when its candidates ran out (padding) or its farthest fetched
        # candidate lies beyond the k-th distance: then no row tied at the k-th distance was
        # left out. Otherwise FAISS may have cut that tie group arbitrarily: every candidate
        # within the k-th distance is fetched by one range search per distinct k-th distance
        # (all rows nearer than it, fewer than k, plus the whole tie group). On clustered codes
        # tie groups run into the thousands; this costs one more scan, not one per doubling.
        open_rows = (ids[:, -1] >= 0) & (d[:, -1] == d[:, k - 1])
        for kth in np.unique(d[open_rows, k - 1]):
            rows = np.flatnonzero(open_rows & (d[:, k - 1] == kth))
            nprobe = None if params is None else params.nprobe
            found = hamming_radius(index, queries[rows], int(kth), nprobe)
            for row, (row_d, row_ids) in zip(rows, found, strict=True):
                out_d[row], out_i[row] = row_d[:k], row_ids[:k]

    out_d[out_i < 0] = -1
    return out_d, out_i


def _exhaustive_search(index: faiss.IndexBinary, queries: np.ndarray,
                       k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(queries, k)`` for a flat index (or an IDMap over one) whose scan order is
    its id order, k <= ntotal: (distances int32 (q, k), ids int64 (q, k)).

    By FAISS's counting search when its memory allows: like the heap search it scans the rows
    in order and keeps the first k by (distance, position), so it returns the same rows in the
    same order (``tests/indexes/test_indexes.py`` pins it), and on 1 M 64-bit codes it is
    faster (``benchmarks/search.py`` times both). It is called directly, in large batches:
    through ``IndexBinaryFlat.search`` (``use_heap=False``) it runs 32 queries at a time and
    was slower than the heap search here. It reads the flat index's codes in place (mapped or
    not) and changes nothing on the index, which threads share."""
    view = faiss.downcast_IndexBinary(index)
    id_map = None
    if isinstance(view, (faiss.IndexBinaryIDMap, faiss.IndexBinaryIDMap2)):
        id_map = faiss.rev_swig_ptr(view.id_map.data(), view.ntotal)
        view = faiss.downcast_IndexBinary(view.index)
    per_query = 8 * (8 * view.code_size + 1) * k
    batch = _COUNTING_BYTES // per_query
    if not isinstance(view, faiss.IndexBinaryFlat) or batch < 1:
        return index.search(queries, k)
    queries = np.ascontiguousarray(queries)
    distances = np.empty((len(queries), k), dtype=np.int32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    codes = view.xb.data()
    for start in range(0, len(queries), batch):
        stop = min(start + batch, len(queries))
        faiss.hammings_knn_mc(faiss.swig_ptr(queries[start:stop]), codes, stop - start,
                              view.ntotal, k, view.code_size, faiss.swig_ptr(distances[start:]),
                              faiss.swig_ptr(ids[start:]))
    if id_map is not None:
        ids = id_map[ids]
    return distances, ids


def hamming_radius(
    index: faiss.IndexBinary, queries: np.ndarray, radius: int, nprobe: int | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """All rows within Hamming distance ``<= radius`` of each query (inclusive).

    queries: uint8 (q, K/8). Returns one ``(distances int32 (h,), ids int64 (h,))`` per query,
    sorted by (distance, id). FAISS's binary range_search keeps ``distance < radius``, so it is
    called with ``radius + 1``. For IVF the search covers the ``nprobe`` nearest lists; as
    IndexBinaryIVF.range_search takes no per-call parameters, a given nprobe is set on the index
    for the duration of the call (do not share one IVF index object across threads with
    different nprobe values); None uses ``default_nprobe(nlist)``.
    """
    queries = check_codes(queries, index.code_size, "queries")
    check_int("radius", radius, 0)
    if isinstance(index, CompositeIndex):
        if nprobe is not None:
            nprobe = check_int("nprobe", nprobe, 1)
        return index.radius(queries, int(radius), nprobe)
    if len(queries) == 0:
        return []
    if index.ntotal == 0:
        empty = (np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int64))
        return [empty for _ in range(len(queries))]
    # Distances never exceed K, so K + 1 already means "everything".
    thresh = min(int(radius), index.d) + 1
    with _nprobe_set(index, nprobe):
        lims, d, ids = index.range_search(queries, thresh)
    d = d.astype(np.int32)
    ids = ids.astype(np.int64, copy=False)
    out = []
    for lo, hi in zip(lims[:-1], lims[1:], strict=True):
        order = np.lexsort((ids[lo:hi], d[lo:hi]))
        out.append((d[lo:hi][order], ids[lo:hi][order]))
    return out
