"""The GPU path, tested on the CPU where it is the same code: uint8 hand-over through shared
memory, the resize where the network runs, batched JPEG decoding with its CPU fallback,
precision; and, where CUDA is present, nvJPEG and the GPU's codes against the CPU's."""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import UCMERCED
from helpers import UCMERCED_TIF as TIF_SAMPLE
from PIL import Image

from dahash_index.build.decode_pool import DecodePool, decode_for_index, defer_for_device
from dahash_index.build.shared_images import discard_images, receive_images, share_images
from dahash_index.model.backbones import image_to_tensor
from dahash_index.model.encoder import check_device, default_batch_size
from dahash_index.model.network_input import network_input, upload
from dahash_index.model.precision import (
    check_precision,
    default_precision,
    precision_scope,
    round_to_tf32,
)
from dahash_index.scenes.decode import decode_scene
from dahash_index.scenes.device_jpeg import (
    JpegHeader,
    decode_batch,
    decode_jpegs,
    defer_jpeg,
    device_decodable,
    jpeg_header,
)
from dahash_index.scenes.scene import SceneDecodeError
from dahash_index.sources.shards import SceneBytes

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device on this machine")


def _jpeg(image: np.ndarray, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, "JPEG", **options)
    return out.getvalue()


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _smooth(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.uint8)


def _corrupt_jpeg() -> bytes:
    """A JPEG whose markers are sound (it goes to the device decoder) but whose first
    Huffman table is garbage: Pillow refuses it ("broken data stream")."""
    data = bytearray(_jpeg(_noise(64, 80), quality=90))
    pos = 2
    while data[pos + 1] != 0xC4:  # the first DHT segment
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    length = int.from_bytes(data[pos + 2:pos + 4], "big")
    data[pos + 5:pos + 2 + length] = b"\xff" * (length - 3)
    return bytes(data)


def _scene(name: str, data: bytes) -> SceneBytes:
    return SceneBytes(url=f"/s/a/{name}", shard="a", member=None, label=None, data=data)


# --- the network's input: uint8 in, resized where the network runs ----------------------------


def test_network_input_is_image_to_tensor_bit_for_bit():
    images = [_noise(256, 256, 0), _noise(250, 301, 1), _noise(299, 299, 2), _noise(256, 256, 3)]
    expected = torch.stack([image_to_tensor(image) for image in images])
    got = network_input(upload(images, CPU))
    assert got.dtype == torch.float32 and got.shape == (4, 3, 299, 299)
    assert torch.equal(got, expected)  # order kept across the size groups


def test_upload_refuses_what_is_not_hw3_uint8():
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 image"):
        upload([np.zeros((8, 8), np.uint8)], CPU)
    with pytest.raises(ValueError, match="float32"):
        upload([np.zeros((8, 8, 3), np.float32)], CPU)
    with pytest.raises(ValueError, match="no images"):
        network_input([])


# --- shared memory hand-over ----------------------------------------------------------------


def _leftover_blocks() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob("psm_*")} if shm.is_dir() else set()


def test_shared_images_round_trip_and_unlink():
    before = _leftover_blocks()
    images = [_noise(5, 7, 0), _noise(3, 2, 1), np.zeros((0, 4, 3), np.uint8)]
    shared = share_images(images)
    assert shared.shapes == ((5, 7, 3), (3, 2, 3), (0, 4, 3))
    back = receive_images(shared)
    for a, b in zip(images, back, strict=True):
        np.testing.assert_array_equal(a, b)
    discard_images(shared)  # already unlinked: nothing to do, no error
    assert share_images([]).name is None and receive_images(share_images([])) == []
    assert _leftover_blocks() <= before


def test_decode_processes_hand_over_the_same_pixels_as_in_line(tmp_path):
    png = io.BytesIO()
    Image.fromarray(_noise(12, 16)).save(png, "PNG")
    scenes = [_scene(f"{i}.png", png.getvalue()) for i in range(40)]
    scenes[7] = _scene("bad.png", b"not a png")
    scenes[20] = _scene("20.jpg", _jpeg(_smooth(40, 30)))
    decode = partial(decode_for_index, bands=None, max_pixels=10**8)
    in_line = list(DecodePool(0).map(decode, scenes, 64))
    before = _leftover_blocks()
    pool = DecodePool(2)
    try:
        shared = list(pool.map(decode, scenes, 64))
    finally:
        pool.shutdown()
    assert len(shared) == len(in_line) == 40
    for (row_a, image_a, error_a), (row_b, image_b, error_b) in zip(in_line, shared,
                                                                    strict=True):
        assert row_a == row_b and error_a == error_b
        if image_a is None:
            assert image_b is None and "bad.png" in row_a["url"]
        else:
            np.testing.assert_array_equal(image_a, image_b)
    assert _leftover_blocks() <= before


