"""Ranking the rows of an index for a batch of queries: Hamming distance first, then the
re-rank vectors (METHOD.md §7), as plain functions of numpy arrays.

A query may have several codes (the chips of a large image): its hits are the rows any of its
codes finds, each at its smallest distance (``merged``). ``--rerank`` then orders them:

- ``none``: by (distance, row id), the order of the FAISS search;
- ``ties``: by distance, and inside a group of equal distance by re-rank score (the cosine of
  the query's and the row's vectors; a multi-code query's best), then row id. Rows at
  different distances keep their order. The group at the ``top``-th hit's distance is read
  whole (a range search when the shortlist cut it), so the hits kept are the best of it;
- ``near``: the rows of a shortlist of the ``shortlist`` nearest by distance that score
  ``model.rerank.near_score_of(D)`` or more (changed copies of the query, and scenes nearly
  alike) first, by score; then the others as ``ties`` orders them;
- ``full``: a shortlist of the ``shortlist`` nearest by distance, ordered by score, then
  distance, then row id.
"""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np

from dahash_index import indexes
from dahash_index.model.rerank import (
    descending_key,
    in_search_order,
    lexsort_ints,
    rerank_order,
)
from dahash_index.store.vectors import cosine_scores, decode_vectors

SCORE_CHUNK = 16384  # hits scored at a time (16,384 x 64 float32: 4 MB)
UNCUT = np.iinfo(np.int32).max  # the reach of a code whose search holds every row it can find


def fetch_size(rerank: str, top: int, shortlist: int) -> int:
    """How many nearest rows to fetch per code: ``top`` for none; the shortlist for full and
    near; for ties, enough that the tie group at the ``top``-th distance is rarely cut (then
    it is completed by a range search, ``complete_ties``)."""
    if rerank in ("full", "near"):
        return max(top, shortlist)
    return top if rerank == "none" else 2 * top + 32


def merged(index: faiss.IndexBinary, codes: np.ndarray, owners: np.ndarray, fetch: int,
           radius: int | None, nprobe: int | None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Search every code; the hits of each query's codes as one list -> (query int64 (h,),
    distance int32 (h,), row id int64 (h,), reach int32 (m,)), by query, then distance, then
    row id; a row found by several codes of a query once, at its smallest distance. With
    ``radius`` every row within it, else each code's ``fetch`` nearest (enough: a row among a
    query's ``fetch`` nearest by smallest distance is among the ``fetch`` nearest of the code
    that gives it). reach: per code, the distance of its ``fetch``-th hit, up to which its
    hits may have been cut (rows tied there left out), or ``UNCUT`` when it found fewer or
    searched a radius."""
    if radius is not None:
        found = indexes.hamming_radius(index, codes, radius, nprobe)
        counts = np.array([len(i) for _, i in found], dtype=np.int64)
        d = np.concatenate([d for d, _ in found]) if found else np.empty(0, np.int32)
        ids = np.concatenate([i for _, i in found]) if found else np.empty(0, np.int64)
        reach = np.full(len(codes), UNCUT, np.int32)
    else:
        d, ids = indexes.hamming_topk(index, codes, fetch, nprobe)
        reach = np.where(ids[:, -1] >= 0, d[:, -1], UNCUT).astype(np.int32)  # d, ids: (m, fetch)
        valid = ids >= 0  # row-major boolean indexing keeps each code's rank order
        counts, d, ids = valid.sum(axis=1), d[valid], ids[valid]
    query = np.repeat(owners, counts)
    if len(np.unique(owners)) < len(owners):  # a row may be found by several codes of a query
        query, d, ids = _each_row_once(query, d, ids)
    if in_search_order(query, d, ids):  # FAISS's order: each code's hits by (distance, id)
        return query, d.astype(np.int32), ids, reach
    order = lexsort_ints((ids, d, query))
    return query[order], d[order].astype(np.int32), ids[order], reach


def complete_ties(index: faiss.IndexBinary, codes: np.ndarray, owners: np.ndarray,
                  query: np.ndarray, d: np.ndarray, ids: np.ndarray, reach: np.ndarray,
                  top: int, nprobe: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``merged``'s hits (query, d, ids and each code's reach) with, for each query whose
    search may have cut the group of rows tied at its ``top``-th distance, every row within
    that distance (a range search); its hits farther than that stay (``near`` may lift them).
    A query's group is whole unless one of its codes (chips, orientations) reached no farther
    than that distance: every row nearer than a code's reach is among that code's hits."""
    n = int(owners.max()) + 1 if len(owners) else 0
    starts = np.searchsorted(query, np.arange(n))
    ends = np.append(starts[1:], len(query))
    shortest = np.full(n, UNCUT, np.int64)
    np.minimum.at(shortest, owners, reach)
    cut = [(q, int(d[lo + top - 1])) for q, (lo, hi) in enumerate(zip(starts, ends, strict=True))
           if hi - lo >= top and shortest[q] <= d[lo + top - 1]]
    if not cut:
        return query, d, ids
    cut_at = np.full(n, -1, np.int64)
    cut_at[[q for q, _ in cut]] = [within for _, within in cut]
    stay = d > cut_at[query]  # every hit of a query not cut, and those past the cut
    parts = [(query[stay], d[stay], ids[stay])]
    # one range search for all the queries cut at the same distance: a pass over the codes,
    # not one a query
    for within in sorted({within for _, within in cut}):
        mine = np.isin(owners, [q for q, w in cut if w == within])
        parts.append(merged(index, codes[mine], owners[mine], 0, within, nprobe)[:3])
    query, d, ids = (np.concatenate([p[i] for p in parts]) for i in range(3))
    # A hit past the cut that the range search found nearer (by another of the query's
    # codes) is kept once, at its smaller distance.
    query, d, ids = _each_row_once(query, d, ids)
    at = lexsort_ints((ids, d, query))
    return query[at], d[at], ids[at]


