"""uint8 scenes -> the backbone's input, made on the device the backbone runs on.

Decoders hand over (H, W, 3) uint8 images: 4x less to move than float32, and UC Merced's
256 px scenes are smaller than the network's 299 px. ``upload`` moves a batch to the device
in one copy from pinned memory (on a side stream, so it overlaps the previous batch's
compute); ``network_input`` converts to float and resizes there. The arithmetic is
``backbones.image_to_tensor``'s, image for image (tests/test_gpu_path.py), so moving the
resize does not change a CPU build's codes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dahash_index.model.backbones import INPUT_SIZE, resize_to_input

Image = np.ndarray | torch.Tensor  # (H, W, 3) uint8, numpy or torch, on any device


def check_image(image: Image) -> None:
    """Raise ValueError unless ``image`` is (H, W, 3) uint8."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype not in (np.uint8, torch.uint8):
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {tuple(image.shape)} "
                         f"{image.dtype}")


def upload(images: Sequence[Image], device: torch.device,
           stream: torch.cuda.Stream | None = None) -> list[torch.Tensor]:
    """The images as (H, W, 3) uint8 tensors on ``device`` (views of one buffer).

    On a CPU, numpy images are wrapped without a copy. To a GPU, the host images are packed
    into one pinned buffer and copied in one transfer, on ``stream`` when given; the current
    stream then waits for that copy before it uses the images. Images already on the device
    stay as they are.
    """
    for image in images:
        check_image(image)
    if device.type != "cuda":
        return [torch.as_tensor(image) for image in images]
    on_host = [i for i, image in enumerate(images)
               if not (isinstance(image, torch.Tensor) and image.device == device)]
    out = list(images)
    if not on_host:
        return out
    sizes = [int(np.prod(images[i].shape)) for i in on_host]
    pinned = torch.empty(sum(sizes), dtype=torch.uint8, pin_memory=True)
    offset = 0
    for i, size in zip(on_host, sizes, strict=True):
        pinned[offset:offset + size].copy_(torch.as_tensor(images[i]).reshape(-1))
        offset += size
    if stream is None:
        flat = pinned.to(device, non_blocking=True)
    else:
        with torch.cuda.stream(stream):
            flat = pinned.to(device, non_blocking=True)
        current = torch.cuda.current_stream(device)
        current.wait_stream(stream)
        flat.record_stream(current)  # the caching allocator must not reuse it too soon
    offset = 0
    for i, size in zip(on_host, sizes, strict=True):
        out[i] = flat[offset:offset + size].view(tuple(images[i].shape))
        offset += size
    return out


def network_input(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """(H, W, 3) uint8 tensors, all on one device -> (N, 3, 299, 299) float32 in [0, 255]
    there, in order: bilinear, no antialiasing (TF's resize), one interpolation per size.

    Stacked (N, H, W, 3) then permuted is the memory layout ``image_to_tensor`` resizes
    (channels last), so the floats are the same bit for bit.
    """
    if not images:
        raise ValueError("no images")
    device = images[0].device
    out = torch.empty((len(images), 3, INPUT_SIZE, INPUT_SIZE), dtype=torch.float32,
                      device=device)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(tuple(image.shape), []).append(i)
    for shape, members in by_size.items():
        x = torch.stack([images[i] for i in members]).permute(0, 3, 1, 2).float()
        if shape[:2] != (INPUT_SIZE, INPUT_SIZE):
            x = resize_to_input(x)
        out[members] = x
    return out
