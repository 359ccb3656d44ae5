"""Model checkpoints: the hash network's weights plus everything needed to trust its codes.

A checkpoint is a ``torch.save`` dict of plain types and tensors, read back with
``weights_only=True``. It records the network config, the backbone (name and SHA-256 of its
weights: codes from different backbones never mix), the class names, the split seed and the
full training config, and the projection of the re-rank vector (``rerank``) when it was
fitted. Its own file SHA-256 is the "model checksum" an index is tied to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dahash_index.files import atomic_write, sha256_file
from dahash_index.model.backbones import BackboneSpec
from dahash_index.model.identity import ModelIdentity, missing_model
from dahash_index.model.network import HashNet, NetConfig
from dahash_index.model.rerank import RerankProjection

FORMAT = "dahash-index-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit what it is used with."""


@dataclass
class Checkpoint:
    net_config: NetConfig
    state_dict: dict[str, torch.Tensor]
    backbone: str
    backbone_sha256: str
    classes: list[str] = field(default_factory=list)
    split_seed: int | None = None
    train_config: dict = field(default_factory=dict)
    sha256: str = ""  # of the file it was read from
    # (n_classes, K) bool target codes of the class-centre term, row i for classes[i]; None
    # for a model trained without it (and for checkpoints from before the option existed).
    centre_codes: np.ndarray | None = None
    path: Path | None = None  # the file it was read from
    # The re-rank vector's projection (``rerank``); None for checkpoints from before it.
    rerank: RerankProjection | None = None

    @property
    def identity(self) -> ModelIdentity:
        """What an index records of this model (see ``store.ModelIdentity``)."""
        return ModelIdentity(self.sha256, self.net_config.bits, self.backbone,
                             self.backbone_sha256, self.path)

    def build_net(self) -> HashNet:
        """The hash network with these weights, in eval mode."""
        net = HashNet(self.net_config)
        try:
            net.load_state_dict(self.state_dict)
        except RuntimeError as err:  # torch lists every key; one line is enough here
            first = str(err).strip().splitlines()[-1].strip()
            raise CheckpointError(f"checkpoint weights do not fit this network: {first}") from err
        return net.eval()

    def check_backbone(self, spec: BackboneSpec) -> None:
        """Refuse a backbone other than the one this model was trained on."""
        if (spec.name, spec.weights_sha256) != (self.backbone, self.backbone_sha256):
            raise CheckpointError(
                f"model was trained on backbone {self.backbone} (weights sha256 "
                f"{self.backbone_sha256[:12]}), not {spec.name} ({spec.weights_sha256[:12]})"
            )


def save_checkpoint(
    path: str | os.PathLike,
    net: HashNet,
    backbone: BackboneSpec,
    classes: list[str],
    split_seed: int | None,
    train_config: dict,
    centre_codes: np.ndarray | None = None,
    rerank: RerankProjection | None = None,
) -> str:
    """Write atomically (tmp + rename); return the file's SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "net_config": net.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "backbone": backbone.name,
        "backbone_sha256": backbone.weights_sha256,
        "classes": list(classes),
        "split_seed": split_seed,
        "train_config": train_config,
    }
    if centre_codes is not None:
        payload["centre_codes"] = torch.from_numpy(np.asarray(centre_codes, dtype=bool))
    if rerank is not None:
        payload["rerank"] = rerank.to_payload()
    atomic_write(path, lambda f: torch.save(payload, f))
    return sha256_file(path)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint safely (``weights_only=True``); a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(missing_model(path))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a dahash-index checkpoint")
    try:
        net_config = NetConfig(**payload["net_config"])
    except TypeError as err:  # a newer file's option this code does not know
        raise CheckpointError(f"{path}: network options this version does not know "
                              f"({err}); upgrade dahash-index") from err
    centre = payload.get("centre_codes")
    rerank = payload.get("rerank")
    return Checkpoint(
        net_config=net_config,
        state_dict=payload["state_dict"],
        backbone=payload["backbone"],
        backbone_sha256=payload["backbone_sha256"],
        classes=list(payload["classes"]),
        split_seed=payload["split_seed"],
        train_config=dict(payload["train_config"]),
        sha256=sha256_file(path),
        centre_codes=None if centre is None else centre.numpy().astype(bool),
        path=path,
        rerank=None if rerank is None else RerankProjection.from_payload(rerank),
    )
