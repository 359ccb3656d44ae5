"""TIFF, GeoTIFF and 16-bit PNG through rasterio (GDAL): the whole scene from its bytes
(``decode_gdal``, for ``images.decode_scene``), or a window of an open dataset (``read_rgb``,
for ``scene_chips``), with what the file says of itself (``tiff_info``, ``geo_bounds``)."""

from __future__ import annotations

import warnings

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from rasterio.warp import transform_bounds
from rasterio.windows import Window as RasterWindow

from dahash_index.scenes.chips import Window, window_bounds
from dahash_index.scenes.scene import (
    SceneDecodeError,
    SceneInfo,
    check_pixels,
    iso_datetime,
    short_reason,
    stretch_to_uint8,
)


def decode_gdal(
    data: bytes, driver: str, kind: str, bands: tuple[int, int, int] | None, max_pixels: int
) -> tuple[np.ndarray, SceneInfo]:
    try:
        # Plain (non-geo) TIFFs such as UC Merced's are normal input, not worth a warning.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            # Only the one driver: GDAL would otherwise try every format it knows.
            with MemoryFile(data) as mem, mem.open(driver=driver) as ds:
                return _read_dataset(ds, bands, max_pixels)
    except SceneDecodeError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # GDAL reports bad data through many exception types
        raise SceneDecodeError(f"truncated or corrupt {kind}: {short_reason(exc)}") from None


def _read_dataset(
    ds: rasterio.io.DatasetReader, bands: tuple[int, int, int] | None, max_pixels: int
) -> tuple[np.ndarray, SceneInfo]:
    check_pixels(ds.width, ds.height, max_pixels)
    info = tiff_info(ds)
    rgb, _ = read_rgb(ds, bands)
    return rgb, info


def read_rgb(
    ds: rasterio.io.DatasetReader,
    bands: tuple[int, int, int] | None,
    window: Window | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The dataset, or its ``window`` (col_off, row_off, width, height), as the index sees
    it: (H, W, 3) uint8 RGB (bands picked as in ``decode_scene``, other than uint8 stretched
    over the valid pixels, invalid ones 0) and the (H, W) bool validity mask, or None when
    GDAL says every pixel is valid. Raises SceneDecodeError for a data type or band the file
    cannot give."""
    dtype = np.dtype(ds.dtypes[0])
    if dtype.kind not in "uif":
        raise SceneDecodeError(f"unsupported TIFF data type {dtype.name}")
    palette = bands is None and ds.count == 1 and ds.colorinterp[0] == ColorInterp.palette
    if bands is None:
        bands = (1, 2, 3) if ds.count >= 3 else (1, 1, 1)
    for b in bands:
        if b > ds.count:
            raise SceneDecodeError(f"band {b} requested, file has {ds.count}")
    where = RasterWindow(*window) if window is not None else None

    unique = sorted(set(bands))
    pixels = ds.read(unique, window=where)  # (len(unique), H, W)
    # Reading masks costs a full pass; skip it when GDAL says every pixel is valid.
    has_mask = any(ds.mask_flag_enums[b - 1] != [MaskFlags.all_valid] for b in unique)
    masks = ds.read_masks(unique, window=where) if has_mask else None
    valid_all = np.logical_and.reduce(masks != 0, axis=0) if masks is not None else None

    if palette and dtype == np.uint8:
        rgb = _apply_palette(pixels[0], ds.colormap(1))
        if masks is not None:
            rgb[masks[0] == 0] = 0
        return rgb, valid_all

    out = {}
    for i, b in enumerate(unique):
        valid = masks[i] != 0 if masks is not None else None
        if dtype == np.uint8:
            band = pixels[i]
            if valid is not None:
                band[~valid] = 0
            out[b] = band
        else:
            out[b] = stretch_to_uint8(pixels[i], valid)
    return np.stack([out[b] for b in bands], axis=-1), valid_all


def _apply_palette(index: np.ndarray, colormap: dict[int, tuple[int, ...]]) -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.uint8)
    for value, rgba in colormap.items():
        if 0 <= value < 256:
            lut[value] = rgba[:3]
    return lut[index]


def tiff_info(ds: rasterio.io.DatasetReader) -> SceneInfo:
    """What a TIFF dataset holds (size, bands, type, CRS, bounds native and WGS84, pixel
    size, datetime)."""
    crs = bounds = wgs84 = pixel_size = None
    if ds.crs is not None:
        crs = ds.crs.to_string()
        bounds, wgs84 = geo_bounds(ds)
        pixel_size = (abs(float(ds.res[0])), abs(float(ds.res[1])))
    return SceneInfo(
        width=ds.width,
        height=ds.height,
        bands=ds.count,
        dtype=str(ds.dtypes[0]),
        crs=crs,
        bounds=bounds,
        bounds_wgs84=wgs84,
        pixel_size=pixel_size,
        datetime=_tiff_datetime(ds),
    )


Bounds = tuple[float, float, float, float]


def geo_bounds(ds: rasterio.io.DatasetReader, window: Window | None = None
               ) -> tuple[Bounds | None, Bounds | None]:
    """(left, bottom, right, top) in the dataset's CRS and (west, south, east, north) in
    WGS84 of the whole scene, or of ``window`` (``chips.window_bounds``); (None, None)
    without a CRS, and WGS84 None when the CRS cannot be transformed."""
    if ds.crs is None:
        return None, None
    raw = ds.bounds if window is None else window_bounds(tuple(ds.transform), window)
    bounds = tuple(float(v) for v in raw)
    try:
        wgs84 = tuple(float(v) for v in transform_bounds(ds.crs, "EPSG:4326", *bounds))
    except Exception:  # metadata only: an odd CRS must not cost us the scene
        wgs84 = None
    return bounds, wgs84


# Acquisition time is what users search by; TIFFTAG_DATETIME (file write time) is the
# fallback. Keys are compared upper-case, in every metadata namespace.
_DATETIME_KEYS = (
    "ACQUISITIONDATETIME",
    "ACQUISITION_DATETIME",
    "ACQUISITION_DATE",
    "DATETIME",
    "SENSING_TIME",
    "TIFFTAG_DATETIME",
)


def _tiff_datetime(ds: rasterio.io.DatasetReader) -> str | None:
    tags: dict[str, str] = {}
    try:
        namespaces = [None, *ds.tag_namespaces()]
    except Exception:
        namespaces = [None]
    for ns in namespaces:
        if ns is not None and (ns.startswith("xml:") or ns == "DERIVED_SUBDATASETS"):
            continue
        try:
            found = ds.tags(ns=ns) if ns is not None else ds.tags()
        except Exception:
            continue
        for key, value in found.items():
            tags.setdefault(key.upper(), value)
    for key in _DATETIME_KEYS:
        if tags.get(key, "").strip():
            return iso_datetime(tags[key])
    return None
