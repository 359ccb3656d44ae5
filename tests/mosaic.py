"""Georeferenced mosaics of scene images, for the large-scene tests and
``benchmarks/large_scene.py``: written one row of scenes at a time, never whole in memory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import from_origin
from rasterio.windows import Window

SCENE = 256  # UC Merced scenes are 256 x 256 px
ORIGIN = (500_000.0, 4_650_000.0)  # EPSG:32616 (UTM 16N) x, y of the top-left corner


def scene_pixels(path: Path) -> np.ndarray:
    """(256, 256, 3) uint8 of one scene file (cropped or padded to 256 px)."""
    image = np.asarray(Image.open(path).convert("RGB"))[:SCENE, :SCENE]
    out = np.zeros((SCENE, SCENE, 3), np.uint8)
    out[: image.shape[0], : image.shape[1]] = image
    return out


def write_mosaic(path: Path, scenes: Sequence[Path], columns: int, size: tuple[int, int],
                 crs: str | None = "EPSG:32616", pixel: float = 1.0, nodata: int | None = None,
                 transform=None) -> None:
    """Write ``scenes`` (row-major, ``columns`` a row, repeated when too few) as one tiled,
    deflate-compressed 3-band uint8 GeoTIFF of ``size`` (width, height) px, 256-px blocks.
    crs None writes no georeferencing; ``transform`` overrides the north-up one at ORIGIN."""
    width, height = size
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 3,
               "dtype": "uint8", "compress": "deflate", "tiled": True, "blockxsize": 256,
               "blockysize": 256}
    if crs is not None:
        profile |= {"crs": crs, "transform": transform or from_origin(*ORIGIN, pixel, pixel)}
    if nodata is not None:
        profile["nodata"] = nodata
    cache: dict[Path, np.ndarray] = {}
    rows = -(-height // SCENE)
    with rasterio.open(path, "w", **profile) as ds:
        for r in range(rows):
            h = min(SCENE, height - r * SCENE)
            strip = np.zeros((3, h, width), np.uint8)
            for c in range(-(-width // SCENE)):
                scene = scenes[(r * columns + c) % len(scenes)]
                if scene not in cache:
                    cache[scene] = scene_pixels(scene).transpose(2, 0, 1)
                w = min(SCENE, width - c * SCENE)
                strip[:, :, c * SCENE: c * SCENE + w] = cache[scene][:, :h, :w]
            ds.write(strip, window=Window(0, r * SCENE, width, h))
