"""Exhaustive Hamming ranking for evaluation: every database code for every query."""

from __future__ import annotations

import numpy as np

from dahash_index import indexes
from dahash_index.model.rerank import DEFAULT_SHORTLIST, near_score_of


def hamming_rank_all(db_codes: np.ndarray, query_codes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every database row for every query, by (Hamming distance, row), through the search the
    index uses. Codes packed (n, K/8) uint8 -> (d (q, n) int32, ids (q, n) int64)."""
    index = indexes.new_index(db_codes.shape[1] * 8, "flat")
    indexes.add_codes(index, db_codes, np.arange(len(db_codes), dtype=np.int64))
    return indexes.hamming_topk(index, query_codes, len(db_codes))


def rerank_ranking(distances: np.ndarray, ids: np.ndarray, query_vectors: np.ndarray,
                   db_vectors: np.ndarray, mode: str, shortlist: int = DEFAULT_SHORTLIST,
                   near_score: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``hamming_rank_all``'s rankings (d, ids (q, n), by distance then row) reordered by the
    re-rank score (the cosine of the vectors, (q, D) and (n, D) unit rows) as the index's
    queries order hits (``model.rerank.rerank_order``): "ties" inside equal distances;
    "near" the first ``shortlist`` columns that score ``near_score`` or more by score, then
    the rest as "ties"; "full" the first ``shortlist`` columns by score, the rest in Hamming
    order. near_score: by default the vectors' (``model.rerank.near_score_of``)."""
    if near_score is None:
        near_score = near_score_of(query_vectors.shape[1])
    score = np.take_along_axis(query_vectors @ db_vectors.T, ids, axis=1)
    score = np.clip(score, -1.0, 1.0)
    column = np.arange(ids.shape[1])[None, :]
    if mode == "ties":
        key = distances + 0.5 * (1.0 - score) / 2.0  # [d, d + 0.5): distance first
    elif mode == "near":
        near = (column < shortlist) & (score >= near_score)
        key = np.where(near, (1.0 - score) / 2.0 + 1e-6 * distances,
                       2.0 + distances + 0.5 * (1.0 - score) / 2.0)
    elif mode == "full":
        inside = column < shortlist
        key = np.where(inside, (1.0 - score) / 2.0 + 1e-6 * distances, 2.0 + distances)
    else:
        raise ValueError(f"rerank must be ties, near or full, got {mode!r}")
    order = np.argsort(key + 1e-12 * column, axis=1, kind="stable")
    return np.take_along_axis(distances, order, axis=1), np.take_along_axis(ids, order, axis=1)