def scores(query: np.ndarray, ids: np.ndarray, owners: np.ndarray, query_vectors: np.ndarray,
           row_vectors: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The re-rank score of each hit, float32 (h,): the cosine of the row's vector and its
    query's (the best over a query's codes). query_vectors: (m, D), row i for code i;
    row_vectors: row ids (n,) -> their vectors (n, D) as stored (``store.vectors``).
    Gathered about SCORE_CHUNK hits at a time, and decoded a query at a time
    (``cosine_scores``): the floats stay in the CPU's cache."""
    q_vectors = np.asarray(query_vectors, np.float32)
    out = np.full(len(ids), -np.inf, np.float32)
    if len(np.unique(owners)) == len(owners):  # one code a query: one product a query
        code_of = np.full(int(owners.max()) + 1 if len(owners) else 0, -1, np.int64)
        code_of[owners] = np.arange(len(owners))
        # the hits come by query: whole queries' runs of hits, about SCORE_CHUNK at a time
        starts, ends = _runs(query)
        first = 0
        while first < len(starts):
            last = max(first + 1, int(np.searchsorted(starts, starts[first] + SCORE_CHUNK)))
            lo, hi = int(starts[first]), int(ends[last - 1])
            rows = row_vectors(ids[lo:hi])
            for s, e in zip(starts[first:last].tolist(), ends[first:last].tolist(), strict=True):
                out[s:e] = cosine_scores(rows[s - lo:e - lo], q_vectors[code_of[query[s]]])
            first = last
        return np.clip(out, -1.0, 1.0)  # rounding
    rows = (decode_vectors(row_vectors(ids)) if len(ids)
            else np.empty((0, q_vectors.shape[1]), np.float32))
    for code, q in enumerate(owners):
        mine = query == q
        out[mine] = np.maximum(out[mine], rows[mine] @ q_vectors[code])
    return np.clip(out, -1.0, 1.0)


def best_by_score(query: np.ndarray, distance: np.ndarray, ids: np.ndarray, score: np.ndarray,
                  top: int) -> np.ndarray:
    """The positions of each query's ``top`` first hits in the ``full`` order (int64), as
    ``rerank_order(..., "full")`` then ``first_per_query`` give them; hits (int (h,) each, a
    score float32 (h,)) ordered by query. A shortlist of 500 needs only its best 50 sorted:
    when the hits are in search order and every query has as many, each query's are selected
    (a partition) and only those sorted."""
    starts, ends = _runs(query)
    sizes = ends - starts
    n = int(sizes[0]) if len(sizes) else 0
    if n <= top or np.any(sizes != n) or not in_search_order(query, distance, ids):
        at = rerank_order(query, distance, ids, score, "full")
        return at[first_per_query(query[at], top)]
    # within a query, the position is the (distance, id) order: (score, position) is the key
    key = (descending_key(score).reshape(-1, n) << 31) | np.arange(n)
    best = np.argpartition(key, top - 1, axis=1)[:, :top]
    best = np.take_along_axis(best, np.argsort(np.take_along_axis(key, best, 1), axis=1), 1)
    return (starts[:, None] + best).ravel()


