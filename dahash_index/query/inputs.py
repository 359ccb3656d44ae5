"""What one query becomes before it is searched: its network inputs, one per chip.

A query is a path or URL, encoded bytes, or an (H, W, 3) uint8 array. With a ``window``, only
that part of it is read (a TIFF window by window, by byte ranges when remote). With the
index's ``tiling``, a query larger than the index's chips is cut the way the build cut its
scenes (``chips``), and its chips are searched together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dahash_index.scenes.chips import Tiling, Window
from dahash_index.scenes.decode import decode_scene
from dahash_index.scenes.device_jpeg import JpegData, defer_jpeg
from dahash_index.scenes.scene import DEFAULT_MAX_PIXELS, SceneDecodeError, is_tiff
from dahash_index.sources.remote import RemoteError, read_url

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass
class LoadedQuery:
    """name; error (one line) or None; inputs: the encoder's (H, W, 3) uint8 images, one per
    chip (one for a whole scene or a window), or a JpegData for the device to decode;
    windows: the chip windows in the query image (None for a whole image)."""

    name: str
    error: str | None
    inputs: list[np.ndarray | JpegData]
    windows: list[Window | None]


def load_query(query, i: int, bands=None, storage_options: dict | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, window: Window | None = None,
               tiling: Tiling | None = None, defer_jpegs: bool = False) -> LoadedQuery:
    """One query -> its LoadedQuery (never raises for bad input: the error says why).
    defer_jpegs: a whole JPEG that nvJPEG can take is left encoded (``device_jpeg``)."""
    if isinstance(query, np.ndarray):
        name = f"array {i}"
        if query.ndim != 3 or query.shape[2] != 3 or query.dtype != np.uint8:
            return _failed(name, f"expected an (H, W, 3) uint8 array, got {query.shape} "
                                 f"{query.dtype}")
    else:
        name = f"bytes {i}" if isinstance(query, bytes) else str(query)
    try:
        if window is not None:
            image = (_crop(query, window) if isinstance(query, np.ndarray) else
                     window_pixels(query, window, bands, storage_options, max_pixels))
            return LoadedQuery(name, None, [image], [window])
        if isinstance(query, np.ndarray):
            return _cut(name, query, tiling)
        hint = _hint(query)
        if tiling is not None and is_tiff(hint):
            loaded = _tiff_chips(name, query, bands, storage_options, tiling)
            if loaded is not None:
                return loaded
        data = query if isinstance(query, bytes) else read_url(name, storage_options)
        if defer_jpegs and tiling is None and hint.lower().endswith((".jpg", ".jpeg")):
            deferred = defer_jpeg(data, hint, max_pixels)
            if deferred is not None:
                return LoadedQuery(name, None, [deferred[0]], [None])
        image, _ = decode_scene(data, hint, bands, max_pixels)
    except (SceneDecodeError, RemoteError) as err:
        return _failed(name, str(err))
    except OSError as err:  # fsspec, opening a remote TIFF
        return _failed(name, f"cannot read: {err}")
    return _cut(name, image, tiling)


def window_pixels(source: str | bytes, window: Window, bands=None,
                  storage_options: dict | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
                  ) -> np.ndarray:
    """(H, W, 3) uint8: ``window`` (col_off, row_off, width, height) of the image at
    ``source`` (a path or URL, or encoded bytes) as a query sees it. A TIFF is read window by
    window (by byte ranges when remote); another image is decoded and cropped. Raises
    SceneDecodeError (also for a window not inside the image), RemoteError or OSError."""
    hint = _hint(source)
    if is_tiff(hint):
        # rasterio only now: a JPEG query never pays for importing it
        from dahash_index.sources.windows import CannotOpenTiff, open_scene, read_window

        try:
            with open_scene(source, storage_options) as ds:
                return read_window(ds, window, None, bands)[0]
        except CannotOpenTiff:
            pass  # the whole-file decode below names the problem
    data = source if isinstance(source, bytes) else read_url(source, storage_options)
    image, _ = decode_scene(data, hint, bands, max_pixels)
    return _crop(image, window)


def _hint(source: str | bytes) -> str:
    """What picks the decoder: the path or URL, or a name made from the bytes' magic."""
    if isinstance(source, bytes):
        return "scene.tif" if source[:4] in _TIFF_MAGIC else "scene.jpg"
    return str(source)


def _tiff_chips(name: str, source: bytes | str, bands, storage_options: dict | None,
                tiling: Tiling) -> LoadedQuery | None:
    """A large TIFF's chips, read window by window; None when GDAL cannot open it (the
    whole-file decode then names the problem) or when it is not large enough to cut."""
    from dahash_index.sources.windows import CannotOpenTiff, open_scene, read_window

    try:
        with open_scene(source, storage_options) as ds:
            if not tiling.applies(ds.width, ds.height):
                return None
            windows = tiling.windows(ds.width, ds.height)
            inputs = [read_window(ds, w, tiling.tile, bands)[0] for w in windows]
            return LoadedQuery(name, None, inputs, list(windows))
    except CannotOpenTiff:
        return None


def _crop(image: np.ndarray, window: Window) -> np.ndarray:
    height, width = image.shape[:2]
    col, row, w, h = window
    if col + w > width or row + h > height:
        raise SceneDecodeError(f"window {col},{row},{w},{h} is not inside the {width} x "
                               f"{height} image")
    return image[row:row + h, col:col + w]


def _cut(name: str, image: np.ndarray, tiling: Tiling | None) -> LoadedQuery:
    """A decoded query, cut into chips when ``tiling`` applies to its size."""
    height, width = image.shape[:2]
    if tiling is None or not tiling.applies(width, height):
        return LoadedQuery(name, None, [image], [None])
    inputs, windows = [], []
    for col, row, w, h in tiling.windows(width, height):
        chip = np.zeros((tiling.tile, tiling.tile, 3), np.uint8)
        chip[:h, :w] = image[row:row + h, col:col + w]
        inputs.append(chip)
        windows.append((col, row, w, h))
    return LoadedQuery(name, None, inputs, windows)


def _failed(name: str, error: str) -> LoadedQuery:
    return LoadedQuery(name, error, [], [])
