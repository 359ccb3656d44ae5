"""Binary codes fitted without labels: the baselines of the transfer protocol (METHOD.md §7).

- PCA-sign: centre the features, project them on their top K principal directions, keep
  the signs.
- ITQ (Gong & Lazebnik, CVPR 2011): the same projection, then the orthogonal rotation R
  that minimises the quantisation error ||B - V R||^2, by 50 alternations of B = sign(V R)
  and R from the SVD of B^T V.

Both give a ``LinearCodes``: codes = sign((x - mean) W), W (C, K) the projection times the
rotation; ``adapt`` builds on the same pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dahash_index.errors import check_bits
from dahash_index.model.codes import pack_codes


@dataclass(frozen=True)
class LinearCodes:
    """codes(x) = pack(sign((x - mean) W) > 0): mean (C,), weights (C, K)."""

    mean: np.ndarray
    weights: np.ndarray

    def codes(self, features: np.ndarray) -> np.ndarray:
        """Features (n, C) -> packed codes (n, K/8) uint8."""
        return pack_codes((np.asarray(features, np.float64) - self.mean) @ self.weights > 0)


def principal_directions(features: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean (C,), the top ``bits`` principal directions (C, bits)) of features (n, C)."""
    check_bits(bits)
    x = np.asarray(features, np.float64)
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    if len(vt) < bits:
        raise ValueError(f"{len(x)} scenes of {x.shape[1]} features give fewer than {bits} "
                         "principal directions")
    return mean, vt[:bits].T


def fit_pca_sign(features: np.ndarray, bits: int) -> LinearCodes:
    mean, directions = principal_directions(features, bits)
    return LinearCodes(mean, directions)


def itq_rotation(projected: np.ndarray, iterations: int = 50, seed: int = 0) -> np.ndarray:
    """The rotation R (K, K) of ITQ for centred projections V (n, K): it starts from a seeded
    random orthogonal matrix and alternates B = sign(V R), R = (U W^T)^T where
    U S W^T = SVD(B^T V)."""
    rng = np.random.default_rng(seed)
    k = projected.shape[1]
    rotation, _ = np.linalg.qr(rng.standard_normal((k, k)))
    for _ in range(iterations):
        b = np.where(projected @ rotation >= 0, 1.0, -1.0)
        u, _, wt = np.linalg.svd(b.T @ projected)
        rotation = (u @ wt).T
    return rotation


def fit_itq(features: np.ndarray, bits: int, iterations: int = 50, seed: int = 0
            ) -> LinearCodes:
    mean, directions = principal_directions(features, bits)
    projected = (np.asarray(features, np.float64) - mean) @ directions
    return LinearCodes(mean, directions @ itq_rotation(projected, iterations, seed))
