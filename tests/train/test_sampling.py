"""Unit tests for trainer/sampling.py against METHOD.md section 4."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dahash_index.train.sampling import (
    ClassBalancedSampler,
    RandomTripletSampler,
    batch_all_triplets,
    semi_hard_triplets,
)

# classes 0 and 1 large (10 >= 2M for M = 3), class 2 small (3 < 2M)
LABELS = np.array([0] * 10 + [1] * 10 + [2] * 3)


def _check_triplets(labels, a, p, n, m):
    for x in (a, p, n):
        assert x.shape == (m,)
        assert np.issubdtype(x.dtype, np.integer)
    assert len(set(labels[a])) == 1  # one positive class
    assert len(set(labels[n])) == 1  # one negative class
    np.testing.assert_array_equal(labels[a], labels[p])
    assert labels[a][0] != labels[n][0]
    assert (a != p).all()


def test_random_sampler_valid_triplets():
    sampler = RandomTripletSampler(LABELS, triplets=3, seed=0)
    seen_pos = set()
    for _ in range(60):
        a, p, n = sampler.sample()
        _check_triplets(LABELS, a, p, n, 3)
        seen_pos.add(int(LABELS[a][0]))
        if LABELS[a][0] != 2:
            # large class: 3 anchors + 3 positives, 6 distinct images
            assert len(set(a) | set(p)) == 6
    assert seen_pos == {0, 1, 2}  # the small class also serves as the positive class


def test_random_sampler_small_classes():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])  # both classes < 2M = 8
    sampler = RandomTripletSampler(labels, triplets=4, seed=1)
    for _ in range(30):
        a, p, n = sampler.sample()
        _check_triplets(labels, a, p, n, 4)  # negatives drawn with replacement when needed


def test_random_sampler_deterministic_per_seed():
    def draws(seed):
        s = RandomTripletSampler(LABELS, triplets=3, seed=seed)
        return [np.concatenate(s.sample()) for _ in range(5)]

    for x, y in zip(draws(7), draws(7), strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(draws(7), draws(8), strict=True))


def test_random_sampler_refusals():
    with pytest.raises(ValueError, match="two classes"):
        RandomTripletSampler(np.array([3, 3, 3]), triplets=2, seed=0)
    with pytest.raises(ValueError, match="two images"):
        RandomTripletSampler(np.array([0, 0, 1]), triplets=2, seed=0)


def test_class_balanced_sampler():
    labels = np.repeat(np.arange(4), 5)  # 4 classes x 5
    sampler = ClassBalancedSampler(labels, classes_per_batch=2, per_class=3, seed=0)
    for _ in range(10):
        idx = sampler.sample()
        assert idx.shape == (6,)  # P * S = 2 * 3
        classes, counts = np.unique(labels[idx], return_counts=True)
        assert len(classes) == 2
        assert counts.tolist() == [3, 3]
        # blocks of S images per class
        assert len(set(labels[idx[:3]])) == 1 and len(set(labels[idx[3:]])) == 1


def test_class_balanced_sampler_clips_p_and_replaces():
    labels = np.array([0, 0, 1, 1, 1, 1])
    sampler = ClassBalancedSampler(labels, classes_per_batch=10, per_class=3, seed=0)
    idx = sampler.sample()
    # P clipped to 2 classes; class 0 has 2 < S = 3 images, drawn with replacement
    assert idx.shape == (6,)
    assert sorted(np.bincount(labels[idx]).tolist()) == [3, 3]


def test_class_balanced_sampler_deterministic_and_refusal():
    labels = np.repeat(np.arange(5), 4)
    a = ClassBalancedSampler(labels, 3, 2, seed=3)
    b = ClassBalancedSampler(labels, 3, 2, seed=3)
    for _ in range(5):
        np.testing.assert_array_equal(a.sample(), b.sample())
    with pytest.raises(ValueError, match="two classes"):
        ClassBalancedSampler(np.zeros(4, dtype=int), 2, 2, seed=0)


def test_batch_all_count_by_hand():
    labels = torch.tensor([0, 0, 1, 1, 1])
    t = batch_all_triplets(labels)
    # class 0 anchors (2): 1 other same-class x 3 other-class = 3 each -> 6
    # class 1 anchors (3): 2 other same-class x 2 other-class = 4 each -> 12;  total 18
    assert t.shape == (18, 3)
    assert t.dtype == torch.int64
    rows = {tuple(r) for r in t.tolist()}
    assert len(rows) == 18
    for a, p, n in rows:
        assert a != p and labels[a] == labels[p] and labels[a] != labels[n]
    assert {r for r in rows if r[0] == 0} == {(0, 1, 2), (0, 1, 3), (0, 1, 4)}
    assert {r for r in rows if r[0] == 2} == {(2, 3, 0), (2, 3, 1), (2, 4, 0), (2, 4, 1)}


def test_batch_all_no_positive_pairs():
    assert batch_all_triplets(torch.tensor([0, 1, 2])).shape == (0, 3)


def test_semi_hard_by_hand():
    # 1-D outputs, squared distances:
    #   idx:    0     1     2     3     4
    #   h:      0.0   1.0   0.4   2.0   4.0
    #   label:  0     0     1     1     1
    h = torch.tensor([[0.0], [1.0], [0.4], [2.0], [4.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    expected = [
        # (0,1): d_ap = 1; negatives 2: 0.16, 3: 4, 4: 16 -> closest farther = 3
        [0, 1, 3],
        # (1,0): d_ap = 1; negatives 2: 0.36, 3: 1 (tie, not farther), 4: 9 -> 4
        [1, 0, 4],
        # (2,3): d_ap = 2.56; negatives 0: 0.16, 1: 0.36, none farther -> farthest = 1
        [2, 3, 1],
        # (2,4): d_ap = 12.96; none farther -> farthest = 1
        [2, 4, 1],
        # (3,2): d_ap = 2.56; negatives 0: 4, 1: 1 -> 0
        [3, 2, 0],
        # (3,4): d_ap = 4; negatives 0: 4 (tie), 1: 1, none farther -> farthest = 0
        [3, 4, 0],
        # (4,2): d_ap = 12.96; negatives 0: 16, 1: 9 -> 0
        [4, 2, 0],
        # (4,3): d_ap = 4; negatives 0: 16, 1: 9, both farther -> closest = 1
        [4, 3, 1],
    ]
    t = semi_hard_triplets(h, labels)
    assert t.dtype == torch.int64
    assert t.tolist() == expected


def test_semi_hard_fallback_never_returns_same_class():
    # class 0's negatives are all closer than its positive: its pairs use the fallback
    #   h: 0.0 (0), 3.0 (0), 1.0 (1), 1.2 (1)
    #   (0,1): d_ap = 9; negatives 2: 1, 3: 1.44 -> farthest = 3
    #   (1,0): d_ap = 9; negatives 2: 4, 3: 3.24 -> farthest = 2
    #   (2,3): d_ap = 0.04; negatives 0: 1, 1: 4 -> semi-hard closest farther = 0
    #   (3,2): d_ap = 0.04; negatives 0: 1.44, 1: 3.24 -> 0
    h = torch.tensor([[0.0], [3.0], [1.0], [1.2]])
    labels = torch.tensor([0, 0, 1, 1])
    assert semi_hard_triplets(h, labels).tolist() == [[0, 1, 3], [1, 0, 2], [2, 3, 0], [3, 2, 0]]
