"""What an index records of the model that made its codes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelIdentity:
    """What the store needs to know of a model: its file's SHA-256, K and backbone.

    ``path`` is the checkpoint file, read only to copy it into a new index (the copy is
    checked against ``sha256``). ``Checkpoint.identity`` makes one from a loaded checkpoint,
    ``ModelIdentity.of_manifest`` from an index.
    """

    sha256: str
    bits: int
    backbone: str
    backbone_sha256: str
    path: Path | None = None

    @classmethod
    def of_manifest(cls, manifest: Any, path: Path | None = None) -> ModelIdentity:
        """From an index's ``store.Manifest`` (anything with its model fields)."""
        return cls(manifest.model_sha256, manifest.bits, manifest.backbone,
                   manifest.backbone_sha256, path)


def missing_model(checkpoint_path: object) -> str:
    return (
        f"{checkpoint_path}: model checkpoint not found (train one with "
        f"`dahash-index train --data DIR --out {checkpoint_path}`)"
    )
