"""Scene -> packed binary code: the frozen backbone followed by a checkpoint's hash network.

One path for every caller (the build, the query API, ``train``/``eval``'s feature
extraction): (H, W, 3) uint8 images are uploaded to the device in one copy, resized there
(``network_input``) and run through the backbone in the encoder's precision (``precision``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from dahash_index.model.backbones import InceptionBackbone, load_backbone
from dahash_index.model.checkpoint import Checkpoint, load_checkpoint
from dahash_index.model.codes import hash_codes
from dahash_index.model.network_input import Image, network_input, upload
from dahash_index.model.orientations import ORIENTATIONS, orient
from dahash_index.model.precision import check_precision, default_precision, precision_scope

T = TypeVar("T")

CPU_BATCH = 32
# Inception V3 at batch 256 holds a few GiB of activations: enough to fill an H100/H200,
# within any GPU of 16 GiB or more. Two batches are on the device at a time (one computing,
# one arriving), whatever the archive's size.
GPU_BATCH = 256
SMALL_GPU_BATCH = 64
SMALL_GPU_BYTES = 16 * 2**30


def default_batch_size(device: torch.device) -> int:
    """Scenes per forward when none is asked for: 32 on a CPU (bigger batches gain nothing
    there), 256 on a GPU of 16 GiB or more, 64 on a smaller one."""
    if device.type != "cuda":
        return CPU_BATCH
    memory = torch.cuda.get_device_properties(device).total_memory
    return GPU_BATCH if memory >= SMALL_GPU_BYTES else SMALL_GPU_BATCH


def check_device(name: str | None) -> torch.device:
    """The device called ``name`` ("cpu", "cuda", "cuda:1", ...; None: the GPU when there is
    one); ValueError (one line) for a name torch does not know or a GPU this machine lacks."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not (torch.cuda.is_available() and
                                      (device.index or 0) < torch.cuda.device_count()):
        raise ValueError(f"device {name}: no such CUDA device on this machine "
                         f"({torch.cuda.device_count()} GPU(s))")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {name!r}")
    return device


@torch.no_grad()
def backbone_features(backbone: InceptionBackbone, x: torch.Tensor, precision: str,
                      orientations: Sequence[int] = (0,)) -> torch.Tensor:
    """x (N, 3, 299, 299) float32 in [0, 255] on the backbone's device -> (N, 2048) float32:
    the mean of the backbone's features over ``orientations`` of each image."""
    with precision_scope(x.device, precision):
        total = backbone(orient(x, orientations[0]) if orientations[0] else x)
        for k in orientations[1:]:
            total += backbone(orient(x, k))
    return total / len(orientations) if len(orientations) > 1 else total


class BackboneEncoder:
    """(H, W, 3) uint8 scenes -> pooled backbone features, on a device in a precision: the
    first half of every encoding (``SceneEncoder`` for build and query; ``train.features``
    for train and eval). Images go up in one copy (on their own CUDA stream, overlapping
    the batch before), are resized there and run through the frozen backbone.

    device: "cpu", "cuda", ... (default: a GPU when there is one). precision: "fp32", "tf32"
    or "bf16" (default: ``precision.default_precision`` of the device).
    """

    def __init__(self, backbone: InceptionBackbone, device: str | None = None,
                 precision: str | None = None) -> None:
        self.device = check_device(device)
        self.precision = check_precision(precision or default_precision(self.device))
        self.backbone = backbone.to(self.device)
        self.spec = backbone.spec
        # Uploads on their own stream overlap the previous batch's compute.
        self._copies = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        # One forward at a time: torch modules are safe to share, but interleaving two large
        # batches on a small machine only thrashes the caches.
        self.lock = threading.Lock()

    @property
    def batch_size(self) -> int:
        """The default batch size for this device (``default_batch_size``)."""
        return default_batch_size(self.device)

    @torch.no_grad()
    def features(self, images: Sequence[Image], orientations: Sequence[int] = (0,)
                 ) -> torch.Tensor:
        """(H, W, 3) uint8 images -> (N, 2048) float32 features on the device: the mean over
        ``orientations`` of each image (``orientations.orient``)."""
        x = network_input(upload(images, self.device, self._copies))
        with self.lock:
            return backbone_features(self.backbone, x, self.precision, orientations)


