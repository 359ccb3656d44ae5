"""What every decoder shares: the scene file types, what a decoded scene says of its file
(``SceneInfo``), the one decode error, and the helpers of the 16-bit stretch and of one-line
reasons."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

SCENE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".jpg", ".jpeg", ".png")
DEFAULT_MAX_PIXELS = 50_000_000  # width*height above this is refused before decoding

TIFF_SUFFIXES = (".tif", ".tiff")
_PERCENTILES = (2.0, 98.0)
_MAX_REASON = 160


class SceneDecodeError(ValueError):
    """One-line reason a scene could not be decoded (the caller adds the file name)."""


@dataclass(frozen=True)
class SceneInfo:
    """What the source file holds, before conversion to RGB uint8.

    ``width``/``height``/``bands``/``dtype`` describe the file (e.g. 4 bands of
    ``'uint16'``), not the decoded array. The geo fields are filled only for
    georeferenced TIFFs (a CRS is present); ``datetime`` also for JPEGs with EXIF.
    """

    width: int
    height: int
    bands: int
    dtype: str
    crs: str | None = None  # 'EPSG:32633', or WKT when the CRS has no authority code
    bounds: tuple[float, float, float, float] | None = None  # (left, bottom, right, top), crs
    bounds_wgs84: tuple[float, float, float, float] | None = None  # (west, south, east, north)
    pixel_size: tuple[float, float] | None = None  # (x, y) in crs units, positive
    datetime: str | None = None  # acquisition or file time, 'YYYY-MM-DDTHH:MM:SS' when parseable


def is_tiff(name: str) -> bool:
    """Whether a file name or URL names a TIFF (by its suffix, any case)."""
    return name.lower().endswith(TIFF_SUFFIXES)


def parse_bands(text: str) -> tuple[int, int, int]:
    """Parse a ``--bands`` value: ``'3,2,1'`` -> ``(3, 2, 1)``.

    Band numbers are 1-based as in GDAL. Exactly three positive integers are accepted;
    anything else raises ValueError with a message naming the bad value.
    """
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(
            f"bands must be three comma-separated band numbers like '3,2,1', got {text!r}"
        )
    values = tuple(int(p) for p in parts)
    if min(values) < 1:
        raise ValueError(f"band numbers are 1-based (GDAL style), got {text!r}")
    return values  # type: ignore[return-value]


def stretch_to_uint8(band: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Linearly map one band to uint8 between its 2nd and 98th percentile.

    band: (H, W) of any real dtype. valid: (H, W) bool, True where the pixel counts;
    None means all finite pixels. Returns (H, W) uint8 with values below the 2nd
    percentile at 0, above the 98th at 255, and invalid pixels at 0. A band whose
    percentiles coincide (constant, or nearly) maps to 0 at or below that value and
    255 above it.
    """
    finite = np.isfinite(band) if band.dtype.kind == "f" else None
    if finite is not None:
        valid = finite if valid is None else valid & finite
    values = band[valid] if valid is not None else band.ravel()
    out = np.zeros(band.shape, dtype=np.uint8)
    if values.size == 0:
        return out
    lo, hi = np.percentile(values, _PERCENTILES)
    # float32 halves the memory of float64 on big scenes and is exact for 16-bit ints.
    work = band.astype(np.float32, copy=False)
    if hi > lo:
        scaled = (work - np.float32(lo)) * np.float32(255.0 / (hi - lo))
        if valid is not None:
            scaled[~valid] = 0  # NaN would not survive the cast to uint8
        np.rint(np.clip(scaled, 0, 255, out=scaled), out=scaled)
        out[...] = scaled
    else:
        out[work > lo] = 255
    if valid is not None:
        out[~valid] = 0
    return out


def iso_datetime(text: str) -> str:
    # The TIFF/EXIF form 'YYYY:MM:DD HH:MM:SS' becomes ISO; anything else passes through.
    text = text.strip().strip("\x00").strip()
    m = re.fullmatch(r"(\d{4}):(\d{2}):(\d{2})[ T](\d{2}:\d{2}:\d{2})", text)
    return f"{m[1]}-{m[2]}-{m[3]}T{m[4]}" if m else text


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise SceneDecodeError(
            f"image is {width} x {height} pixels, above the limit of {max_pixels}"
        )


def short_reason(exc: BaseException) -> str:
    """One line from an exception: its root cause, without GDAL's in-memory file names."""
    # rasterio wraps GDAL's specific error ("TIFFReadEncodedStrip: Read error at ...")
    # in generic ones ("Read failed. See previous exception"); the innermost says most.
    for _ in range(8):  # bounded: a cause chain could in principle loop
        if exc.__cause__ is None:
            break
        exc = exc.__cause__
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    text = re.sub(r"(/vsimem/)?\S*[0-9a-f]{8}-[0-9a-f-]{27}\.\w+[:,]?\s*", "", text)
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."
