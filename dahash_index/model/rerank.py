"""The re-rank vector: a compact float vector per scene beside its K-bit code (METHOD.md §7).

Hamming distance over K bits takes K + 1 values, so the scenes of a class tie by the dozen.
The index keeps, for every row, ``RerankProjection(features)``: the backbone features of the
scene, centred and projected to ``DIM`` dimensions, scaled to unit length and stored as int8
(``store.vectors``: 128 bytes a row). Two scenes' vectors give a score in [-1, 1] (their dot
product, a cosine) that ranks the rows of a shortlist: inside ties of Hamming distance, or
the whole shortlist (``query --rerank``).

The projection is fitted without labels (``fit_invariant``): the directions along which
scenes differ most from one another relative to how much one scene moves under the
augmentations it is given (its flips and rotations), so that a rotated or re-encoded copy of
a scene stays next to it. ``train`` fits it on its archive, ``adapt`` on the archive to be
indexed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# 128 dimensions, one int8 each on disk. Measured on UC Merced (10 classes held out as an
# unseen archive, 3 splits): the vectors alone rank it at mAP@20 0.822 / 0.892 / 0.853 with
# 64 dimensions and 0.838 / 0.901 / 0.871 with 128, whose int8 copy ranks as well
# (``benchmarks/rerank_dims.py``, ``rerank-dims.json``). Models trained before keep their 64.
DIM = 128
DTYPE = np.float16  # of the vectors in memory, from the projection to the store
# How hits are re-ranked (``rerank_order``); this module imports no torch at the top, as the
# --server client offers the choice too.
RERANKS = ("none", "ties", "near", "full")
DEFAULT_RERANK = "near"
DEFAULT_SHORTLIST = 500  # rows re-ranked by ``full`` and searched for near copies by ``near``
# ``near`` puts first the rows of the shortlist whose score reaches the threshold: a changed
# copy of the query (re-encoded, cropped, brightened) lands a few bits from its original,
# behind the whole group of its class at a smaller distance, but scores high with it. The
# threshold is the lowest (of 0.6, 0.7, 0.75, 0.8, 0.85, 0.9) at which 99 % of UC Merced's
# training pairs scoring that much share a class, so that putting those rows first costs
# class retrieval nothing (``benchmarks/rerank_blend.py``). With 128 dimensions: 0.7 (99.1 %;
# 96.4 % at 0.6); 95 % of the test part's JPEG-50 copies score 0.83 or more with their
# original. Fewer dimensions score higher: 0.8 for the 64 of models trained before 128
# (99.4 %), which ``adapt``'s 64 keep.
NEAR_SCORES = {128: 0.7, 64: 0.8}
NEAR_SCORE = NEAR_SCORES[DIM]
# The views ``train`` fits the projection on: each scene, its mirror image and its 90°
# rotation (``model.orientations``: 4 and 1). Measured on UC Merced (10 classes held out as
# an unseen archive): the rotation lifts a 90°-rotated copy's rank 1 from 61 % to 91 % and
# keeps the projection's ranking of unseen classes at float cosine's (docs/results-transfer.md).
RERANK_ORIENTATIONS = (4, 1)
# A view that is no orientation: the scene re-encoded as JPEG at a quality drawn per scene
# from RECOMPRESS_QUALITIES (``train.features``), as archives are re-encoded on their way to
# users. It lifts a JPEG-50 copy's rank 1 by the vectors from 90 % to 97 % and leaves the
# unseen classes' ranking as it was (``benchmarks/rerank_choices.py``).
RECOMPRESSED = "jpeg"
RECOMPRESS_QUALITIES = (30, 90)  # inclusive
RERANK_VIEWS = (*RERANK_ORIENTATIONS, RECOMPRESSED)
TRAIN_SHRINKAGE = 1.0  # ``fit_invariant``'s, for a projection fitted on the training archive


@dataclass(frozen=True)
class RerankProjection:
    """v(x) = normalise(W^T (x - mean)): features (N, C) -> unit vectors (N, D).

    mean: (C,) float32; weights: (C, D) float32; kind: how it was fitted (for ``info``)."""

    mean: np.ndarray
    weights: np.ndarray
    kind: str = "invariant"

    @property
    def dim(self) -> int:
        return self.weights.shape[1]

    def __call__(self, features) -> np.ndarray:
        """Features (N, C) float, numpy or a torch tensor on any device -> vectors (N, D)
        float16, unit length."""
        if not isinstance(features, np.ndarray):  # a torch tensor
            features = features.detach().float().cpu().numpy()
        v = (np.asarray(features, np.float32) - self.mean) @ self.weights
        return unit_rows(v).astype(DTYPE)

    def to_payload(self) -> dict:
        """What a checkpoint stores (tensors and plain types, for ``weights_only`` loading)."""
        import torch

        return {"mean": torch.from_numpy(np.ascontiguousarray(self.mean, np.float32)),
                "weights": torch.from_numpy(np.ascontiguousarray(self.weights, np.float32)),
                "kind": self.kind}

    @classmethod
    def from_payload(cls, payload: Mapping) -> RerankProjection:
        return cls(payload["mean"].numpy().astype(np.float32),
                   payload["weights"].numpy().astype(np.float32), str(payload["kind"]))


def near_score_of(dim: int) -> float:
    """The ``near`` threshold for re-rank vectors of ``dim`` dimensions (``NEAR_SCORES``;
    ``NEAR_SCORE`` for a dimension not listed)."""
    return NEAR_SCORES.get(int(dim), NEAR_SCORE)


def unit_rows(v: np.ndarray) -> np.ndarray:
    """Each row of ``v`` (n, D) scaled to unit length (a zero row stays zero)."""
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norm, 1e-12)


def fit_invariant(views: Sequence[np.ndarray], dim: int = DIM, shrinkage: float = 1e-3,
                  kind: str = "invariant") -> RerankProjection:
    """Fit the projection on ``views``: the features (n, C) of the same n scenes under each of
    a few augmentations (the scene itself first; e.g. its mirror image, its rotations).

    The directions w maximise  w^T S_b w / w^T S_w w  (a generalised eigenproblem): S_b the
    covariance of the scenes' mean features, S_w the covariance of each view around its
    scene's mean (how augmentations move a scene), shrunk towards a multiple of the identity
    by ``shrinkage`` so that it is well conditioned. Each direction is scaled to unit
    within-scene variance (whitened). No label is used."""
    x = np.stack([np.asarray(v, np.float64) for v in views])  # (a, n, C)
    if x.ndim != 3 or len(x) < 2:
        raise ValueError("fit_invariant needs at least two views of the same scenes")
    if x.shape[1] < 2:
        raise ValueError("fit_invariant needs at least two scenes")
    per_scene = x.mean(0)
    mean = per_scene.mean(0)
    between = per_scene - mean
    s_b = between.T @ between / len(between)
    within = (x - per_scene).reshape(-1, x.shape[2])
    s_w = within.T @ within / len(within)
    s_w += shrinkage * np.trace(s_w) / len(s_w) * np.eye(len(s_w)) + 1e-12 * np.eye(len(s_w))
    # S_w = L L^T; the eigenvectors of L^-1 S_b L^-T, mapped back by L^-T.
    chol = np.linalg.cholesky(s_w)
    inv = np.linalg.inv(chol)
    values, vectors = np.linalg.eigh(inv @ s_b @ inv.T)
    top = np.argsort(values)[::-1][:dim]
    weights = inv.T @ vectors[:, top]
    return RerankProjection(mean.astype(np.float32), weights.astype(np.float32), kind)


def fit_pca(features: np.ndarray, dim: int = DIM, kind: str = "pca") -> RerankProjection:
    """The top ``dim`` principal directions of ``features`` (n, C), each scaled to unit
    variance (whitened)."""
    x = np.asarray(features, np.float64)
    mean = x.mean(0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    scale = singular[:dim] / np.sqrt(len(x))
    weights = vt[:dim].T / np.maximum(scale, 1e-12)
    return RerankProjection(mean.astype(np.float32), weights.astype(np.float32), kind)


def fit_projection(views: Sequence[np.ndarray], dim: int = DIM,
                   shrinkage: float = TRAIN_SHRINKAGE) -> RerankProjection:
    """The projection ``train`` fits: ``fit_invariant`` on the views of the same scenes, or a
    whitened PCA (``fit_pca``) when there is only one view."""
    distinct = [v for i, v in enumerate(views) if i == 0 or not np.array_equal(v, views[0])]
    if len(distinct) > 1:
        return fit_invariant(distinct, dim, shrinkage)
    return fit_pca(distinct[0], dim)


def rerank_order(groups: np.ndarray, distance: np.ndarray, ids: np.ndarray,
                 score: np.ndarray | None, mode: str, near_score: float = NEAR_SCORE
                 ) -> np.ndarray:
    """The order of hits (int (h,) each: their query, Hamming distance, row id and re-rank
    score) by query, then as ``mode`` says: "none" by (distance, id); "ties" by (distance,
    -score, id), so that only rows of equal distance change places; "near": the hits scoring
    ``near_score`` or more by (-score, distance, id), then the others as "ties" orders them;
    "full" by (-score, distance, id). The one definition of the modes, for the index's
    queries and for ``eval``."""
    if mode not in RERANKS:
        raise ValueError(f"rerank must be one of {', '.join(RERANKS)}, got {mode!r}")
    if mode == "none" or score is None:
        return lexsort_ints((ids, distance, groups))
    worse = descending_key(score)
    if mode == "near":
        near = np.asarray(score) >= near_score
        if not in_search_order(groups, distance, ids):
            return np.lexsort((ids, worse, distance, np.where(near, worse, 0), ~near, groups))
        # One stable sort of hits in search order, whose position breaks ties by id: a near
        # hit's key is (score, distance), another's (distance, score), each packed in one int.
        d = np.asarray(distance).astype(np.int64)
        width = int(d.max()).bit_length() if len(d) else 0
        return lexsort_ints((np.where(near, (worse << width) | d, (d << 32) | worse), ~near,
                             groups))
    if in_search_order(groups, distance, ids):  # as a search gives them: one stable sort is enough
        return lexsort_ints((worse, distance, groups) if mode == "ties" else (worse, groups))
    if mode == "ties":
        return np.lexsort((ids, worse, distance, groups))
    return np.lexsort((ids, distance, worse, groups))


def lexsort_ints(keys: Sequence[np.ndarray]) -> np.ndarray:
    """``np.lexsort(keys)`` (the last key primary) for non-negative integer keys (h,): one
    stable argsort of the keys packed into one int64 when their bit widths add up to 63 at
    most (a pass per key is the cost of a lexsort), else ``np.lexsort``."""
    keys = [np.asarray(k).astype(np.int64, copy=False) for k in keys]
    if len(keys[0]) == 0:
        return np.zeros(0, np.int64)
    widths = [int(k.max()).bit_length() for k in keys]
    if sum(widths) > 63 or min(int(k.min()) for k in keys) < 0:
        return np.lexsort(keys)
    packed = np.zeros(len(keys[0]), np.int64)
    shift = 0
    for key, width in zip(keys, widths, strict=True):
        packed |= key << shift
        shift += width
    return np.argsort(packed, kind="stable")


def descending_key(score: np.ndarray) -> np.ndarray:
    """float32 (h,) -> int64 (h,) in [0, 2**32): the larger the score, the smaller the key
    (equal scores, 0.0 and -0.0 included, equal keys): sorts as ``-score`` does."""
    bits = (np.asarray(score, np.float32) + np.float32(0.0)).view(np.uint32).astype(np.int64)
    ascending = np.where(bits >= 1 << 31, (1 << 32) - 1 - bits, bits | (1 << 31))
    return (1 << 32) - 1 - ascending


def in_search_order(groups: np.ndarray, distance: np.ndarray, ids: np.ndarray) -> bool:
    """Whether the hits (int (h,) each) are sorted by (group, distance, id), as a search
    returns them."""
    g, d, i = (np.diff(np.asarray(a, np.int64)) for a in (groups, distance, ids))
    return bool(np.all((g > 0) | ((g == 0) & ((d > 0) | ((d == 0) & (i >= 0))))))
