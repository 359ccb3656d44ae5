"""Decode one scene file (JPEG, PNG, TIFF, GeoTIFF) into an RGB uint8 array.

``decode_scene(data, name)`` takes the encoded bytes of a scene and returns an
``(H, W, 3)`` uint8 array plus a :class:`SceneInfo` describing the source file.
JPEG and 8-bit PNG go through Pillow; TIFF, GeoTIFF and 16-bit PNG through rasterio
(GDAL, ``tiff.py``, imported only when such a file comes: importing rasterio costs a cold
query 0.2 s). Both read from memory, so the bytes may come from any fsspec URL or tar member.

Every problem with the data becomes a :class:`SceneDecodeError` whose message is one
human-readable line; the caller prefixes the file name.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import PurePosixPath

import numpy as np
from PIL import Image

from dahash_index.scenes.scene import (
    DEFAULT_MAX_PIXELS,
    SCENE_SUFFIXES,
    TIFF_SUFFIXES,
    SceneDecodeError,
    SceneInfo,
    check_pixels,
    iso_datetime,
    short_reason,
)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
# A mislabelled .jpg that is really a PNG (or the reverse) is common and harmless, so the
# Pillow path accepts both; anything else Pillow could open (GIF, BMP, ...) is refused.
_PILLOW_FORMATS = ("JPEG", "PNG")  # MPO (multi-picture JPEG) opens as JPEG
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"  # then the IHDR chunk; byte 24 is the bit depth
_PILLOW_MAGIC = (b"\xff\xd8\xff", _PNG_MAGIC)


def decode_scene(
    data: bytes,
    name: str,
    bands: tuple[int, int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, SceneInfo]:
    """Decode an encoded scene into ``(H, W, 3)`` uint8 RGB and a :class:`SceneInfo`.

    data: the bytes of a .tif/.tiff/.jpg/.jpeg/.png file.
    name: only its suffix is used (case-insensitive) to pick the decoder; it may be a
        URL or a tar member name and never needs to exist on disk.
    bands: 1-based band numbers mapped to R, G, B (TIFF only). None picks bands 1,2,3
        when the file has at least three, and band 1 as grey otherwise (a 2-band file is
        usually grey+alpha or two polarisations, neither of which is a colour). JPEG and
        PNG are always decoded to their RGB rendering and ignore ``bands``.
    max_pixels: files whose width*height is above this are refused from the header,
        before any pixel is decoded.

    Data that is not uint8 is stretched per band between its 2nd and 98th percentile
    over valid pixels; pixels that are nodata (or masked, or alpha 0) come out as 0.
    Raises SceneDecodeError, with a one-line reason, for any problem with the data.
    """
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in SCENE_SUFFIXES:
        raise SceneDecodeError(
            f"unsupported file type {suffix or '(no suffix)'!r}; "
            f"expected one of {', '.join(SCENE_SUFFIXES)}"
        )
    if len(data) == 0:
        raise SceneDecodeError("empty file (0 bytes)")
    if bands is not None and (len(bands) != 3 or min(bands) < 1):
        # A caller bug rather than bad data, hence not SceneDecodeError.
        raise ValueError(f"bands must be three 1-based band numbers, got {bands!r}")
    if suffix in TIFF_SUFFIXES:
        if not data.startswith(_TIFF_MAGIC):
            raise SceneDecodeError("not a valid TIFF file")
        from dahash_index.scenes.geotiff import decode_gdal  # rasterio: only when a TIFF comes

        return decode_gdal(data, "GTiff", "TIFF", bands, max_pixels)
    kind = "PNG" if suffix == ".png" else "JPEG"
    if data.startswith(_PNG_MAGIC) and len(data) > 24 and data[24] == 16:
        # 16-bit PNG: Pillow would cut 16-bit RGB down to its high byte, GDAL keeps all
        # 16 bits, so it gets the same percentile stretch as a 16-bit TIFF.
        from dahash_index.scenes.geotiff import decode_gdal

        return decode_gdal(data, "PNG", kind, None, max_pixels)
    return _decode_pillow(data, kind, max_pixels)


# --- JPEG / PNG through Pillow -------------------------------------------------------


def _decode_pillow(data: bytes, kind: str, max_pixels: int) -> tuple[np.ndarray, SceneInfo]:
    try:
        # Our own max_pixels check is the policy; Pillow's warning (above its
        # MAX_IMAGE_PIXELS) would only be noise, its hard error is handled below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS)
    except Image.DecompressionBombError as exc:
        raise _pillow_bomb(exc, max_pixels) from None
    except Image.UnidentifiedImageError:
        if data.startswith(_PILLOW_MAGIC):  # the right signature, then garbage or EOF
            raise SceneDecodeError(f"truncated or corrupt {kind}: header unreadable") from None
        raise SceneDecodeError(f"not a valid {kind} file") from None
    except MemoryError:
        raise
    except Exception as exc:
        raise SceneDecodeError(f"truncated or corrupt {kind}: {short_reason(exc)}") from None

    with img:
        width, height = img.size
        check_pixels(width, height, max_pixels)  # Image.open read the header only
        try:
            # Pillow leaves truncated data undetected only if the process-wide
            # ImageFile.LOAD_TRUNCATED_IMAGES was set to True; we never set it.
            img.load()
            rgb = _pillow_rgb(img)
        except MemoryError:
            raise
        except Exception as exc:
            raise SceneDecodeError(f"truncated or corrupt {kind}: {short_reason(exc)}") from None
        info = SceneInfo(
            width=width,
            height=height,
            bands=len(img.getbands()),
            dtype=_pillow_dtype(img.mode),
            datetime=exif_datetime(img),
        )
    return rgb, info


def _pillow_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.array(img, dtype=np.uint8)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        # Transparent pixels are nodata: composite over black so they come out as 0.
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[:, :, :3] * rgba[:, :, 3:] + 127) // 255
        return rgb.astype(np.uint8)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def _pillow_dtype(mode: str) -> str:
    # 16-bit PNGs never get here (see decode_scene), so the data is 8-bit or bilevel.
    return "bool" if mode == "1" else "uint8"


def exif_datetime(source: Image.Image | bytes | None) -> str | None:
    """The capture time in an image's EXIF, ISO 8601; source: a Pillow image, or a JPEG's
    EXIF APP1 payload (``b"Exif\\0\\0"...``, what Pillow keeps as ``info["exif"]``)."""
    if source is None:
        return None
    try:
        if isinstance(source, bytes):
            exif = Image.Exif()
            exif.load(source)
        else:
            exif = source.getexif()
        # DateTimeOriginal (in the Exif sub-IFD) is the capture time; DateTime is the fallback.
        value = exif.get_ifd(0x8769).get(36867) or exif.get(306)
    except Exception:  # broken EXIF is common and never worth losing the pixels over
        return None
    return iso_datetime(value) if isinstance(value, str) and value.strip("\x00 ") else None


def _pillow_bomb(exc: Exception, max_pixels: int) -> SceneDecodeError:
    # Pillow refuses images above 2 * Image.MAX_IMAGE_PIXELS before we see their size;
    # its message carries the pixel count.
    m = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = int(m[1]) if m else None
    if pixels is not None and pixels > max_pixels:
        return SceneDecodeError(f"image has {pixels} pixels, above the limit of {max_pixels}")
    return SceneDecodeError(
        f"image is above Pillow's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS): "
        f"{short_reason(exc)}"
    )
