"""The re-rank vector (model.rerank): the invariant projection on hand-made views, the vectors'
form, the checkpoint round trip, and the order of the three modes."""

from __future__ import annotations

import numpy as np
import pytest

from dahash_index.model.checkpoint import load_checkpoint, save_checkpoint
from dahash_index.model.network import dahash_net
from dahash_index.model.rerank import (
    NEAR_SCORE,
    RerankProjection,
    descending_key,
    fit_invariant,
    fit_pca,
    fit_projection,
    lexsort_ints,
    near_score_of,
    rerank_order,
    unit_rows,
)


def test_invariant_projection_keeps_what_tells_scenes_apart():
    # Scenes differ along x0 (spread 1) and x1 (spread 3); a view (an augmentation) moves a
    # scene along x1 by as much as scenes differ there, and never along x0.
    rng = np.random.default_rng(0)
    scenes = np.column_stack([rng.normal(0, 1, 500), rng.normal(0, 3, 500)])
    views = [scenes, scenes + np.column_stack([np.zeros(500), rng.normal(0, 3, 500)])]
    p = fit_invariant(views, dim=1, shrinkage=1e-6)
    direction = p.weights[:, 0] / np.linalg.norm(p.weights[:, 0])
    assert abs(direction[0]) > 0.99  # x0, though x1 varies more between scenes
    # whitened: unit variance within scenes would be 0 here; between scenes x0 / its scale
    assert p.mean == pytest.approx(np.mean([v.mean(0) for v in views], axis=0), abs=1e-6)


def test_pca_and_one_view_fall_back_to_whitened_pca():
    rng = np.random.default_rng(1)
    x = rng.normal(0, [5.0, 1.0, 0.1], (400, 3)).astype(np.float32)
    p = fit_pca(x, 2)
    projected = (x - p.mean) @ p.weights
    assert projected.std(axis=0) == pytest.approx([1.0, 1.0], rel=1e-3)  # whitened
    assert abs(p.weights[0, 0]) > abs(p.weights[1, 0])  # first direction: x0
    assert fit_projection([x, x]).kind == "pca"  # identical views: nothing to be invariant to


def test_vectors_are_unit_float16_and_travel_in_the_checkpoint(tmp_path, tf2015_spec):
    rng = np.random.default_rng(2)
    p = fit_pca(rng.normal(size=(100, 2048)).astype(np.float32), 8)
    v = p(rng.normal(size=(5, 2048)).astype(np.float32))
    assert v.dtype == np.float16 and v.shape == (5, 8)
    assert np.linalg.norm(v.astype(np.float32), axis=1) == pytest.approx(1.0, abs=2e-3)
    save_checkpoint(tmp_path / "m.pt", dahash_net(16), tf2015_spec, [], 0, {}, rerank=p)
    back = load_checkpoint(tmp_path / "m.pt").rerank
    assert isinstance(back, RerankProjection) and back.kind == "pca"
    np.testing.assert_array_equal(back.weights, p.weights)
    np.testing.assert_array_equal(back.mean, p.mean)
    save_checkpoint(tmp_path / "old.pt", dahash_net(16), tf2015_spec, [], 0, {})
    assert load_checkpoint(tmp_path / "old.pt").rerank is None  # a model from before them


def test_the_near_threshold_follows_the_vectors_dimension():
    # 128 dimensions (models trained since int8 vectors) score lower than the 64 of those
    # trained before, and of ``adapt``; any other dimension takes the current one's
    assert near_score_of(128) == NEAR_SCORE == 0.7
    assert near_score_of(64) == 0.8
    assert near_score_of(8) == NEAR_SCORE


