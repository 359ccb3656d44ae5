"""What one query becomes before it is searched: its network inputs, one per chip.

A query is a path or URL, encoded bytes, or an (H, W, 3) uint8 array. With a ``window``, only
that part of it is read (a TIFF window by window, by byte ranges when remote). With the
index's ``tiling``, a query larger than the index's chips is cut the way the build cut its
scenes (``chips``), and its chips are searched together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dahash_index.backbones import image_to_tensor
from dahash_index.chips import Tiling, Window
from dahash_index.images import DEFAULT_MAX_PIXELS, TIFF_SUFFIXES, SceneDecodeError, decode_scene
from dahash_index.remote import RemoteError, read_url

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass
class LoadedQuery:
    """name; error (one line) or None; inputs: (3, 299, 299) float tensors, one per chip
    (one for a whole scene or a window); windows: the chip windows in the query image
    (None for a whole image)."""

    name: str
    error: str | None
    inputs: list[torch.Tensor]
    windows: list[Window | None]


def load_query(query, i: int, bands=None, storage_options: dict | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, window: Window | None = None,
               tiling: Tiling | None = None) -> LoadedQuery:
    """One query -> its LoadedQuery (never raises for bad input: the error says why)."""
    if isinstance(query, np.ndarray):
        name = f"array {i}"
        if query.ndim != 3 or query.shape[2] != 3 or query.dtype != np.uint8:
            return _failed(name, f"expected an (H, W, 3) uint8 array, got {query.shape} "
                                 f"{query.dtype}")
        return _from_array(name, query, window, tiling)
    if isinstance(query, bytes):
        name, data, hint = f"bytes {i}", query, None
        hint = "scene.tif" if data[:4] in _TIFF_MAGIC else "scene.jpg"
    else:
        name, data, hint = str(query), None, str(query)
    try:
        if hint.lower().endswith(TIFF_SUFFIXES) and (window is not None or tiling is not None):
            loaded = _from_tiff(name, data if data is not None else name, bands,
                                storage_options, window, tiling)
            if loaded is not None:
                return loaded
        if data is None:
            data = read_url(name, storage_options)
        image, _ = decode_scene(data, hint, bands, max_pixels)
    except (SceneDecodeError, RemoteError) as err:
        return _failed(name, str(err))
    except OSError as err:  # fsspec, opening a remote TIFF
        return _failed(name, f"cannot read: {err}")
    return _from_array(name, image, window, tiling)


def _from_tiff(name: str, source: bytes | str, bands, storage_options: dict | None,
               window: Window | None, tiling: Tiling | None) -> LoadedQuery | None:
    """A TIFF read window by window; None when GDAL cannot open it (the whole-file decode
    then names the problem) or when it is neither windowed nor large enough to cut."""
    # rasterio only now: a JPEG query never pays for importing it
    from dahash_index.scene_chips import CannotOpenTiff, open_scene, read_window

    try:
        with open_scene(source, storage_options) as ds:
            if window is not None:
                image, _ = read_window(ds, window, None, bands)
                return LoadedQuery(name, None, [image_to_tensor(image)], [window])
            if not tiling.applies(ds.width, ds.height):
                return None
            windows = tiling.windows(ds.width, ds.height)
            inputs = [image_to_tensor(read_window(ds, w, tiling.tile, bands)[0])
                      for w in windows]
            return LoadedQuery(name, None, inputs, list(windows))
    except CannotOpenTiff:
        return None


def _from_array(name: str, image: np.ndarray, window: Window | None,
                tiling: Tiling | None) -> LoadedQuery:
    height, width = image.shape[:2]
    if window is not None:
        col, row, w, h = window
        if col + w > width or row + h > height:
            return _failed(name, f"window {col},{row},{w},{h} is not inside the {width} x "
                                 f"{height} image")
        return LoadedQuery(name, None, [image_to_tensor(image[row:row + h, col:col + w])],
                           [window])
    if tiling is None or not tiling.applies(width, height):
        return LoadedQuery(name, None, [image_to_tensor(image)], [None])
    inputs, windows = [], []
    for col, row, w, h in tiling.windows(width, height):
        chip = np.zeros((tiling.tile, tiling.tile, 3), np.uint8)
        chip[:h, :w] = image[row:row + h, col:col + w]
        inputs.append(image_to_tensor(chip))
        windows.append((col, row, w, h))
    return LoadedQuery(name, None, inputs, windows)


def _failed(name: str, error: str) -> LoadedQuery:
    return LoadedQuery(name, error, [], [])
