"""Sizing and training of binary IVF indexes."""

from __future__ import annotations

import math

import faiss
import numpy as np

from indexes.binary import as_ivf, check_codes

# FAISS k-means warns below 39 training points per centroid (centroids are poorly placed) and
# subsamples above 256 per centroid (faiss/Clustering.h defaults).
MIN_POINTS_PER_CENTROID = 39
MAX_POINTS_PER_CENTROID = 256


def default_nlist(n_codes: int) -> int:
    """A number of inverted lists for ``n_codes`` codes: ``round(4 * sqrt(n))`` clamped to
    ``[1, n // 39]``.

    4 * sqrt(n) is the low end of FAISS's guideline (4 to 16 * sqrt(n)); the upper clamp keeps at
    least 39 training points per centroid when all codes are used for training, so that
    ``train_ivf(index, codes)`` accepts them whenever ``n_codes >= 39``.
    """
    if isinstance(n_codes, bool) or not isinstance(n_codes, (int, np.integer)) or n_codes < 0:
        raise ValueError(f"n_codes must be a non-negative integer, got {n_codes!r}")
    nlist = round(4 * math.sqrt(n_codes))
    return max(1, min(nlist, n_codes // MIN_POINTS_PER_CENTROID))


def train_ivf(index: faiss.IndexBinary, codes: np.ndarray, *, seed: int = 0) -> None:
    """Train an empty binary IVF index's coarse quantizer on ``codes`` (uint8, (n, K/8)).

    Needs at least ``39 * nlist`` codes (else ValueError). At most ``256 * nlist`` of them are
    used, drawn without replacement with ``seed``: FAISS would subsample to that many anyway, but
    only after expanding every code to K float32s, which for millions of codes costs gigabytes.
    """
    ivf = as_ivf(index)
    if ivf is None:
        raise ValueError(f"train_ivf needs an IndexBinaryIVF, got {type(index)}")
    if ivf.ntotal:
        raise ValueError("cannot retrain an IVF index that already holds codes")
    codes = check_codes(codes, ivf.code_size)
    n, nlist = len(codes), ivf.nlist
    if n < MIN_POINTS_PER_CENTROID * nlist:
        raise ValueError(
            f"{n} training codes are too few for nlist={nlist}: need at least "
            f"{MIN_POINTS_PER_CENTROID * nlist} ({MIN_POINTS_PER_CENTROID} per list); "
            f"use nlist={default_nlist(n)} (default_nlist) or a flat index"
        )
    cap = MAX_POINTS_PER_CENTROID * nlist
    if n > cap:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))
        codes = codes[rows]
    ivf.train(codes)