class SceneEncoder:
    """Batched encoding: ``encode(images)`` with images a sequence of (H, W, 3) uint8 arrays or
    tensors (any size, any device) -> codes (N, K/8) uint8. The backbone is the one the
    checkpoint was trained on (checked by weights checksum), run by a ``BackboneEncoder``.

    device, precision: as ``BackboneEncoder``'s.
    """

    def __init__(self, checkpoint: Checkpoint, device: str | None = None,
                 precision: str | None = None) -> None:
        self.checkpoint = checkpoint
        self.bits = checkpoint.net_config.bits
        self.extractor = BackboneEncoder(load_backbone(checkpoint.backbone), device, precision)
        checkpoint.check_backbone(self.extractor.spec)
        self.device = self.extractor.device
        self.precision = self.extractor.precision
        self.net = checkpoint.build_net().to(self.device)
        self.orientations = (ORIENTATIONS if checkpoint.net_config.average_orientations
                             else (0,))

    @classmethod
    def from_path(cls, path: str | Path, device: str | None = None,
                  precision: str | None = None) -> SceneEncoder:
        return cls(load_checkpoint(path), device, precision)

    @property
    def batch_size(self) -> int:
        """The default batch size for this encoder's device (``default_batch_size``)."""
        return self.extractor.batch_size

    @property
    def backbone(self) -> InceptionBackbone:
        return self.extractor.backbone

    def features(self, images: Sequence[Image]) -> torch.Tensor:
        """(H, W, 3) uint8 images -> (N, 2048) float32 backbone features on the device; for a
        model that codes the mean of a scene's 8 orientations, that mean (8 passes)."""
        return self.extractor.features(images, self.orientations)

    @property
    def rerank_dim(self) -> int | None:
        """D of the re-rank vectors this model gives (``rerank``), None if it gives none."""
        return self.checkpoint.rerank.dim if self.checkpoint.rerank is not None else None

    @torch.no_grad()
    def _launch(self, images: Sequence[Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """(the hash network's outputs (N, K), the features (N, C)) on the device; on a GPU,
        still being computed."""
        features = self.features(images)
        with self.extractor.lock:
            return self.net(features), features

    def encode(self, images: Sequence[Image], batch_size: int | None = None) -> np.ndarray:
        """(H, W, 3) uint8 images -> (N, K/8) uint8 packed codes, ``batch_size`` images per
        forward (default: ``self.batch_size``)."""
        size = batch_size or self.batch_size
        chunks = ((None, images[i:i + size]) for i in range(0, len(images), size))
        codes = [np.zeros((0, self.bits // 8), dtype=np.uint8)]
        codes += [c for _, c, _ in self.encode_batches(chunks)]
        return np.concatenate(codes)

    def encode_batches(self, batches: Iterable[tuple[T, Sequence[Image]]]
                       ) -> Iterator[tuple[T, np.ndarray, np.ndarray | None]]:
        """(tag, images) batches -> (tag, codes (n, K/8) uint8, re-rank vectors (n, D)
        float16 or None for a model without them), in order. A batch of no images comes back
        as (tag, no codes, no vectors) in its place without touching the device: a caller's
        marker (the end of a shard, say) keeps its place among the batches.

        A batch's codes are read back only once the next batch is launched behind it, so on
        a GPU the device never waits for the host between batches; at most two batches are
        on it at a time."""
        queued: deque[tuple[T, tuple | None]] = deque()
        on_device = 0
        for tag, images in batches:
            queued.append((tag, self._launch(images) if len(images) else None))
            on_device += len(images) > 0
            while queued and (queued[0][1] is None or on_device > 1):
                head, outputs = queued.popleft()
                on_device -= outputs is not None
                yield head, *self._read_back(outputs)
        while queued:
            head, outputs = queued.popleft()
            yield head, *self._read_back(outputs)

    def _read_back(self, launched: tuple[torch.Tensor, torch.Tensor] | None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
        rerank = self.checkpoint.rerank
        if launched is None:
            vectors = None if rerank is None else np.zeros((0, rerank.dim), np.float16)
            return np.zeros((0, self.bits // 8), dtype=np.uint8), vectors
        outputs, features = launched
        return hash_codes(outputs), None if rerank is None else rerank(features)
