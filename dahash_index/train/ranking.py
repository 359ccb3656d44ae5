"""Exhaustive Hamming ranking for evaluation: every database code for every query."""

from __future__ import annotations

import numpy as np

from dahash_index import indexes


def hamming_rank_all(db_codes: np.ndarray, query_codes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every database row for every query, by (Hamming distance, row), through the search the
    index uses. Codes packed (n, K/8) uint8 -> (d (q, n) int32, ids (q, n) int64)."""
    index = indexes.new_index(db_codes.shape[1] * 8, "flat")
    indexes.add_codes(index, db_codes, np.arange(len(db_codes), dtype=np.int64))
    return indexes.hamming_topk(index, query_codes, len(db_codes))
