"""JPEG scenes decoded where the network runs: nvJPEG on a GPU, in batches.

Only a JPEG's header is read on the host (``defer_jpeg``: its size, bands and EXIF time for
the metadata row, and whether nvJPEG can take it, from the markers alone, in microseconds);
its encoded bytes go on as a ``JpegData``, 5-10x smaller than the pixels. ``decode_jpegs``
then decodes a batch of them with ``torchvision.io.decode_jpeg`` on the network's device.
What nvJPEG refuses (an image it cannot decode, or one that comes out another size than its
header says) is decoded on the CPU by ``images.decode_scene``, which also gives the one-line
reason for a corrupt file. JPEGs that nvJPEG does not support are never deferred: CMYK/YCCK
(4 components), 12-bit, arithmetic-coded, and files that do not end with an end-of-image
marker (truncated: Pillow refuses them, nvJPEG might decode them grey).

torchvision's ``decode_jpeg`` also runs on a CPU (libjpeg-turbo, pixel for pixel what Pillow
gives: tests/test_gpu_path.py), which is how the batching and the fallbacks are tested
without a GPU. torchvision is imported on first use only: it costs a cold query a second.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dahash_index.scenes.decode import decode_scene, exif_datetime
from dahash_index.scenes.scene import SceneDecodeError, SceneInfo, check_pixels

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


@dataclass(frozen=True)
class JpegHeader:
    """What a JPEG's markers before its first scan say: the frame (SOF marker, sample
    precision in bits, size, components) and the first EXIF APP1 payload, if any."""

    sof: int
    bits: int
    height: int
    width: int
    components: int
    exif: bytes | None


def jpeg_header(data: bytes) -> JpegHeader | None:
    """The header of a JPEG, from its markers up to the first scan (a few dozen bytes
    looked at: no pixel and no Pillow); None when they cannot be walked or hold no frame."""
    if not data.startswith(b"\xff\xd8"):
        return None
    frame, exif = None, None
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
        if marker == 0xDA:  # start of scan: the header is over
            break
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2 or pos + 2 + length > len(data):
            return None
        if marker in _SOF_ANY and frame is None:
            if length < 8:
                return None
            height = int.from_bytes(data[pos + 5:pos + 7], "big")
            width = int.from_bytes(data[pos + 7:pos + 9], "big")
            frame = marker, data[pos + 4], height, width, data[pos + 9]
        elif marker == 0xE1 and exif is None and data.startswith(b"Exif\x00\x00", pos + 4):
            exif = data[pos + 4:pos + 2 + length]  # the first, as Pillow takes it
        pos += 2 + length
    return None if frame is None else JpegHeader(*frame, exif)


def device_decodable(data: bytes, header: JpegHeader | None = None) -> bool:
    """Whether nvJPEG can decode this JPEG exactly as libjpeg would: Huffman-coded, 8-bit,
    grey or YCbCr/RGB, its size in the frame (not defined later by a DNL marker), and
    whole (ends with the end-of-image marker). header: ``jpeg_header(data)``, if at hand."""
    header = header or jpeg_header(data)
    if header is None:
        return False
    whole = data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")
    return (header.sof in _SOF_DEVICE and header.bits == 8 and header.components in (1, 3)
            and header.width > 0 and header.height > 0 and whole)


def defer_jpeg(data: bytes, name: str, max_pixels: int) -> tuple[JpegData, SceneInfo] | None:
    """A JPEG that nvJPEG can take, as its bytes and the SceneInfo its header gives (what a
    decode on the CPU would give, with no pixel decoded); None for anything else (decode it
    on the CPU). Raises SceneDecodeError when the image is above ``max_pixels``."""
    header = jpeg_header(data)
    if header is None or not device_decodable(data, header):
        return None
    check_pixels(header.width, header.height, max_pixels)
    info = SceneInfo(width=header.width, height=header.height, bands=header.components,
                     dtype="uint8", datetime=exif_datetime(header.exif))
    return JpegData(data, name, header.width, header.height, max_pixels), info


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


def decode_batch(rows: list[dict], images: list, device: torch.device,
                 on_error: Callable[[dict], None]) -> tuple[list[dict], list]:
    """A batch with its JpegData decoded on ``device`` (``decode_jpegs``, one call); a scene
    that cannot be decoded goes to on_error (its row and a reason) and leaves the batch."""
    deferred = [i for i, image in enumerate(images) if isinstance(image, JpegData)]
    if not deferred:
        return rows, images
    images = list(images)
    failed = set()
    for i, image in zip(deferred, decode_jpegs([images[i] for i in deferred], device),
                        strict=True):
        if isinstance(image, SceneDecodeError):
            on_error(rows[i] | {"reason": str(image)})
            failed.add(i)
        else:
            images[i] = image
    if failed:
        rows = [r for i, r in enumerate(rows) if i not in failed]
        images = [x for i, x in enumerate(images) if i not in failed]
    return rows, images
