"""Fitting a model to an archive without its labels: ``dahash-index adapt`` (METHOD.md §7).

A model trained on archive A codes another archive B poorly: its hash head learned A's
classes. ``adapt`` keeps the model's frozen backbone and K, and fits on B's scenes alone
(never a folder name or a label):

1. the re-rank projection (``model.rerank.fit_invariant``): the directions along which B's
   scenes differ most relative to how much a scene moves when flipped or rotated (each
   scene, its mirror image and its 90° rotation are the views), whitened;
2. the codes: ITQ (Gong & Lazebnik 2011) on the first K of those directions: the rotation R
   that minimises the quantisation error. The adapted model codes a scene as
   sign(R^T W^T (x - mean)): a linear hash head (head "linear") on the same backbone, so
   ``build``, ``query`` and ``serve`` take it like any model, and its re-rank vectors are
   the projection fitted on B.

Scenes are taken in the order of their bytes' SHA-256, so renaming B's folders or files
gives the same model, bit for bit. The choices (the flip and the rotation as augmentations,
shrinkage 0.3, ITQ on the invariant projection) were measured on UC Merced, with 10 of its
classes held out as the archive B (docs/results-transfer.md); aid-sample is only ever
scored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from dahash_index.model.codes import pack_codes
from dahash_index.model.network import HashNet, NetConfig
from dahash_index.model.rerank import (
    RERANK_ORIENTATIONS,
    RerankProjection,
    fit_invariant,
)
from dahash_index.scenes.scene import SCENE_SUFFIXES
from dahash_index.train.data import DatasetError, ImageFolder
from dahash_index.train.unsupervised import itq_rotation

SHRINKAGE = 0.3  # of the within-scene covariance (``fit_invariant``): measured, see above
# The re-rank vectors' dimension. Unlike ``train``'s projection (``model.rerank.DIM``), this
# one, fitted on the archive itself, ranks its unseen classes no better with 128: mAP@20
# 0.902 / 0.945 / 0.917 with 64 and 0.901 / 0.941 / 0.916 with 128, mAP@all 0.01 lower
# (UC Merced, 10 classes held out as the archive, 3 splits: ``benchmarks/rerank_dims.py``).
ADAPT_DIM = 64
# The views besides the scene itself: its mirror image and its 90° rotation.
ADAPT_ORIENTATIONS = RERANK_ORIENTATIONS


@dataclass(frozen=True)
class AdaptedModel:
    """What ``adapt_model`` fits: the re-rank projection and the linear code of B."""

    rerank: RerankProjection
    mean: np.ndarray  # (C,) float32
    weights: np.ndarray  # (C, K) float32: codes are (x - mean) @ weights > 0

    def codes(self, features: np.ndarray) -> np.ndarray:
        """Features (n, C) -> packed codes (n, K/8) uint8."""
        return pack_codes((np.asarray(features, np.float32) - self.mean) @ self.weights > 0)

    def net(self, config: NetConfig) -> HashNet:
        """The hash network that gives these codes: ``config`` (the original model's K and
        feature width) with a linear head, no attention and no standardisation."""
        net = HashNet(replace(config, head="linear", attention="none", standardize=False,
                              dropout=0.0, input_dropout=0.0, average_orientations=False))
        weight = torch.from_numpy(self.weights.T.copy())
        with torch.no_grad():
            net.head[0].weight.copy_(weight)
            net.head[0].bias.copy_(-(weight @ torch.from_numpy(self.mean)))
        return net.eval()


def adapt_model(bits: int, views: list[np.ndarray], seed: int = 0) -> AdaptedModel:
    """Fit an ``AdaptedModel`` on ``views``: B's features (n, C), then the same scenes'
    features under each augmentation of ``ADAPT_ORIENTATIONS``. seed: ITQ's start."""
    dim = max(bits, ADAPT_DIM)
    projection = fit_invariant(views, dim, SHRINKAGE, kind="invariant (adapt)")
    projected = (np.asarray(views[0], np.float64) - projection.mean) @ projection.weights[:, :bits]
    centre = projected.mean(0)
    rotation = itq_rotation(projected - centre, seed=seed)
    weights = projection.weights[:, :bits].astype(np.float64) @ rotation
    # (x - mean) W R - centre R = (x - mean - m') W R with m' solving m' W R = centre R: fold
    # the centre into the mean through the least-squares pre-image.
    shift = np.linalg.lstsq(projection.weights[:, :bits].T.astype(np.float64), centre,
                            rcond=None)[0]
    rerank = RerankProjection(projection.mean, projection.weights[:, :ADAPT_DIM],
                              projection.kind)
    return AdaptedModel(rerank, (projection.mean + shift).astype(np.float32),
                        weights.astype(np.float32))


def archive_scenes(root: str | Path) -> ImageFolder:
    """Every scene file under ``root`` (any depth), in the order of the SHA-256 of its bytes:
    what ``adapt`` reads of an archive (no folder name; one pseudo-class)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: archive folder not found")
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SCENE_SUFFIXES
             and not p.name.startswith(".")]
    if len(files) < 2:
        raise DatasetError(f"{root}: adapt needs at least two scene files {SCENE_SUFFIXES}")
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    ordered = sorted(files, key=lambda p: (digests[p], p.as_posix()))
    paths = [p.relative_to(root).as_posix() for p in ordered]
    return ImageFolder(root, paths, np.zeros(len(paths), np.int64), ["archive"])