def test_jpeg_headers_for_the_device_are_read_in_line_in_order():
    """With in_line (what a GPU build does), JPEGs left to the device never go to a decode
    process; every scene still comes out in order, as decode_for_index gives it."""
    png = io.BytesIO()
    Image.fromarray(_noise(12, 16)).save(png, "PNG")
    jpeg = _jpeg(_smooth(40, 30))
    cmyk = io.BytesIO()
    Image.fromarray(_smooth(24, 32)).convert("CMYK").save(cmyk, "JPEG")
    scenes = [_scene(f"{i}.jpg", jpeg) for i in range(40)]  # whole chunks of JPEGs
    scenes[3] = _scene("3.png", png.getvalue())
    scenes[5] = _scene("cmyk.jpg", cmyk.getvalue())  # a JPEG the device cannot take
    scenes[33] = _scene("huge.jpg", _jpeg(_noise(300, 400)))  # above max_pixels
    decode = partial(decode_for_index, bands=None, max_pixels=100_000, defer_jpegs=True)
    in_line = partial(defer_for_device, max_pixels=100_000)
    expected = [decode(scene) for scene in scenes]
    handled_here = [in_line(scene) is not None for scene in scenes]
    assert handled_here.count(False) == 2  # the PNG and the CMYK JPEG
    pool = DecodePool(2)
    try:
        got = list(pool.map(decode, scenes, 64, in_line))
    finally:
        pool.shutdown()
    assert len(got) == len(expected)
    for (row_a, image_a, error_a), (row_b, image_b, error_b) in zip(expected, got,
                                                                    strict=True):
        assert row_a == row_b and error_a == error_b
        if isinstance(image_a, np.ndarray):
            np.testing.assert_array_equal(image_a, image_b)
        else:
            assert image_a == image_b
    assert "above the limit" in got[33][2]
    assert isinstance(got[5][1], np.ndarray)  # decoded by a decode process


def test_a_consumer_that_stops_early_leaves_no_shared_block():
    png = io.BytesIO()
    Image.fromarray(_noise(64, 64)).save(png, "PNG")
    scenes = [_scene(f"{i}.png", png.getvalue()) for i in range(200)]
    before = _leftover_blocks()
    pool = DecodePool(2)
    try:
        results = pool.map(partial(decode_for_index, bands=None, max_pixels=10**8), scenes, 160)
        next(results)
        results.close()  # a shard given up half way
    finally:
        pool.shutdown()
    assert _leftover_blocks() <= before


# --- pixel for pixel: today's decode and the new path --------------------------------------------


@pytest.mark.realdata
@pytest.mark.realdata
def test_tiff_through_the_new_path_is_todays_decode():
    files = sorted(TIF_SAMPLE.glob("*/*.tif"))[:6]
    decode = partial(decode_for_index, bands=None, max_pixels=10**8, defer_jpegs=True)
    pool = DecodePool(2)
    try:
        decoded = list(pool.map(decode, [_scene(p.name, p.read_bytes()) for p in files], 16))
    finally:
        pool.shutdown()
    for path, (_, image, error) in zip(files, decoded, strict=True):
        assert error is None and isinstance(image, np.ndarray)  # TIFFs are never deferred
        np.testing.assert_array_equal(image, decode_scene(path.read_bytes(), path.name)[0])


@pytest.mark.realdata
def test_batched_jpeg_decode_on_the_cpu_is_pillows_pixel_for_pixel():
    files = sorted(UCMERCED.glob("*/*.jpg"))[::50]
    items = []
    for path in files:
        data = path.read_bytes()
        deferred = defer_jpeg(data, path.name, 10**8)
        assert deferred is not None, path
        items.append(deferred[0])
    decoded = decode_jpegs(items, CPU)
    for path, image in zip(files, decoded, strict=True):
        np.testing.assert_array_equal(image.numpy(), decode_scene(path.read_bytes(),
                                                                  path.name)[0])


