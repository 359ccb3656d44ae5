"""Tests for dahash_index.scenes.decode: decoding scenes to RGB uint8 and their SceneInfo."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from affine import Affine
from helpers import DATASETS
from PIL import Image, ImageFile
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from rasterio.warp import transform_bounds

from dahash_index.scenes.decode import decode_scene
from dahash_index.scenes.scene import (
    DEFAULT_MAX_PIXELS,
    SCENE_SUFFIXES,
    SceneDecodeError,
    SceneInfo,
    parse_bands,
    stretch_to_uint8,
)

UTM33 = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)  # 10 m pixels, north-up


# --- builders ------------------------------------------------------------------------


def tiff_bytes(arr: np.ndarray, tags: dict | None = None, **profile) -> bytes:
    """Write a (bands, H, W) array as a GeoTIFF (or a plain TIFF without crs) in memory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # plain TIFFs on purpose
        with MemoryFile() as mem:
            with mem.open(
                driver="GTiff",
                width=arr.shape[2],
                height=arr.shape[1],
                count=arr.shape[0],
                dtype=arr.dtype,
                **profile,
            ) as dst:
                dst.write(arr)
                for ns, values in (tags or {}).items():
                    if ns is None:
                        dst.update_tags(**values)
                    else:
                        dst.update_tags(ns=ns, **values)
            return mem.read()


