"""Sizing and training of binary IVF indexes."""

from __future__ import annotations

import math

import faiss
import numpy as np

from dahash_index.errors import check_int
from dahash_index.indexes.binary import as_ivf, check_codes

# FAISS k-means warns below 39 training points per centroid (centroids are poorly placed) and
# subsamples above 256 per centroid (faiss/Clustering.h defaults).
MIN_POINTS_PER_CENTROID = 39
MAX_POINTS_PER_CENTROID = 256

# Measured by `python benchmarks/ivf_recall.py --rows R [--nlist N]` (seed 0; 3000 centres,
# intra-class distances Binomial(64, 0.08); 200 one-query calls; 2-core Xeon @ 2.5 GHz shared
# with other jobs, FAISS 1.15.1, search on 1 thread, training on 2):
#   R = 10 M, nlist 4096 (training 87 s on 262,144 codes, adding 154 s): nprobe 16 gives
#     recall@50 1.000 at 0.58 ms/query against flat's 21.7 ms (0.027 of it); nprobe 1: 0.986.
#   R = 1 M, nlist 4096 (training 91 s, adding 17 s): nprobe 16: recall@50 1.000 at 0.156 ms
#     against flat's 2.65 ms (0.059); nprobe 1: 0.991.
#   R = 1 M, nlist 1024, fewer lists than classes (training 4 s): nprobe 16: recall@50 0.967
#     (0.989 counting hits tied with flat's 50th), 0.46 ms (0.17 of flat: at 1 M rows a query's
#     fixed costs dominate); nprobe 8: 0.932.
# Training time grows with nlist * training codes (k-means on floats), so nlist is capped at
# 4096: 4 * sqrt(n) below 1.05 M codes, 4096 above (at 100 M codes, 24 k codes per list, and
# nprobe 16 scans 0.4 % of them).
MAX_DEFAULT_NLIST = 4096

# Training codes per list: FAISS's binary k-means runs on the codes expanded to float32, on the
# CPU; see the measured training times in the comment of default_nlist.
TRAIN_POINTS_PER_LIST = 64


def default_nlist(n_codes: int) -> int:
    """A number of inverted lists for ``n_codes`` codes: ``round(4 * sqrt(n))``, at most
    ``MAX_DEFAULT_NLIST`` (4096), clamped to ``[1, n // 39]``.

    4 * sqrt(n) is the low end of FAISS's guideline (4 to 16 * sqrt(n)); the cap bounds the
    training time on a CPU (see the measured figures above); the lower clamp keeps at least 39
    training points per centroid when all codes are used for training, so that
    ``train_ivf(index, codes)`` accepts them whenever ``n_codes >= 39``.
    """
    check_int("n_codes", n_codes, 0)
    nlist = min(round(4 * math.sqrt(n_codes)), MAX_DEFAULT_NLIST)
    return max(1, min(nlist, n_codes // MIN_POINTS_PER_CENTROID))


# recall@50 >= 0.95 at <= 1/10 of flat's time at 1 M and 10 M codes with default_nlist (figures
# above); with fewer lists than classes it still gives 0.967.
DEFAULT_NPROBE = 16


def default_nprobe(nlist: int) -> int:
    """The number of lists searched per query when none is given: ``min(16, nlist)``
    (``hamming_topk``/``hamming_radius`` with nprobe None, hence ``SceneIndex`` too)."""
    return max(1, min(int(nlist), DEFAULT_NPROBE))


def train_ivf(
    index: faiss.IndexBinary,
    codes: np.ndarray,
    *,
    seed: int = 0,
    max_per_list: int = TRAIN_POINTS_PER_LIST,
) -> None:
    """Train an empty binary IVF index's coarse quantizer on ``codes`` (uint8, (n, K/8)).

    Needs at least ``39 * nlist`` codes (else ValueError). At most ``max_per_list * nlist`` of
    them are used (at least 39 per list), drawn without replacement with ``seed``: FAISS would
    subsample to 256 per list anyway, but only after expanding every code to K float32s, which
    for millions of codes costs gigabytes; and binary k-means runs on those floats, so its time
    grows with the sample (see ``TRAIN_POINTS_PER_LIST``).
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
    per_list = min(max(int(max_per_list), MIN_POINTS_PER_CENTROID), MAX_POINTS_PER_CENTROID)
    cap = per_list * nlist
    if n > cap:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))
        codes = codes[rows]
    ivf.train(codes)