@pytest.mark.parametrize("options", [dict(quality=75, subsampling=2), dict(quality=95),
                                     dict(progressive=True)], ids=["4:2:0", "4:4:4", "progr"])
def test_synthetic_jpegs_decode_alike(options):
    data = _jpeg(_noise(97, 131), **options)
    (image,) = decode_jpegs([defer_jpeg(data, "x.jpg", 10**8)[0]], CPU)
    np.testing.assert_array_equal(image.numpy(), decode_scene(data, "x.jpg")[0])


def test_grey_jpeg_is_deferred_and_comes_out_rgb():
    data = _jpeg(_smooth(20, 30)[:, :, 0])
    jpeg, info = defer_jpeg(data, "g.jpg", 10**8)
    assert info.bands == 1 and (info.width, info.height) == (30, 20)
    (image,) = decode_jpegs([jpeg], CPU)
    np.testing.assert_array_equal(image.numpy(), decode_scene(data, "g.jpg")[0])


def test_cmyk_jpeg_is_left_to_the_cpu_and_decoded_correctly():
    rgb = _smooth(24, 32)
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, "JPEG", quality=95)
    data = cmyk.getvalue()
    assert jpeg_header(data).components == 4 and not device_decodable(data)
    row, image, error = decode_for_index(_scene("c.jpg", data), None, 10**8, defer_jpegs=True)
    assert error is None and isinstance(image, np.ndarray)  # decoded here, not deferred
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(image, expected)
    assert row["bands"] == 4
    assert np.abs(image.astype(int) - rgb).mean() < 8  # really the picture, not inverted


def test_jpeg_header_parsing():
    data = _jpeg(_noise(8, 12))
    assert jpeg_header(data) == JpegHeader(0xC0, 8, 8, 12, 3, None)
    assert jpeg_header(_jpeg(_noise(8, 8), progressive=True)).sof == 0xC2
    # SOI, an APP0 of 16 bytes, a 12-bit extended frame of 1 component, 8 x 8
    app0 = b"\xff\xe0\x00\x10" + b"JFIF\x00" + bytes(9)
    sof1 = b"\xff\xc1\x00\x0b\x0c\x00\x08\x00\x08\x01\x01\x11\x00"
    sos = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
    assert jpeg_header(b"\xff\xd8" + app0 + sof1 + sos + b"\xff\xd9") == JpegHeader(
        0xC1, 12, 8, 8, 1, None)
    assert not device_decodable(b"\xff\xd8" + app0 + sof1 + sos + b"\xff\xd9")  # 12-bit
    # A frame whose height a DNL marker gives later: not for the device.
    sof0_dnl = b"\xff\xc0\x00\x0b\x08\x00\x00\x00\x08\x01\x01\x11\x00"
    assert jpeg_header(b"\xff\xd8" + sof0_dnl + sos + b"\xff\xd9").height == 0
    assert not device_decodable(b"\xff\xd8" + sof0_dnl + sos + b"\xff\xd9")
    assert jpeg_header(b"\x89PNG\r\n") is None and jpeg_header(b"\xff\xd8\x00") is None
    assert jpeg_header(b"\xff\xd8" + app0[:10]) is None  # a segment cut short
    assert not device_decodable(data[:-2])  # no end-of-image marker: truncated


def _with_exif(image: np.ndarray, tags: dict[int, str], original: str | None = None) -> bytes:
    exif = Image.Exif()
    exif.update(tags)
    if original is not None:
        exif.get_ifd(0x8769)[36867] = original
    return _jpeg(image, exif=exif.tobytes())


def test_header_metadata_is_the_cpu_decodes():
    """defer_jpeg reads the header alone; its SceneInfo must be what decode_scene gives."""
    cases = {
        "plain": _jpeg(_smooth(33, 47)),
        "grey": _jpeg(_smooth(20, 30)[:, :, 0]),
        "progressive": _jpeg(_noise(40, 24), progressive=True),
        "datetime": _with_exif(_smooth(16, 16), {306: "2021:05:04 10:11:12"}),
        "original": _with_exif(_smooth(16, 16), {306: "2021:05:04 10:11:12"},
                               "2019:01:02 03:04:05"),
        "blank date": _with_exif(_smooth(16, 16), {306: "    "}),
        "no date": _with_exif(_smooth(16, 16), {271: "camera"}),
    }
    for name, data in cases.items():
        jpeg, info = defer_jpeg(data, "x.jpg", 10**8)
        expected = decode_scene(data, "x.jpg")[1]
        assert info == expected, name
        assert (jpeg.width, jpeg.height) == (expected.width, expected.height)
    assert defer_jpeg(cases["original"], "x.jpg", 10**8)[1].datetime.startswith("2019-01-02")


