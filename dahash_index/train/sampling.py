"""Triplet sampling (METHOD.md section 4).

- ``RandomTripletSampler``: MiLAN's scheme. Each step draws a positive class and a negative
  class, M anchors and M positives from the first, M negatives from the second.
- ``ClassBalancedSampler`` + ``batch_all_triplets`` / ``semi_hard_triplets``: online mining
  over batches of P classes x S images.

Samplers return indices into the training set; miners return index triplets into a batch.
"""

from __future__ import annotations

import numpy as np
import torch


class RandomTripletSampler:
    """labels: (N,) int -> ``sample()`` gives (anchors, positives, negatives), each (M,) int64."""

    def __init__(self, labels: np.ndarray, triplets: int, seed: int) -> None:
        self.labels = np.asarray(labels)
        self.classes = np.unique(self.labels)
        if len(self.classes) < 2:
            raise ValueError("triplet sampling needs at least two classes")
        self.members = {c: np.flatnonzero(self.labels == c) for c in self.classes}
        if any(len(m) < 2 for m in self.members.values()):
            raise ValueError("triplet sampling needs at least two images in every class")
        self.triplets = triplets
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos_class, neg_class = self.rng.choice(self.classes, size=2, replace=False)
        pos, neg = self.members[pos_class], self.members[neg_class]
        m = self.triplets
        if len(pos) >= 2 * m:
            # M anchors and M distinct positives, no image used twice.
            chosen = self.rng.choice(pos, size=2 * m, replace=False)
            anchors, positives = chosen[:m], chosen[m:]
        else:
            # A small class: anchors repeat, but each positive differs from its anchor.
            a = self.rng.integers(0, len(pos), size=m)
            p = (a + self.rng.integers(1, len(pos), size=m)) % len(pos)
            anchors, positives = pos[a], pos[p]
        negatives = self.rng.choice(neg, size=m, replace=len(neg) < m)
        return anchors, positives, negatives


class ClassBalancedSampler:
    """Batches of P classes x S images: ``sample()`` gives (P*S,) int64 training indices."""

    def __init__(self, labels: np.ndarray, classes_per_batch: int, per_class: int, seed: int):
        self.labels = np.asarray(labels)
        self.classes = np.unique(self.labels)
        if len(self.classes) < 2:
            raise ValueError("triplet mining needs at least two classes")
        self.members = {c: np.flatnonzero(self.labels == c) for c in self.classes}
        self.p = min(classes_per_batch, len(self.classes))
        self.s = per_class
        self.rng = np.random.default_rng(seed)

    def sample(self) -> np.ndarray:
        chosen = self.rng.choice(self.classes, size=self.p, replace=False)
        return np.concatenate([
            self.rng.choice(self.members[c], size=self.s, replace=len(self.members[c]) < self.s)
            for c in chosen
        ])


def _valid_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B,) labels -> (B, B, B) bool, True where (a, p, n) is a valid triplet."""
    same = labels[:, None] == labels[None, :]
    distinct = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & distinct
    return positive[:, :, None] & ~same[:, None, :]


def batch_all_triplets(labels: torch.Tensor) -> torch.Tensor:
    """Every valid (anchor, positive, negative) of a batch: (T, 3) int64 batch indices."""
    return torch.nonzero(_valid_mask(labels))


def semi_hard_triplets(h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One negative per (anchor, positive): the closest n with d(a, n) > d(a, p); when no
    negative is farther than the positive, the farthest negative (an easy one, FaceNet-style
    fallback). h: (B, K) outputs, labels: (B,) -> (T, 3) int64 batch indices.
    """
    with torch.no_grad():
        d = torch.cdist(h, h).pow(2)
        same = labels[:, None] == labels[None, :]
        pairs = torch.nonzero(same & ~torch.eye(len(labels), dtype=torch.bool, device=h.device))
        a, p = pairs[:, 0], pairs[:, 1]
        d_an = d[a].masked_fill(same[a], float("inf"))  # (T, B), positives excluded
        farther = (d_an > d[a, p][:, None]) & ~same[a]  # the masked +inf must not count
        semi = torch.where(farther, d_an, torch.full_like(d_an, float("inf"))).argmin(dim=1)
        easy = d_an.masked_fill(same[a], float("-inf")).argmax(dim=1)
        n = torch.where(farther.any(dim=1), semi, easy)
    return torch.stack([a, p, n], dim=1)
