"""Scene -> packed binary code: the frozen backbone followed by a checkpoint's hash network.

Shared by the indexer and the query API so both compute codes the same way.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from dahash_index.backbones import load_backbone
from dahash_index.checkpoint import Checkpoint, load_checkpoint
from dahash_index.codes import hash_codes
from dahash_index.orientations import ORIENTATIONS, orient


class SceneEncoder:
    """Batched encoding: ``encode(images)`` with images (N, 3, 299, 299) float32 in [0, 255]
    -> codes (N, K/8) uint8. The backbone is the one the checkpoint was trained on (checked
    by weights checksum)."""

    def __init__(self, checkpoint: Checkpoint, device: str | None = None) -> None:
        self.checkpoint = checkpoint
        self.bits = checkpoint.net_config.bits
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.backbone = load_backbone(checkpoint.backbone).to(self.device)
        checkpoint.check_backbone(self.backbone.spec)
        self.net = checkpoint.build_net().to(self.device)
        # One forward at a time: torch modules are safe to share, but interleaving two large
        # batches on a small machine only thrashes the caches.
        self._lock = threading.Lock()

    @classmethod
    def from_path(cls, path: str | Path, device: str | None = None) -> SceneEncoder:
        return cls(load_checkpoint(path), device)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) floats in [0, 255] -> (N, 2048) backbone features; for a model that
        codes the mean of a scene's 8 orientations, that mean (8 backbone passes)."""
        images = images.to(self.device)
        with self._lock:
            if not self.checkpoint.net_config.average_orientations:
                return self.backbone(images)
            total = self.backbone(images)
            for k in ORIENTATIONS[1:]:
                total += self.backbone(orient(images, k))
            return total / len(ORIENTATIONS)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
        """(N, 3, H, W) floats in [0, 255] -> (N, K/8) uint8 packed codes, ``batch_size``
        images per forward (the backbone's activations grow with the batch)."""
        codes = [np.zeros((0, self.bits // 8), dtype=np.uint8)]
        for chunk in images.split(batch_size):
            features = self.features(chunk)
            with self._lock:
                codes.append(hash_codes(self.net(features)))
        return np.concatenate(codes)