def test_unit_rows_leaves_a_zero_row_zero():
    out = unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_the_order_of_each_mode_by_hand():
    # One query; rows 10..14 at Hamming distances 0, 0, 1, 1, 2 with these scores.
    groups = np.zeros(5, np.int64)
    distance = np.array([0, 0, 1, 1, 2])
    ids = np.array([10, 11, 12, 13, 14])
    score = np.array([0.1, 0.9, 0.5, 0.8, 0.99])
    assert ids[rerank_order(groups, distance, ids, score, "none")].tolist() == [10, 11, 12, 13,
                                                                                 14]
    # ties: inside distance 0 and inside distance 1 by score; distance 2 stays last
    assert ids[rerank_order(groups, distance, ids, score, "ties")].tolist() == [11, 10, 13, 12,
                                                                                 14]
    # full: by score whatever the distance
    assert ids[rerank_order(groups, distance, ids, score, "full")].tolist() == [14, 11, 13, 12,
                                                                                 10]
    # near: the rows scoring NEAR_SCORE (0.7) or more by score (14, 11, 13), then the others as
    # ties: 10 at distance 0 before 12 at 1, although 12 scores more
    assert ids[rerank_order(groups, distance, ids, score, "near")].tolist() == [14, 11, 13, 10,
                                                                                 12]
    # a threshold of 0.95 puts 14 alone first: the others as ties
    assert ids[rerank_order(groups, distance, ids, score, "near", near_score=0.95)].tolist() \
        == [14, 11, 10, 13, 12]
    with pytest.raises(ValueError, match="rerank must be one of none, ties, near, full"):
        rerank_order(groups, distance, ids, score, "some")


def test_the_order_of_each_mode_from_hits_in_any_order():
    """Hits not in (query, distance, id) order, ties of score included, give the order the
    definition says (the one-sort shortcut only applies to hits in search order)."""
    groups = np.array([1, 0, 0, 1, 0, 0])
    distance = np.array([0, 1, 0, 0, 1, 1])
    ids = np.array([5, 3, 4, 2, 1, 0])
    score = np.array([0.2, 0.7, 0.1, 0.2, 0.7, -0.0], np.float32)
    # ties: query 0: distance 0 (id 4), then distance 1 by score (ids 1 and 3 tie: by id), 0
    assert ids[rerank_order(groups, distance, ids, score, "ties")].tolist() == [4, 1, 3, 0,
                                                                                 2, 5]
    assert ids[rerank_order(groups, distance, ids, score, "full")].tolist() == [1, 3, 4, 0,
                                                                                 2, 5]
    in_order = rerank_order(groups, distance, ids, None, "none")
    assert ids[in_order].tolist() == [4, 0, 1, 3, 2, 5]
    g, d, i, s = groups[in_order], distance[in_order], ids[in_order], score[in_order]
    # near at 0.5: the 0.7s first (ids 1, 3: distance 1, a score tie broken by id), then
    # query 0's others as ties: 4 (distance 0), 0 (distance 1)
    assert ids[rerank_order(groups, distance, ids, score, "near", 0.5)].tolist() == [1, 3, 4,
                                                                                      0, 2, 5]
    for mode in ("ties", "near", "full"):  # the same from hits in search order
        assert i[rerank_order(g, d, i, s, mode)].tolist() == \
            ids[rerank_order(groups, distance, ids, score, mode)].tolist()


def test_lexsort_ints_packs_keys_or_falls_back():
    a = np.array([3, 1, 2, 1, 0])
    b = np.array([0, 1, 0, 1, 1])  # primary
    assert lexsort_ints((a, b)).tolist() == [2, 0, 4, 1, 3]  # stable: 1 before 3
    wide = np.array([1 << 40, 0, 1 << 40, 5, 7])  # 41 + 41 bits: too wide to pack
    assert lexsort_ints((wide, wide >> 20)).tolist() == np.lexsort((wide, wide >> 20)).tolist()
    assert lexsort_ints((np.array([2, -1, 0]),)).tolist() == [1, 2, 0]  # negative: lexsort
    assert lexsort_ints((np.zeros(0, np.int64),)).tolist() == []


def test_descending_key_sorts_as_minus_score():
    score = np.array([0.5, -1.0, 0.0, -0.0, 1.0, -0.25], np.float32)
    key = descending_key(score)
    assert np.argsort(key, kind="stable").tolist() == [4, 0, 2, 3, 5, 1]
    assert key[2] == key[3]  # 0.0 and -0.0 tie, as their floats do
    assert key.min() >= 0 and key.max() < 1 << 32
