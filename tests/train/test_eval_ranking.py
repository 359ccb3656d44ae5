"""``train.ranking``: the exhaustive rankings ``eval`` scores, re-ranked as the index's queries
order hits (``model.rerank.rerank_order``, tested by hand in tests/model/test_rerank.py)."""

from __future__ import annotations

import numpy as np
import pytest

from dahash_index.model.rerank import rerank_order
from dahash_index.train.ranking import hamming_rank_all, rerank_ranking


def test_hamming_rank_all_ranks_every_row_by_distance_then_row():
    db = np.array([[0b0000_0011], [0b0000_0000], [0b0000_0001], [0b1111_1111]], np.uint8)
    d, ids = hamming_rank_all(db, np.array([[0b0000_0001]], np.uint8))
    # rows 2 (0 bits), 0 and 1 (1 bit each: by row), 3 (7 bits)
    assert ids.tolist() == [[2, 0, 1, 3]] and d.tolist() == [[0, 1, 1, 7]]


@pytest.mark.parametrize("mode", ["ties", "near", "full"])
def test_rerank_ranking_is_the_index_order(mode):
    """With a shortlist as long as the database, each query's ranking is ``rerank_order``'s
    order of all its rows (the index's order); scores on a grid of eighths, ties included."""
    rng = np.random.default_rng(5)
    db = rng.integers(0, 256, (40, 1), dtype=np.uint8)
    queries = rng.integers(0, 256, (6, 1), dtype=np.uint8)
    d, ids = hamming_rank_all(db, queries)
    score = rng.integers(-8, 9, (6, 40)) / 8
    # vectors whose dot products are these scores: query q picks row q of ``score``
    got_d, got_ids = rerank_ranking(d, ids, np.eye(6), score.T, mode, shortlist=40,
                                    near_score=0.5)
    for q in range(6):
        s = score[q, ids[q]].astype(np.float32)
        order = rerank_order(np.zeros(40, np.int64), d[q], ids[q], s, mode, near_score=0.5)
        assert got_ids[q].tolist() == ids[q][order].tolist()
        assert got_d[q].tolist() == d[q][order].tolist()


def test_near_and_full_leave_rows_past_the_shortlist_in_hamming_order():
    # one query, four rows by distance; the last two score most but are past a shortlist of 2
    d = np.array([[0, 1, 2, 3]])
    ids = np.array([[0, 1, 2, 3]])
    score = np.array([[0.1, 0.9, 1.0, 0.95]])
    for mode, expected in (("full", [1, 0, 2, 3]), ("near", [1, 0, 2, 3])):
        _, got = rerank_ranking(d, ids, np.eye(1), score.T, mode, shortlist=2, near_score=0.8)
        assert got.tolist() == [expected], mode
    # a shortlist of 4: near puts 2, 3, 1 (>= 0.8) first by score, then 0
    _, got = rerank_ranking(d, ids, np.eye(1), score.T, "near", shortlist=4, near_score=0.8)
    assert got.tolist() == [[2, 3, 1, 0]]
