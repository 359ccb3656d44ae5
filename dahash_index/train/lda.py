"""A floating-point reference: frozen features projected by LDA, ranked by cosine similarity.

Not a hashing method. It shows how much class information the frozen features already hold,
so binary codes below it are leaving information unused.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import eigh


def fit_lda(features: np.ndarray, labels: np.ndarray, shrinkage: float = 1e-3) -> np.ndarray:
    """Fisher LDA projection: features (N, C) float, labels (N,) -> W (C, n_classes - 1) float64.

    Solves S_b w = lambda S_w w. The within-class scatter is singular when C > N, so it is
    shrunk toward a multiple of the identity: S_w + shrinkage * trace(S_w) / C * I.
    """
    x = np.asarray(features, dtype=np.float64)
    classes = np.unique(labels)
    mean = x.mean(axis=0)
    within = np.zeros((x.shape[1], x.shape[1]))
    between = np.zeros_like(within)
    for c in classes:
        xc = x[labels == c]
        centred = xc - xc.mean(axis=0)
        within += centred.T @ centred
        offset = (xc.mean(axis=0) - mean)[:, None]
        between += len(xc) * offset @ offset.T
    within += shrinkage * np.trace(within) / x.shape[1] * np.eye(x.shape[1])
    n_dims = len(classes) - 1
    _, vectors = eigh(between, within, subset_by_index=[x.shape[1] - n_dims, x.shape[1] - 1])
    return vectors[:, ::-1]


def cosine_ranking(queries: np.ndarray, database: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank the database for each query by cosine similarity, descending.

    queries (q, d), database (n, d) float -> (distances float64 (q, n) = 1 - cosine,
    ids int64 (q, n)), ties in database order.
    """
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    dn = database / np.linalg.norm(database, axis=1, keepdims=True)
    distance = 1.0 - qn @ dn.T
    order = np.argsort(distance, axis=1, kind="stable")
    return np.take_along_axis(distance, order, axis=1), order.astype(np.int64)