@pytest.mark.realdata
def test_header_metadata_of_real_scenes_is_the_cpu_decodes():
    for path in sorted(UCMERCED.glob("*/*.jpg"))[::25]:
        data = path.read_bytes()
        assert defer_jpeg(data, path.name, 10**8)[1] == decode_scene(data, path.name)[1], path


def test_corrupt_jpeg_falls_back_and_is_reported():
    good = _jpeg(_noise(64, 80), quality=90)
    corrupt = _corrupt_jpeg()
    assert device_decodable(corrupt)  # its header is fine: only decoding finds out
    items = [defer_jpeg(d, n, 10**8)[0] for d, n in ((good, "a.jpg"), (corrupt, "b.jpg"))]
    decoded = decode_jpegs(items, CPU)
    np.testing.assert_array_equal(decoded[0].numpy(), decode_scene(good, "a.jpg")[0])
    assert isinstance(decoded[1], SceneDecodeError)
    with pytest.raises(SceneDecodeError) as cpu:
        decode_scene(corrupt, "b.jpg")
    assert str(decoded[1]) == str(cpu.value)  # the reason today's decoder gives
    # In a batch: the bad scene leaves it with one error row, the rest is kept in order.
    errors: list[dict] = []
    rows = [{"url": "a.jpg"}, {"url": "b.jpg"}, {"url": "c.png"}]
    images = [items[0], items[1], _noise(4, 4)]
    kept_rows, kept_images = decode_batch(rows, images, CPU, errors.append)
    assert [r["url"] for r in kept_rows] == ["a.jpg", "c.png"]
    assert len(kept_images) == 2 and errors == [{"url": "b.jpg", "reason": str(cpu.value)}]
    assert "\n" not in errors[0]["reason"]  # one line


def test_a_jpeg_above_max_pixels_is_refused_from_its_header():
    data = _jpeg(_noise(40, 50))
    with pytest.raises(SceneDecodeError, match="above the limit of 1000"):
        defer_jpeg(data, "big.jpg", 1000)
    row, image, error = decode_for_index(_scene("big.jpg", data), None, 1000, defer_jpegs=True)
    assert image is None and "above the limit of 1000" in error


# --- precision, device, batch size ---------------------------------------------------------------


def test_round_to_tf32_keeps_ten_mantissa_bits_ties_to_even():
    x = torch.tensor([1.0, 1 + 2**-10, 1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-12, -3.14159265])
    assert round_to_tf32(x).tolist() == [1.0, 1 + 2**-10, 1.0, 1 + 2**-9, 1.0, -3.140625]
    y = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    r = round_to_tf32(y)
    assert r.is_contiguous(memory_format=torch.channels_last)
    assert ((r - y).abs() <= y.abs() * 2**-11).all()


def test_precision_scope_arithmetic_on_the_cpu():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    fp32 = conv(x)
    with precision_scope(CPU, "fp32"):
        assert torch.equal(conv(x), fp32)
    with precision_scope(CPU, "tf32"):
        tf32 = conv(x)
    expected = torch.nn.functional.conv2d(round_to_tf32(x), round_to_tf32(conv.weight),
                                          conv.bias)
    assert torch.equal(tf32, expected) and not torch.equal(tf32, fp32)
    with precision_scope(CPU, "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of fp32, tf32, bf16"):
        check_precision("fp16")


def test_device_defaults_and_errors():
    assert default_precision(CPU) == "fp32" and default_batch_size(CPU) == 32
    assert default_precision(torch.device("cuda")) == "tf32"
    assert check_device("cpu") == CPU
    with pytest.raises(ValueError, match="device must be cpu, cuda or cuda:N, got 'gpu'"):
        check_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no such CUDA device on this machine"):
            check_device("cuda")


def test_build_refuses_a_bad_device_or_precision_in_one_line(tmp_path, run_cli):
    for flags, needle in ((["--device", "gpu"], "device must be cpu, cuda or cuda:N"),
                          (["--precision", "fp16"], "'fp16' is not one of")):
        result = run_cli("build", "--shards", str(tmp_path), "--index", str(tmp_path / "i"),
                         "--model", str(tmp_path / "m.pt"), *flags)
        assert result.returncode != 0 and needle in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