def pil_bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_claiming(width: int, height: int, depth: int = 8) -> bytes:
    """A 1x1 PNG whose IHDR is patched to claim width x height (valid CRC, no pixels)."""
    data = bytearray(pil_bytes(Image.new("RGB", (1, 1)), "PNG"))
    # Signature (8) + length (4) + b'IHDR' (4), then width, height (big-endian), depth.
    data[16:25] = struct.pack(">IIB", width, height, depth)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def sparse_tiff(width: int, height: int) -> bytes:
    """A tiled TIFF with no tiles written: its header claims the size, the file is tiny."""
    arr_profile = dict(tiled=True, blockxsize=4096, blockysize=4096, SPARSE_OK=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as mem:
            with mem.open(
                driver="GTiff", width=width, height=height, count=1, dtype="uint8", **arr_profile
            ):
                pass
            return mem.read()


# A 4-band uint16 scene, 11 rows x 10 cols: in every band the first 101 pixels take the
# values 1000 + 10*k for k = 0..100, in a different order per band, and the last 9
# pixels are nodata (0). So per band the 2nd/98th percentiles are 1020/1980 and a pixel
# of rank k maps to clip(rint((k - 2) * 255 / 96), 0, 255).
H, W, NVALID = 11, 10, 101
RANKS = np.stack(
    [
        np.arange(NVALID),
        np.arange(NVALID)[::-1],
        (np.arange(NVALID) * 37) % NVALID,
        (np.arange(NVALID) * 53 + 7) % NVALID,
    ]
)


def expected_band(b: int) -> np.ndarray:
    """(H, W) uint8 expected for 1-based band b of the scene above."""
    out = np.clip(np.rint((RANKS[b - 1] - 2) * 255 / 96), 0, 255)
    return np.concatenate([out, np.zeros(H * W - NVALID)]).reshape(H, W).astype(np.uint8)


def uint16_scene(**profile) -> bytes:
    arr = np.zeros((4, H * W), dtype=np.uint16)
    arr[:, :NVALID] = (1000 + 10 * RANKS) * np.arange(1, 5)[:, None]  # band b scaled by b
    return tiff_bytes(
        arr.reshape(4, H, W),
        tags={None: {"TIFFTAG_DATETIME": "2021:06:15 10:30:00"}},
        crs="EPSG:32633",
        transform=UTM33,
        nodata=0,
        **profile,
    )


def smooth_rgb(h: int = 64, w: int = 64) -> np.ndarray:
    """(h, w, 3) uint8 gradients: JPEG-friendly, so lossy round trips stay close."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)], -1)


# --- parse_bands ---------------------------------------------------------------------


def test_parse_bands_accepts_three_1_based_ints():
    assert parse_bands("3,2,1") == (3, 2, 1)
    assert parse_bands(" 4, 3 ,2 ") == (4, 3, 2)
    assert parse_bands("1,1,1") == (1, 1, 1)


@pytest.mark.parametrize("text", ["3,2", "1,2,3,4", "a,b,c", "", "1,,2", "1.5,2,3", "-1,2,3"])
def test_parse_bands_rejects_malformed(text):
    with pytest.raises(ValueError, match="three comma-separated band numbers"):
        parse_bands(text)


def test_parse_bands_rejects_zero():
    with pytest.raises(ValueError, match="1-based"):
        parse_bands("0,1,2")


# --- GeoTIFF -------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [None, "deflate"])
def test_geotiff_uint16_metadata_stretch_and_nodata(compress):
    rgb, info = decode_scene(uint16_scene(compress=compress), "scene.tif")

    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    assert (info.width, info.height, info.bands, info.dtype) == (W, H, 4, "uint16")
    assert info.crs == "EPSG:32633"
    assert info.bounds == (500000.0, 5000000.0 - 10 * H, 500000.0 + 10 * W, 5000000.0)
    want = transform_bounds("EPSG:32633", "EPSG:4326", *info.bounds)
    assert info.bounds_wgs84 == pytest.approx(want)
    west, south, east, north = info.bounds_wgs84
    assert 14.9 < west < east < 15.1 and 45.1 < south < north < 45.2  # central meridian 15E
    assert info.pixel_size == (10.0, 10.0)
    assert info.datetime == "2021-06-15T10:30:00"

    # Hand-checked stretch points of band 1 (rank k = flat pixel index there).
    flat = rgb[:, :, 0].ravel()
    assert flat[0] == 0 and flat[2] == 0  # at/below the 2nd percentile
    assert flat[26] == 64  # (26 - 2) * 255 / 96 = 63.75
    assert flat[74] == 191  # (74 - 2) * 255 / 96 = 191.25
    assert flat[98] == 255 and flat[100] == 255  # at/above the 98th percentile
    assert (flat[NVALID:] == 0).all()  # nodata
    for c, b in enumerate((1, 2, 3)):
        # float32 vs float64 may round the three exact .5 ties differently.
        assert np.abs(rgb[:, :, c].astype(int) - expected_band(b)).max() <= 1


def test_geotiff_band_selection():
    data = uint16_scene()
    rgb, _ = decode_scene(data, "scene.tif", bands=(4, 3, 2))
    for c, b in enumerate((4, 3, 2)):
        assert np.abs(rgb[:, :, c].astype(int) - expected_band(b)).max() <= 1
    grey, _ = decode_scene(data, "scene.tif", bands=(4, 4, 4))
    assert (grey[:, :, 0] == grey[:, :, 1]).all() and (grey[:, :, 0] == rgb[:, :, 0]).all()


def test_geotiff_band_out_of_range():
    with pytest.raises(SceneDecodeError, match=r"^band 5 requested, file has 4$"):
        decode_scene(uint16_scene(), "scene.tif", bands=(5, 1, 1))


def test_bands_argument_must_be_three_positive_ints():
    with pytest.raises(ValueError, match="1-based"):
        decode_scene(uint16_scene(), "scene.tif", bands=(0, 1, 2))


def test_acquisition_datetime_in_any_namespace_beats_file_datetime():
    arr = np.ones((1, 4, 4), dtype=np.uint8)
    tags = {
        None: {"TIFFTAG_DATETIME": "2021:06:15 10:30:00"},
        "IMAGERY": {"ACQUISITIONDATETIME": "2020-01-02T03:04:05Z"},
    }
    _, info = decode_scene(tiff_bytes(arr, tags=tags, crs="EPSG:4326"), "a.tif")
    assert info.datetime == "2020-01-02T03:04:05Z"


def test_plain_tiff_has_no_georeferencing_and_warns_nothing():
    arr = np.moveaxis(smooth_rgb(), -1, 0).astype(np.uint8)
    data = tiff_bytes(arr)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb, info = decode_scene(data, "PLAIN.TIF")
    assert (rgb == smooth_rgb()).all()  # uint8 passes through unchanged
    assert info == SceneInfo(width=64, height=64, bands=3, dtype="uint8")


def test_uint8_nodata_pixels_become_zero_and_others_unchanged():
    arr = np.full((3, 4, 4), 200, dtype=np.uint8)
    arr[:, 0, 0] = 255
    rgb, _ = decode_scene(tiff_bytes(arr, nodata=255), "a.tif")
    assert (rgb[0, 0] == 0).all()
    assert (rgb.reshape(-1, 3)[1:] == 200).all()


@pytest.mark.parametrize("count", [1, 2])
def test_one_or_two_bands_give_band_1_as_grey(count):
    arr = np.stack([np.arange(16, dtype=np.uint8).reshape(4, 4) * (b + 1) for b in range(count)])
    rgb, info = decode_scene(tiff_bytes(arr), "a.tif")
    assert info.bands == count
    for c in range(3):
        assert (rgb[:, :, c] == arr[0]).all()


def test_jpeg_compressed_tiff_decodes():
    src = smooth_rgb()
    data = tiff_bytes(np.moveaxis(src, -1, 0).astype(np.uint8), compress="JPEG")
    rgb, info = decode_scene(data, "a.tiff")
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert info.dtype == "uint8" and info.bands == 3
    assert np.abs(rgb.astype(int) - src).mean() < 3


def test_float_tiff_is_stretched_and_nan_is_nodata():
    arr = np.linspace(0.0, 1.0, 3 * 100, dtype=np.float32).reshape(3, 10, 10)
    arr[:, 0, 0] = np.nan
    rgb, info = decode_scene(tiff_bytes(arr), "a.tif")
    assert info.dtype == "float32"
    assert (rgb[0, 0] == 0).all()
    assert rgb[:, :, 0].max() == 255 and rgb[0, 1:, 0].min() == 0


def test_palette_tiff_is_expanded():
    with MemoryFile() as mem:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with mem.open(
                driver="GTiff", width=2, height=1, count=1, dtype="uint8", photometric="palette"
            ) as dst:
                dst.write(np.array([[[0, 1]]], dtype=np.uint8))
                dst.write_colormap(1, {0: (255, 0, 0, 255), 1: (0, 0, 255, 255)})
        data = mem.read()
    rgb, _ = decode_scene(data, "p.tif")
    assert rgb.tolist() == [[[255, 0, 0], [0, 0, 255]]]


def test_stretch_to_uint8_constant_and_empty():
    assert (stretch_to_uint8(np.full((2, 2), 7, np.uint16)) == 0).all()
    none_valid = np.zeros((2, 2), bool)
    assert (stretch_to_uint8(np.arange(4, dtype=np.uint16).reshape(2, 2), none_valid) == 0).all()


# --- JPEG / PNG ----------------------------------------------------------------------


def test_jpeg_and_png_rgb():
    src = smooth_rgb(32, 48)
    img = Image.fromarray(src.astype(np.uint8))
    png, info = decode_scene(pil_bytes(img, "PNG"), "a.png")
    assert (png == src).all()
    assert info == SceneInfo(width=48, height=32, bands=3, dtype="uint8")
    jpg, _ = decode_scene(pil_bytes(img, "JPEG", quality=95), "s3://bucket/x/A.JPEG")
    assert jpg.shape == (32, 48, 3) and np.abs(jpg.astype(int) - src).mean() < 3


def test_png_modes_become_rgb():
    grey = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20)
    rgb, info = decode_scene(pil_bytes(grey, "PNG"), "g.png")
    assert info.bands == 1 and (rgb == np.asarray(grey)[:, :, None]).all()

    pal = grey.convert("P")
    rgb, _ = decode_scene(pil_bytes(pal, "PNG"), "p.png")
    assert (rgb == np.asarray(grey)[:, :, None]).all()

    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = 100
    rgba[..., 3] = [[255, 0], [255, 255]]
    rgb, info = decode_scene(pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG"), "a.png")
    assert info.bands == 4
    assert rgb[0, 1].tolist() == [0, 0, 0]  # transparent = nodata
    assert rgb[0, 0].tolist() == [100, 100, 100]


def test_png_16bit_is_stretched_like_tiff():
    values = np.zeros(H * W, dtype=np.uint16)
    values[:NVALID] = 1000 + 10 * RANKS[0]
    values[NVALID:] = 1000  # no nodata in PNG: 9 more pixels at the low end
    img = Image.fromarray(values.reshape(H, W))
    rgb, info = decode_scene(pil_bytes(img, "PNG"), "a.png")
    assert info.dtype == "uint16" and info.bands == 1
    lo, hi = np.percentile(values, [2, 98])
    want = np.clip(np.rint((values.astype(float) - lo) * 255 / (hi - lo)), 0, 255)
    assert np.abs(rgb[:, :, 0].ravel().astype(int) - want).max() <= 1
    assert (rgb[:, :, 0] == rgb[:, :, 2]).all()


def test_png_16bit_rgb_keeps_16_bits_and_matches_tiff():
    arr = np.zeros((3, H * W), dtype=np.uint16)
    arr[:, :NVALID] = 1000 + 10 * RANKS[:3]
    arr = arr.reshape(3, H, W)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as mem:
            with mem.open(driver="PNG", width=W, height=H, count=3, dtype="uint16") as dst:
                dst.write(arr)
            png = mem.read()
    rgb, info = decode_scene(png, "a.png")
    assert (info.bands, info.dtype) == (3, "uint16")
    assert (rgb == decode_scene(tiff_bytes(arr), "a.tif")[0]).all()
    assert len(np.unique(rgb[:, :, 0])) > 64  # a high-byte cut would leave very few levels


def test_jpeg_exif_datetime():
    exif = Image.Exif()
    exif[306] = "2019:07:08 09:10:11"
    data = pil_bytes(Image.new("RGB", (8, 8)), "JPEG", exif=exif)
    assert decode_scene(data, "a.jpg")[1].datetime == "2019-07-08T09:10:11"


def test_mislabelled_png_named_jpg_still_decodes():
    data = pil_bytes(Image.new("RGB", (3, 2), (1, 2, 3)), "PNG")
    rgb, _ = decode_scene(data, "really-a-png.jpg")
    assert rgb.shape == (2, 3, 3) and (rgb == [1, 2, 3]).all()


# --- errors --------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", SCENE_SUFFIXES)
def test_empty_file(suffix):
    with pytest.raises(SceneDecodeError, match=r"^empty file \(0 bytes\)$"):
        decode_scene(b"", "x" + suffix)


@pytest.mark.parametrize(
    "name,kind", [("x.tif", "TIFF"), ("x.TIFF", "TIFF"), ("x.jpg", "JPEG"), ("x.png", "PNG")]
)
def test_text_with_image_suffix(name, kind):
    with pytest.raises(SceneDecodeError, match=rf"^not a valid {kind} file$"):
        decode_scene(b"this is a README, not a picture\n" * 10, name)


@pytest.mark.parametrize("name", ["x.gif", "x", "x.tif.json"])
def test_unsupported_suffix(name):
    with pytest.raises(SceneDecodeError, match="unsupported file type"):
        decode_scene(b"GIF89a", name)


def test_truncated_tiff():
    data = tiff_bytes(np.moveaxis(smooth_rgb(), -1, 0).astype(np.uint8))
    with pytest.raises(SceneDecodeError, match=r"^truncated or corrupt TIFF: .+") as err:
        decode_scene(data[: len(data) // 2], "x.tif")
    assert "\n" not in str(err.value) and "/vsimem/" not in str(err.value)


def test_corrupt_tiff_header():
    with pytest.raises(SceneDecodeError, match=r"^truncated or corrupt TIFF: "):
        decode_scene(b"II*\x00" + b"\xff" * 64, "x.tif")


@pytest.mark.parametrize("fmt,suffix,kind", [("JPEG", ".jpg", "JPEG"), ("PNG", ".png", "PNG")])
def test_truncated_jpeg_and_png(fmt, suffix, kind):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # nobody flipped Pillow's global
    rng = np.random.default_rng(0)  # noise: a big file, so half of it is mid-pixels
    data = pil_bytes(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), fmt)
    for cut in (len(data) // 2, 20):
        with pytest.raises(SceneDecodeError, match=rf"^truncated or corrupt {kind}: .+"):
            decode_scene(data[:cut], "x" + suffix)


def test_too_many_pixels_tiff_refused_from_header():
    data = sparse_tiff(100_000, 100_000)
    assert len(data) < 1_000_000
    with pytest.raises(
        SceneDecodeError, match=r"^image is 100000 x 100000 pixels, above the limit of 50000000$"
    ):
        decode_scene(data, "huge.tif")


def test_too_many_pixels_8bit_png_refused_from_header():
    # Below Pillow's own bomb limit (~89M pixels) our check words it...
    with pytest.raises(
        SceneDecodeError, match=r"^image is 8000 x 8000 pixels, above the limit of 50000000$"
    ):
        decode_scene(png_claiming(8000, 8000), "big.png")
    # ...above twice that, Pillow refuses while opening and only the pixel count is known.
    with pytest.raises(
        SceneDecodeError, match=r"^image has 10000000000 pixels, above the limit of 50000000$"
    ):
        decode_scene(png_claiming(100_000, 100_000), "huge.png")


def test_too_many_pixels_16bit_png_refused_from_header():
    with pytest.raises(
        SceneDecodeError, match=r"^image is 100000 x 100000 pixels, above the limit of 50000000$"
    ):
        decode_scene(png_claiming(100_000, 100_000, depth=16), "huge.png")


def test_max_pixels_argument():
    data = uint16_scene()
    with pytest.raises(SceneDecodeError, match=r"^image is 10 x 11 pixels, above the limit of 109"):
        decode_scene(data, "a.tif", max_pixels=109)
    assert decode_scene(data, "a.tif", max_pixels=110)[0].shape == (H, W, 3)
    png = pil_bytes(Image.new("RGB", (10, 11)), "PNG")
    with pytest.raises(SceneDecodeError, match="above the limit of 109$"):
        decode_scene(png, "a.png", max_pixels=109)
    assert DEFAULT_MAX_PIXELS == 50_000_000


def test_scene_decode_error_is_a_value_error():
    assert issubclass(SceneDecodeError, ValueError)


# --- real data -----------------------------------------------------------------------



@pytest.mark.realdata
def test_ucmerced_tif_and_jpg_agree():
    tifs = sorted((DATASETS / "ucmerced-tif-sample").glob("*/*.tif"))
    assert len(tifs) >= 21
    for tif in tifs:
        jpg = DATASETS / "ucmerced" / tif.parent.name / (tif.stem + ".jpg")
        a, ia = decode_scene(tif.read_bytes(), tif.name)
        b, ib = decode_scene(jpg.read_bytes(), jpg.name)
        assert a.dtype == b.dtype == np.uint8
        assert a.shape == b.shape and a.shape[2] == 3, tif
        assert abs(a.shape[0] - 256) <= 8 and abs(a.shape[1] - 256) <= 8, tif
        assert ia.crs is None and (ia.bands, ia.dtype) == (3, "uint8")
        assert (ib.width, ib.height) == (ia.width, ia.height)
        # The JPEGs are quality-95 4:4:4 re-encodes of these very TIFFs.
        assert np.abs(a.astype(int) - b).mean() < 4, tif
