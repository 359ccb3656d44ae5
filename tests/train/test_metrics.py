"""Unit tests for trainer/metrics.py, with the arithmetic worked by hand in the comments."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dahash_index.train.metrics import (
    average_precision,
    mean_average_precision,
    plot_pr_curves,
    precision_at_k,
    precision_recall_curve,
    tie_aware_average_precision,
)


def _bool(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=bool)


def test_average_precision_by_hand():
    rel = _bool(1, 0, 1, 0, 1)
    # hits at ranks 1, 3, 5: precisions 1/1, 2/3, 3/5, averaged over the 3 relevant items
    assert average_precision(rel) == pytest.approx((1 / 1 + 2 / 3 + 3 / 5) / 3)
    # top 2 = [1, 0]: R_2 = 1, sum = 1/1
    assert average_precision(rel, k=2) == pytest.approx(1.0)
    # top 3 = [1, 0, 1]: R_3 = 2, (1/1 + 2/3) / 2
    assert average_precision(rel, k=3) == pytest.approx((1 + 2 / 3) / 2)
    # k beyond the list is the whole list
    assert average_precision(rel, k=50) == average_precision(rel)
    assert average_precision(_bool(0, 0, 1), k=2) == 0.0  # R_2 = 0
    assert average_precision(np.array([], dtype=bool)) == 0.0
    assert average_precision(np.array([0, 1])) == pytest.approx(0.5)  # integer 0/1 accepted


def test_average_precision_rejects_bad_input():
    with pytest.raises(ValueError, match="bool"):
        average_precision(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        average_precision(np.ones((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="k must be"):
        average_precision(_bool(1), k=0)


def test_tie_aware_by_hand():
    rel, dist = _bool(1, 0, 1, 0), np.array([0, 1, 1, 2])
    # The tie {rank 2, rank 3} has two orderings:
    #   [1, 0, 1, 0]: (1/1 + 2/3) / 2 = 5/6
    #   [1, 1, 0, 0]: (1/1 + 2/2) / 2 = 1
    # expectation (5/6 + 1) / 2 = 11/12
    assert tie_aware_average_precision(rel, dist) == pytest.approx(11 / 12)
    # Database order (ties as given) gives the first ordering.
    assert average_precision(rel) == pytest.approx(5 / 6)


def test_tie_aware_at_k_by_hand():
    # The tie group straddles k=2; R_2 depends on the ordering:
    #   [0, 1 | 0, 1]: R_2 = 1, AP@2 = (1/2) / 1 = 1/2
    #   [0, 0 | 1, 1]: R_2 = 0, AP@2 = 0
    # expectation 1/4
    assert tie_aware_average_precision(_bool(0, 1, 0, 1), [0, 1, 1, 2], k=2) == pytest.approx(0.25)
    # Group of 3 with 2 relevant at ranks 2..4, k = 3; the 3 distinct arrangements
    #   [0, 1, 1 | 0]: (1/2 + 2/3) / 2 = 7/12
    #   [0, 1, 0 | 1]: (1/2) / 1      = 1/2
    #   [0, 0, 1 | 1]: (1/3) / 1      = 1/3
    # expectation (7/12 + 6/12 + 4/12) / 3 = 17/36
    got = tie_aware_average_precision(_bool(0, 1, 1, 0), [0, 1, 1, 1], k=3)
    assert got == pytest.approx(17 / 36)


def test_tie_aware_equals_ap_without_ties():
    rng = np.random.default_rng(0)
    rel = rng.random(40) < 0.3
    dist = np.arange(40)
    for k in (None, 1, 7, 40):
        assert tie_aware_average_precision(rel, dist, k) == pytest.approx(average_precision(rel, k))


def _enumerated_expectation(rel: np.ndarray, dist: np.ndarray, k: int | None) -> float:
    """Mean AP@k over every ordering within every tie group (items treated as distinct)."""
    groups = [np.flatnonzero(dist == v) for v in np.unique(dist)]
    values = [
        average_precision(rel[np.concatenate(perm)], k)
        for perm in itertools.product(*(itertools.permutations(g) for g in groups))
    ]
    return float(np.mean(values))


@pytest.mark.parametrize("seed", range(12))
def test_tie_aware_matches_enumeration(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 8))
    dist = np.sort(rng.integers(0, 3, size=m))
    rel = rng.random(m) < 0.5
    for k in [None, *range(1, m + 1)]:
        expected = _enumerated_expectation(rel, dist, k)
        assert tie_aware_average_precision(rel, dist, k) == pytest.approx(expected, abs=1e-12)


def test_tie_aware_rejects_unsorted_distances():
    with pytest.raises(ValueError, match="non-decreasing"):
        tie_aware_average_precision(_bool(1, 0), [2, 1])


# Four database items labelled [0, 0, 1, 1]; the queries are db items 0 and 2 (test vs test).
DB = np.array([0, 0, 1, 1])
QUERIES = np.array([0, 1])
SELF = np.array([0, 2])
RANKED = np.array([[0, 1, 2, 3], [2, 0, 1, 3]])


def test_map_with_exclude_self():
    # query 0 (label 0): [0, 1, 2, 3] minus itself -> [1, 2, 3], relevance [1, 0, 0]: AP = 1
    # query 1 (label 1): [2, 0, 1, 3] minus itself -> [0, 1, 3], relevance [0, 0, 1]: AP = 1/3
    got = mean_average_precision(QUERIES, DB, RANKED, exclude_self=SELF)
    assert got == pytest.approx((1 + 1 / 3) / 2)
    # @2: [1, 0] -> 1 and [0, 0] -> 0
    assert mean_average_precision(QUERIES, DB, RANKED, k=2, exclude_self=SELF) == 0.5
    # Without exclusion the query finds itself first: [1, 1, 0, 0] -> 1; [1, 0, 0, 1] -> 3/4
    assert mean_average_precision(QUERIES, DB, RANKED) == pytest.approx((1 + (1 + 2 / 4) / 2) / 2)


def test_map_drops_padding_and_checks_width():
    ranked = np.array([[1, -1, -1], [3, 0, -1]])
    # [1] -> relevant: 1; [3, 0] -> [1, 0]: 1
    assert mean_average_precision(QUERIES, DB, ranked, k=2) == 1.0
    with pytest.raises(ValueError, match="needs 3"):
        mean_average_precision(QUERIES, DB, RANKED[:, :2], k=2, exclude_self=SELF)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        mean_average_precision(QUERIES, DB, np.array([[4], [0]]))


def test_tie_aware_map():
    dist = np.array([[0, 5, 5, 9], [0, 3, 3, 3]])
    # query 0 minus itself: rel [1, 0, 0], dist [5, 5, 9]; tie {1, 0}: ([1,0] -> 1, [0,1] -> 1/2)
    #   -> 3/4
    # query 1 minus itself: rel [0, 0, 1], dist [3, 3, 3]; the relevant item is equally likely
    #   at rank 1, 2, 3 -> (1 + 1/2 + 1/3) / 3 = 11/18
    got = mean_average_precision(QUERIES, DB, RANKED, dist, tie_aware=True, exclude_self=SELF)
    assert got == pytest.approx((3 / 4 + 11 / 18) / 2)
    with pytest.raises(ValueError, match="needs distances"):
        mean_average_precision(QUERIES, DB, RANKED, tie_aware=True)


def test_tie_aware_map_refuses_a_cut_tie_group():
    # 3 of 4 db items ranked, the last two tied: the tie may continue in the unseen item.
    ranked, dist = np.array([[1, 2, 3]]), np.array([[1, 2, 2]])
    with pytest.raises(ValueError, match="tie group"):
        mean_average_precision(np.array([0]), DB, ranked, dist, k=2, tie_aware=True)
    # A farther item after the group proves it complete.
    ranked, dist = np.array([[1, 2, 3]]), np.array([[1, 2, 4]])
    got = mean_average_precision(np.array([0]), DB, ranked, dist, k=2, tie_aware=True)
    assert got == 1.0
    # Padding means the index had no more candidates.
    ranked, dist = np.array([[1, 2, -1]]), np.array([[1, 2, -1]])
    assert mean_average_precision(np.array([0]), DB, ranked, dist, k=2, tie_aware=True) == 1.0


def test_precision_at_k():
    # relevance after dropping self: query 0 -> [1, 0, 0], query 1 -> [0, 0, 1]
    got = precision_at_k(QUERIES, DB, RANKED, ks=(1, 2, 3), exclude_self=SELF)
    # P@1 = (1 + 0) / 2; P@2 = (1/2 + 0) / 2; P@3 = (1/3 + 1/3) / 2
    assert got == pytest.approx({1: 0.5, 2: 0.25, 3: 1 / 3})
    # Without exclusion: [1, 1, 0, 0] and [1, 0, 0, 1]; P@4 = (2/4 + 2/4) / 2
    assert precision_at_k(QUERIES, DB, RANKED, ks=(4,)) == {4: 0.5}
    with pytest.raises(ValueError, match="needs 4"):
        precision_at_k(QUERIES, DB, RANKED[:, :3], ks=(3,), exclude_self=SELF)


def test_precision_recall_curve_by_hand():
    db = np.array([0, 1, 0])
    queries = np.array([0, 1])
    d = np.array([[0, 1, 2], [2, 2, 1]])
    precision, recall = precision_recall_curve(queries, db, d, bits=2)
    # query 0 (relevant: items 0, 2): r=0 {0} P=1 R=1/2; r=1 {0,1} P=1/2 R=1/2;
    #                                  r=2 all P=2/3 R=1
    # query 1 (relevant: item 1):      r=0 {} (skipped for P, R=0); r=1 {2} P=0 R=0;
    #                                  r=2 all P=1/3 R=1
    np.testing.assert_allclose(precision, [1, (1 / 2 + 0) / 2, (2 / 3 + 1 / 3) / 2])
    np.testing.assert_allclose(recall, [(1 / 2 + 0) / 2, (1 / 2 + 0) / 2, 1])
    # Unsigned distances (e.g. a popcount sum) give the same curve.
    same = precision_recall_curve(queries, db, d.astype(np.uint64), bits=2)
    np.testing.assert_allclose(same, (precision, recall))
    # Excluding query 0 = item 0 from its own sets: r=0 {} ; r=1 {1} P=0 R=0; r=2 {1,2} P=1/2 R=1
    precision, recall = precision_recall_curve(queries, db, d, 2, exclude_self=np.array([0, -1]))
    np.testing.assert_allclose(precision, [np.nan, 0, (1 / 2 + 1 / 3) / 2])
    np.testing.assert_allclose(recall, [0, 0, 1])
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        precision_recall_curve(queries, db, d + 1, bits=2)


def test_plot_writes_png(tmp_path):
    path = tmp_path / "pr.png"
    curves = {
        "dahash": (np.array([1.0, 0.8, 0.5]), np.array([0.1, 0.5, 1.0])),
        "milan": (np.array([np.nan, 0.6, 0.5]), np.array([0.0, 0.4, 1.0])),
    }
    plot_pr_curves(curves, str(path), "UC Merced, 64 bits")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1000
