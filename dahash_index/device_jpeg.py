"""JPEG scenes decoded where the network runs: nvJPEG on a GPU, in batches.

A decode process only reads a JPEG's header (``defer_jpeg``: its size, bands and EXIF time
for the metadata row, and whether nvJPEG can take it) and hands over the encoded bytes, a
``JpegData``, 5-10x smaller than the pixels. ``decode_jpegs`` then decodes a batch of them
with ``torchvision.io.decode_jpeg`` on the network's device. What nvJPEG refuses (an image it
cannot decode, or one that comes out another size than its header says) is decoded on the
CPU by ``images.decode_scene``, which also gives the one-line reason for a corrupt file.
JPEGs that nvJPEG does not support are never deferred: CMYK/YCCK (4 components), 12-bit,
arithmetic-coded, and files that do not end with an end-of-image marker (truncated: Pillow
refuses them, nvJPEG might decode them grey).

torchvision's ``decode_jpeg`` also runs on a CPU (libjpeg-turbo, pixel for pixel what Pillow
gives: tests/test_gpu_path.py), which is how the batching and the fallbacks are tested
without a GPU. torchvision is imported on first use only: it costs a cold query a second.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from dahash_index.images import (
    SceneDecodeError,
    SceneInfo,
    check_pixels,
    decode_scene,
    exif_datetime,
)

_SOF_DEVICE = (0xC0, 0xC1, 0xC2)  # baseline, extended and progressive Huffman
_SOF_ANY = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
_STANDALONE = (0x01, *range(0xD0, 0xD8))  # markers without a length (TEM, RSTn)


@dataclass(frozen=True)
class JpegData:
    """A JPEG scene's encoded bytes, to be decoded on the device. name: the file (for the
    CPU fallback's decoder choice and messages); width, height: from its header."""

    data: bytes
    name: str
    width: int
    height: int
    max_pixels: int


def jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """(SOF marker, sample precision in bits, components) of a JPEG, from its frame header;
    None when the markers before it cannot be walked."""
    if not data.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _SOF_ANY:
            if pos + 10 > len(data):
                return None
            return marker, data[pos + 4], data[pos + 9]
        if marker == 0xDA or length < 2:  # scan data before any frame header
            return None
        pos += 2 + length
    return None


def device_decodable(data: bytes) -> bool:
    """Whether nvJPEG can decode this JPEG exactly as libjpeg would: Huffman-coded, 8-bit,
    grey or YCbCr/RGB, and whole (ends with the end-of-image marker)."""
    frame = jpeg_frame(data)
    if frame is None:
        return False
    marker, bits, components = frame
    whole = data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")
    return marker in _SOF_DEVICE and bits == 8 and components in (1, 3) and whole


def defer_jpeg(data: bytes, name: str, max_pixels: int) -> tuple[JpegData, SceneInfo] | None:
    """A JPEG that nvJPEG can take, as its bytes and the SceneInfo its header gives (no pixel
    decoded); None for anything else (decode it on the CPU). Raises SceneDecodeError when
    the image is above ``max_pixels``."""
    if not device_decodable(data):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=("JPEG",))
    except Exception:  # the CPU decode says what is wrong with it
        return None
    with img:
        if img.mode not in ("RGB", "L"):
            return None
        width, height = img.size
        check_pixels(width, height, max_pixels)
        info = SceneInfo(width=width, height=height, bands=len(img.getbands()), dtype="uint8",
                         datetime=exif_datetime(img))
    return JpegData(data, name, width, height, max_pixels), info


def decode_jpegs(items: list[JpegData], device: torch.device
                 ) -> list[torch.Tensor | SceneDecodeError]:
    """Decode on ``device`` -> for each item, an (H, W, 3) uint8 tensor (on ``device``, or on
    the CPU for one decoded by the fallback), or the SceneDecodeError that says why it cannot
    be decoded. One batched call; if it fails, one call per image; then the CPU fallback."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # the bytes are read-only; decode_jpeg only reads them
        warnings.simplefilter("ignore", UserWarning)
        encoded = [torch.frombuffer(item.data, dtype=torch.uint8) for item in items]
    try:
        decoded: list[torch.Tensor | None] = list(
            decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:  # one bad image fails the batch: find it
        decoded = []
        for data in encoded:
            try:
                decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
    out: list[torch.Tensor | SceneDecodeError] = []
    for item, image in zip(items, decoded, strict=True):
        if image is not None and tuple(image.shape) == (3, item.height, item.width):
            out.append(image.permute(1, 2, 0))
            continue
        try:
            pixels, _ = decode_scene(item.data, item.name, None, item.max_pixels)
            out.append(torch.from_numpy(np.ascontiguousarray(pixels)))
        except SceneDecodeError as err:
            out.append(err)
    return out


def decode_deferred(batched: Iterable[tuple[list[dict], list]], device: torch.device,
                    on_error: Callable[[dict], None]) -> Iterator[tuple[list[dict], list]]:
    """Batches whose JpegData are decoded on ``device`` (``decode_jpegs``, one
    call per batch); a scene that cannot be decoded goes to on_error and leaves its batch."""
    for rows, images in batched:
        deferred = [i for i, image in enumerate(images) if isinstance(image, JpegData)]
        if deferred:
            failed = set()
            decoded = decode_jpegs([images[i] for i in deferred], device)
            for i, image in zip(deferred, decoded, strict=True):
                if isinstance(image, SceneDecodeError):
                    on_error(rows[i] | {"reason": str(image)})
                    failed.add(i)
                else:
                    images[i] = image
            if failed:
                rows = [r for i, r in enumerate(rows) if i not in failed]
                images = [x for i, x in enumerate(images) if i not in failed]
        if rows:
            yield rows, images
