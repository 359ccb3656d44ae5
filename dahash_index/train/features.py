"""Backbone features, computed once per (dataset files, backbone weights) and cached.

The backbone is frozen and the attention acts on pooled channels, so training and
evaluation never need to run it again (METHOD.md section 1). Extraction takes the build's
path (``model.encoder.BackboneEncoder``): uint8 scenes uploaded to the backbone's device (the
GPU when there is one), resized there, run in the device's default precision. A cache file
records the fingerprint of the files it was built from, the backbone's weights checksum and
the precision; a cache whose record does not match is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dahash_index.files import atomic_write
from dahash_index.model.backbones import FEATURE_DIM
from dahash_index.model.encoder import BackboneEncoder
from dahash_index.model.orientations import check_orientation
from dahash_index.scenes.decode import decode_scene
from dahash_index.scenes.scene import SceneDecodeError
from dahash_index.train.data import ImageFolder

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$DAHASH_INDEX_CACHE`` or ``~/.cache/dahash-index/features``."""
    env = os.environ.get("DAHASH_INDEX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dahash-index" / "features"


def dataset_fingerprint(data: ImageFolder) -> str:
    """SHA-256 over every scene's relative path, label and bytes: any change is a new cache."""
    digest = hashlib.sha256()
    for rel, label in zip(data.paths, data.labels, strict=True):
        digest.update(f"{rel}\0{data.classes[label]}\0".encode())
        with open(data.root / rel, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def recompressed(image: np.ndarray, quality: int) -> np.ndarray:
    """An (H, W, 3) uint8 scene re-encoded as a JPEG of ``quality`` and decoded again."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def recompress_quality(i: int, qualities: tuple[int, int]) -> int:
    """The JPEG quality scene ``i`` of a dataset is re-encoded at: drawn from ``qualities``
    (lowest, highest) by a generator seeded with ``i`` alone, so that it does not depend on
    the order in which workers decode."""
    low, high = qualities
    return int(np.random.default_rng([0x4A504547, i]).integers(low, high + 1))


class _SceneFiles(Dataset):
    """Decodes scenes to (H, W, 3) uint8 arrays, re-encoded as JPEG (``recompressed``) when
    ``recompress`` gives a range of qualities; a bad file yields None and its reason."""

    def __init__(self, root: Path, paths: list[str],
                 recompress: tuple[int, int] | None = None) -> None:
        self.root = root
        self.paths = paths
        self.recompress = recompress

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        path = self.root / self.paths[i]
        try:
            image, _ = decode_scene(path.read_bytes(), path.name)
        except (SceneDecodeError, OSError) as err:
            return i, None, f"{path}: {err}"
        if self.recompress:
            image = recompressed(image, recompress_quality(i, self.recompress))
        return i, image, None


def _collate(items: list) -> list:
    return items


def _one_thread_worker(_: int) -> None:
    # A decode worker must not start its own pool of OpenMP threads next to the backbone's.
    torch.set_num_threads(1)


@dataclass
class FeatureSet:
    """features (N, 2048) float32 for ``paths``; ``errors`` maps unreadable paths to reasons."""

    features: np.ndarray
    paths: list[str]
    errors: dict[str, str]


def extract_features(
    extractor: BackboneEncoder,
    root: Path,
    paths: list[str],
    batch_size: int = 32,
    workers: int = 1,
    progress: bool = True,
    orientation: int = 0,
    recompress: tuple[int, int] | None = None,
) -> FeatureSet:
    """Run the backbone over ``root / p`` for p in ``paths``, each scene turned to
    ``orientation`` (``dahash_index.model.orientations``), and re-encoded as JPEG at a quality
    in ``recompress`` (lowest, highest; ``recompress_quality``) when given -> FeatureSet (bad
    files skipped).

    Decoding happens in ``workers`` background processes so it overlaps the forward pass.
    A file that cannot be decoded is reported on stderr in one line and left out.
    """
    check_orientation(orientation)
    loader = DataLoader(
        _SceneFiles(root, paths, recompress),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        worker_init_fn=_one_thread_worker,
    )
    features = np.zeros((len(paths), FEATURE_DIM), dtype=np.float32)
    ok = np.zeros(len(paths), dtype=bool)
    errors: dict[str, str] = {}
    desc = "features" + (f", orientation {orientation}" if orientation else "") + \
        (", re-encoded as JPEG" if recompress else "")
    bar = tqdm(total=len(paths), unit="img", desc=desc, disable=not progress)
    for batch in loader:
        good = [(i, x) for i, x, _ in batch if x is not None]
        for i, _, reason in batch:
            if reason is not None:
                errors[paths[i]] = reason
                tqdm.write(f"skipped {reason}", file=sys.stderr)
        if good:
            index = [i for i, _ in good]
            features[index] = extractor.features([x for _, x in good],
                                                 (orientation,)).cpu().numpy()
            ok[index] = True
        bar.update(len(batch))
    bar.close()
    kept = np.flatnonzero(ok)
    return FeatureSet(features[kept], [paths[i] for i in kept], errors)


def cached_features(
    extractor: BackboneEncoder,
    data: ImageFolder,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    orientation: int = 0,
    fingerprint: str | None = None,
    recompress: tuple[int, int] | None = None,
) -> FeatureSet:
    """Features for every scene of ``data`` in one orientation (and re-encoded as JPEG at a
    quality in ``recompress``, when given: ``extract_features``), from the cache when it
    matches, else extracted by ``extractor`` (its device and precision). ``fingerprint``
    (``dataset_fingerprint(data)``) saves re-hashing the files when the caller asks for
    several orientations.

    The cache file is named by backbone, dataset fingerprint, view and precision, and also
    stores all four, so a renamed or stale file is detected by its content, not its name.
    """
    orientation = check_orientation(orientation)
    precision = extractor.precision
    backbone = extractor.spec
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    fingerprint = fingerprint or dataset_fingerprint(data)
    sha = backbone.weights_sha256
    # orientation 0 and fp32 keep the names of caches from before the options existed
    jpeg = f"jpeg{recompress[0]}-{recompress[1]}" if recompress else ""
    suffix = (f"-o{orientation}" if orientation else "") + (f"-{jpeg}" if jpeg else "") + \
        (f"-{precision}" if precision != "fp32" else "")
    path = cache_dir / f"{backbone.name}-{sha[:12]}-{fingerprint[:16]}{suffix}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            if (
                int(f["version"]) == CACHE_VERSION
                and str(f["fingerprint"]) == fingerprint
                and str(f["backbone_sha256"]) == sha
                and int(f["orientation"] if "orientation" in f else 0) == orientation
                and str(f["precision"] if "precision" in f else "fp32") == precision
                and str(f["recompress"] if "recompress" in f else "") == jpeg
            ):
                reasons = f["error_reasons"].tolist()
                errors = dict(zip(f["error_paths"].tolist(), reasons, strict=True))
                return FeatureSet(f["features"], f["paths"].tolist(), errors)
        if progress:
            print(f"feature cache {path} does not match; rebuilding", file=sys.stderr)
    result = extract_features(extractor, data.root, data.paths, progress=progress,
                              orientation=orientation, recompress=recompress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    arrays = dict(
        version=CACHE_VERSION,
        fingerprint=fingerprint,
        backbone_sha256=sha,
        orientation=orientation,
        precision=precision,
        recompress=jpeg,
        features=result.features,
        paths=np.asarray(result.paths, dtype=str),
        error_paths=np.asarray(list(result.errors), dtype=str),
        error_reasons=np.asarray(list(result.errors.values()), dtype=str),
    )
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return result