def best_near(query: np.ndarray, distance: np.ndarray, ids: np.ndarray, score: np.ndarray,
              top: int, near_score: float) -> np.ndarray:
    """The positions of each query's ``top`` first hits in the ``near`` order (int64), as
    ``rerank_order(..., "near")`` then ``first_per_query`` give them; hits (int (h,) each, a
    score float32 (h,)) ordered by query, then distance; near_score: ``near``'s threshold
    (``model.rerank.near_score_of``). Only the near hits and the others
    within their query's ``top``-th distance among those can be kept: only they are sorted
    (a shortlist of 500 has a few dozen)."""
    near = score >= near_score
    keep = near.copy()
    far = np.flatnonzero(~near)
    keep[far] = within_top_distance(query[far], distance[far], top)
    at = np.flatnonzero(keep)
    at = at[rerank_order(query[at], distance[at], ids[at], score[at], "near", near_score)]
    return at[first_per_query(query[at], top)]


def best_per_scene(query: np.ndarray, keys: list[tuple]) -> np.ndarray:
    """bool mask of the first (best) hit of each query per scene; ``keys``: each hit's scene
    (url, member), hits ordered by query."""
    seen: set[tuple] = set()
    keep = np.zeros(len(query), dtype=bool)
    for j, (q, key) in enumerate(zip(query.tolist(), keys, strict=True)):
        if (q, key) not in seen:
            seen.add((q, key))
            keep[j] = True
    return keep


def within_top_distance(query: np.ndarray, d: np.ndarray, top: int) -> np.ndarray:
    """bool mask of the hits no farther than their query's ``top``-th (every hit of a query
    with fewer); hits ordered by query, then distance."""
    start, end = _query_bounds(query)
    return d <= d[np.minimum(start + top, end) - 1]


def first_per_query(query: np.ndarray, top: int) -> np.ndarray:
    """bool mask of the first ``top`` entries of each query (``query`` sorted)."""
    start, _ = _query_bounds(query)
    return np.arange(len(query)) - start < top


def _each_row_once(query: np.ndarray, d: np.ndarray, ids: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hits (int (h,) each) with each (query, row) pair once, at its smallest distance;
    ordered by query, then row id."""
    at = lexsort_ints((d, ids, query))
    query, d, ids = query[at], d[at], ids[at]
    first = np.ones(len(ids), dtype=bool)
    first[1:] = (query[1:] != query[:-1]) | (ids[1:] != ids[:-1])
    return query[first], d[first], ids[first]


def _query_bounds(query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each entry of ``query`` (int (h,), sorted), where its query's entries start and
    end (int64 (h,) each), in one pass."""
    starts, ends = _runs(query)
    return np.repeat(starts, ends - starts), np.repeat(ends, ends - starts)


def _runs(query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each query's entries start and end in ``query`` (int (h,), sorted): int64 (q,)
    each, one a query present."""
    if not len(query):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate(([True], query[1:] != query[:-1])))
    return starts, np.append(starts[1:], len(query))


def own_file_first(query: np.ndarray, urls: list, distance: np.ndarray, score: np.ndarray,
                   locations: list) -> np.ndarray:
    """The order of a result's rows (int64 (r,)) that puts each query's own file first when it
    ties exactly with the query's first hit: a byte-identical copy of the file elsewhere in
    the index has the same code and vector, and the search left the two in row-id order.
    query int (r,): each row's query, rows grouped by query in rank order; urls (r,) str or
    None; distance (r,), score float (r,) (NaN where none); locations: per query, the path
    or URL its image was read from (absolute), or None. Any other row keeps its place."""
    order = np.arange(len(query), dtype=np.int64)
    if not len(query):
        return order
    starts = np.flatnonzero(np.r_[True, query[1:] != query[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, len(query)]))
    same = np.array([u is not None and u == locations[q] for u, q in zip(urls, query.tolist(),
                                                                          strict=True)])
    tied = (distance == distance[first]) & ((score == score[first])
                                            | (np.isnan(score) & np.isnan(score[first])))
    for row in np.flatnonzero(same & tied & (order != first)).tolist():
        if same[first[row]]:  # the first hit is the query's file already
            continue
        lo = int(first[row])
        order[lo:row + 1] = np.r_[row, order[lo:row]]
        same[lo] = True  # one move a query
    return order