# --- a build through the device path, on the CPU ---------------------------------------------


def _jpeg_shard(root: Path) -> Path:
    shard = root / "shards" / "a"
    shard.mkdir(parents=True)
    for i in range(5):
        (shard / f"{i}.jpg").write_bytes(_jpeg(np.roll(_smooth(120, 140), 9 * i, axis=1)))
    (shard / "corrupt.jpg").write_bytes(_corrupt_jpeg())
    return root / "shards"


def test_device_jpeg_build_equals_the_cpu_build_and_records_precision(
        tmp_path, arithmetic_checkpoint, run_cli):
    from dahash_index.build.indexer import build_index
    from dahash_index.build.job import BuildOptions
    from dahash_index.query.scene_index import SceneIndex
    from dahash_index.store import IndexReader

    shards = _jpeg_shard(tmp_path)
    reports = {}
    for name, options in (("cpu", BuildOptions(device="cpu")),
                          ("deferred", BuildOptions(device="cpu", device_jpegs=True,
                                                    workers=1, batch_size=4)),
                          ("tf32", BuildOptions(device="cpu", precision="tf32"))):
        reports[name] = build_index(str(shards), tmp_path / name, arithmetic_checkpoint,
                                    options, progress=False)
        assert (reports[name].scenes, reports[name].errors) == (5, 1), name
    readers = {name: IndexReader.open(tmp_path / name) for name in reports}
    codes = {name: r.codes() for name, r in readers.items()}
    np.testing.assert_array_equal(codes["cpu"], codes["deferred"])  # bit for bit
    assert np.unpackbits(codes["cpu"] ^ codes["tf32"]).mean() <= 0.01
    errors = readers["deferred"].errors().to_pylist()
    assert len(errors) == 1 and errors[0]["url"].endswith("corrupt.jpg")
    assert "truncated or corrupt JPEG" in errors[0]["reason"]
    precisions = {name: {e.precision for e in r.manifest.shards.values()}
                  for name, r in readers.items()}
    assert precisions == {"cpu": {"fp32"}, "deferred": {"fp32"}, "tf32": {"tf32"}}
    info = run_cli("info", str(tmp_path / "tf32"), check=True)
    assert "precision  tf32 (1 shard(s))" in info.stdout
    # An index built in TF32 answers fp32 queries (and the reverse).
    scene = str(shards / "a" / "0.jpg")
    for built, query_precision in (("tf32", "fp32"), ("cpu", "tf32")):
        index = SceneIndex.open(tmp_path / built, device="cpu", precision=query_precision)
        hits = index.query([scene], top=1).to_pylist()
        assert hits[0]["url"] == scene and hits[0]["distance"] <= 1


# --- the GPU itself (skipped without CUDA) ---------------------------------------------------


@needs_cuda
@pytest.mark.realdata
def test_nvjpeg_stays_within_the_documented_tolerance():
    """nvJPEG's IDCT is not libjpeg's: pixels may differ by a few levels (README)."""
    files = sorted(UCMERCED.glob("*/*.jpg"))[::20]
    items = [defer_jpeg(p.read_bytes(), p.name, 10**8)[0] for p in files]
    gpu = decode_jpegs(items, torch.device("cuda"))
    for path, image in zip(files, gpu, strict=True):
        assert image.is_cuda
        diff = np.abs(image.cpu().numpy().astype(int)
                      - decode_scene(path.read_bytes(), path.name)[0].astype(int))
        assert diff.max() <= 8 and diff.mean() < 1.0, path


@needs_cuda
@pytest.mark.realdata
def test_gpu_codes_agree_with_the_cpus(arithmetic_checkpoint):
    from dahash_index.model.encoder import SceneEncoder

    files = sorted(UCMERCED.glob("*/*.jpg"))[::20]
    images = [decode_scene(p.read_bytes(), p.name)[0] for p in files]
    cpu = SceneEncoder.from_path(arithmetic_checkpoint, "cpu").encode(images)
    for precision in ("fp32", "tf32"):
        gpu = SceneEncoder.from_path(arithmetic_checkpoint, "cuda", precision).encode(images)
        assert np.unpackbits(cpu ^ gpu).mean() <= 0.001, precision
