"""Thumbnails of indexed scenes, rendered as the index saw them (its bands, 16-bit stretch),
read only from the scene's own url and member in the index's metadata."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from dahash_index.columns import WINDOW_COLUMNS
from dahash_index.lru import BytesLru
from dahash_index.scenes.decode import decode_scene
from dahash_index.sources.shards import read_scene
from dahash_index.sources.windows import open_scene, read_window

THUMBNAIL_CACHE_BYTES = 64 << 20
SIZES = (16, 1024)  # the smallest and largest ``size`` asked for


def render_thumbnail(data: bytes, name: str, bands: tuple[int, int, int] | None,
                     size: int) -> bytes:
    """A JPEG whose longer side is at most ``size`` pixels, of the encoded scene ``data``
    (``name``'s suffix picks the decoder, as in the build)."""
    image, _ = decode_scene(data, name, bands)
    return _jpeg(image, size)


def render_preview(data: bytes, name: str, bands: tuple[int, int, int] | None, size: int,
                   max_pixels: int) -> tuple[bytes, tuple[float, float, float, float] | None]:
    """An uploaded query image as the page shows it: its JPEG thumbnail (a TIFF too, which a
    browser cannot show) and its WGS84 bounds (west, south, east, north), or None."""
    image, info = decode_scene(data, name, bands, max_pixels)
    return _jpeg(image, size), info.bounds_wgs84


def _jpeg(image: np.ndarray, size: int) -> bytes:
    picture = Image.fromarray(image)
    picture.thumbnail((size, size), Image.BILINEAR)
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=85)
    return out.getvalue()


class Thumbnails:
    """Thumbnails of an index's scenes by row id, cached (row ids are never reused, so a
    row's thumbnail never changes)."""

    def __init__(self, bands: tuple[int, int, int] | None, storage_options: dict | None = None,
                 budget: int = THUMBNAIL_CACHE_BYTES) -> None:
        self.bands = bands
        self.storage_options = storage_options
        self._cache: BytesLru[bytes] = BytesLru(budget, len)

    def get(self, row: Mapping[str, Any], size: int) -> bytes:
        """The thumbnail of one metadata row (row_id, url, member). Raises RemoteError or
        FileNotFoundError (the scene cannot be read) and SceneDecodeError."""
        key = (row["row_id"], size)
        jpeg = self._cache.get(key)
        if jpeg is None:
            if row.get("col_off") is not None:  # a chip: its window only, by byte ranges
                jpeg = self._chip(row, size)
            else:
                data = read_scene(row["url"], row["member"], self.storage_options)
                jpeg = render_thumbnail(data, row["member"] or row["url"], self.bands, size)
            self._cache.put(key, jpeg)
        return jpeg

    def _chip(self, row: Mapping[str, Any], size: int) -> bytes:
        source = (read_scene(row["url"], row["member"], self.storage_options)
                  if row["member"] else row["url"])
        window = tuple(row[k] for k in WINDOW_COLUMNS)
        with open_scene(source, self.storage_options) as ds:
            image, _ = read_window(ds, window, None, self.bands)
        return _jpeg(image, size)
