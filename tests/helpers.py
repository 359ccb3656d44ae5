"""What many test modules share: where the real datasets are, the skip marker for them,
synthetic scenes, shard rows for the store, and the checks of what a user reads."""

from __future__ import annotations

import io
import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dahash_index.store import METADATA_SCHEMA
from dahash_index.store.manifest import manifest_checksum

# The datasets live beside the repository (../shared/datasets), wherever it is cloned;
# DAHASH_INDEX_DATASETS points elsewhere (a GPU machine that ../shared does not travel to).
DATASETS = Path(os.environ.get("DAHASH_INDEX_DATASETS")
                or Path(__file__).resolve().parents[2] / "shared" / "datasets")
UCMERCED = DATASETS / "ucmerced"
UCMERCED_TIF = DATASETS / "ucmerced-tif-sample"
AID = DATASETS / "aid-sample"



def have_datasets() -> bool:
    """Whether the real datasets are there (tests marked ``realdata`` skip otherwise)."""
    return UCMERCED.is_dir() and UCMERCED_TIF.is_dir()


def cli_command() -> list[str]:
    """The ``dahash-index`` console script of the running interpreter's environment (what a
    user types), or ``python -m dahash_index.cli`` when it is not installed as a script."""
    script = Path(sys.executable).parent / "dahash-index"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "dahash_index.cli"]


def identity(checkpoint: Path):
    """The ModelIdentity of a checkpoint file, as the store receives it."""
    from dahash_index.model.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint).identity


def link_ucmerced(root: Path, per_class: int, classes: list[str] | None = None) -> Path:
    """``root/<class>/<scene>``: the first ``per_class`` scenes of each class (every class by
    default) of UC Merced, symlinked."""
    for name in classes or sorted(p.name for p in UCMERCED.iterdir() if p.is_dir()):
        (root / name).mkdir(parents=True)
        for scene in sorted((UCMERCED / name).iterdir())[:per_class]:
            (root / name / scene.name).symlink_to(scene)
    return root


# The scenes of the ``small`` index (conftest): relative path -> seed of its synthetic pixels.
GOOD = {"good/s0.jpg": 0, "good/s1.jpg": 1, "good/s2.png": 2, "more/m0.tif": 3, "more/m1.jpg": 4}


# --- what a user reads ---------------------------------------------------------------------


def messages(stderr: str) -> list[str]:
    """stderr as the lines a user reads: tqdm redraws its bar with carriage returns."""
    return [seg.strip() for line in stderr.split("\n") for seg in line.split("\r") if seg.strip()]


def assert_skipped_one_line(stderr: str, name: str, *reason_parts: str) -> str:
    """Exactly one message names the scene: 'skipped NAME: reason', one line, no traceback."""
    assert "Traceback" not in stderr, stderr
    hits = [m for m in messages(stderr) if name in m]
    assert len(hits) == 1, f"expected one message naming {name}, got {hits}\n{stderr}"
    assert hits[0].startswith(f"skipped {name}: "), hits[0]
    for part in reason_parts:
        assert part in hits[0], hits[0]
    return hits[0]


def assert_one_line_failure(result, *needles: str) -> str:
    """A refused command: non-zero exit, one line on stderr (naming ``needles``), no traceback."""
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def synthetic_scene(seed: int, height: int = 96, width: int = 128) -> np.ndarray:
    """(H, W, 3) uint8: a smooth random colour field plus noise, different for every seed."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BILINEAR), dtype=np.int16)
    noisy = smooth + rng.integers(-25, 26, smooth.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def save_scene(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(synthetic_scene(seed)).save(path, quality=95)  # format from the suffix
    return path


def encoded(seed: int, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(synthetic_scene(seed)).save(buf, format=fmt)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- shard contents for the store -----------------------------------------------------------


# Distinct 16-bit codes, one per row id: search results then have exactly one row at distance 0.
_POOL = np.random.default_rng(0).permutation(1 << 16).astype(">u2").view(np.uint8).reshape(-1, 2)


def shard_codes(first: int, n: int) -> np.ndarray:
    """The codes of rows first..first+n-1 (16-bit, distinct)."""
    return _POOL[first : first + n].copy()


def shard_rows(shard: str, n: int) -> list[dict]:
    """n metadata rows: every other one georeferenced, some members and labels null, and most
    rows leave out some nullable columns."""
    rows = []
    for i in range(n):
        row = {
            "url": f"s3://bucket/{shard}/{i}.tif",
            "shard": shard,
            "member": f"{i}.tif" if i % 3 == 0 else None,
            "width": 256 + i,
            "height": 200,
            "bands": 4,
            "dtype": "uint16",
            "label": None if i % 3 == 1 else "forest",
        }
        if i % 2 == 0:
            row.update(
                crs="EPSG:32633",
                left=500000.0 + i,
                bottom=4000000.0,
                right=500256.0 + i,
                top=4000200.0,
                west=15.0,
                south=36.1,
                east=15.003,
                north=36.102,
                pixel_size_x=1.0,
                pixel_size_y=1.0,
                datetime="2020-06-01T10:00:00",
            )
        rows.append(row)
    return rows


def shard_errors(shard: str, n: int) -> list[dict]:
    return [
        {"url": f"s3://bucket/{shard}/bad{i}.tif", "shard": shard, "reason": "truncated TIFF"}
        for i in range(n)
    ]


def full_row(row: dict) -> dict:
    """A committed row as the reader returns it: every METADATA_SCHEMA column present."""
    return {name: row.get(name) for name in METADATA_SCHEMA.names}


def rewrite_manifest(index: Path, edit, *, sealed: bool = True) -> None:
    """Apply ``edit(manifest_dict)`` to ``index/manifest.json`` in place, as an older writer or
    a consistent but wrong commit would have left it. ``sealed`` records a fresh checksum, so
    the reader sees the edit itself and not a damaged file; formats before the checksum
    (``sealed=False``) have none."""
    manifest = json.loads((index / "manifest.json").read_text())
    manifest.pop("checksum", None)
    edit(manifest)
    if sealed:
        manifest["checksum"] = manifest_checksum(manifest)
    (index / "manifest.json").write_text(json.dumps(manifest))


def write_geotiff(path: Path, width, height, transform, options, tags, seed,
                  crs: str = "EPSG:32633") -> None:
    """A 4-band uint16 GeoTIFF of a smooth pattern plus noise (``seed``), in ``crs``, with the
    affine ``transform`` (a, b, c, d, e, f), rasterio creation ``options`` and ``tags``."""
    import rasterio
    from rasterio.transform import Affine

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    data = np.stack(
        [
            (200 + 40 * b + 7 * xx + 11 * yy + rng.integers(0, 300, (height, width)))
            for b in range(4)
        ]
    ).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=4,
        dtype="uint16",
        crs=crs,
        transform=Affine(*transform),
        **options,
    ) as dst:
        dst.write(data)
        if tags:
            dst.update_tags(**tags)
