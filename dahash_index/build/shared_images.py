"""Decoded images handed from a decode process to the encoder through shared memory.

A chunk of decoded scenes is a list of (H, W, 3) uint8 arrays. Pickled through the process
pool's one result pipe, every byte would be copied three times with the parent's GIL held,
by the thread that also has to feed the GPU. So the decode process writes the chunk into one
POSIX shared-memory block and sends only its name and the shapes; the parent copies the
block out in one ``memcpy`` (GIL released) and unlinks it.

The block is registered with multiprocessing's resource tracker (shared by the pool's
processes), which unlinks what a crashed process leaves behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np


@dataclass(frozen=True)
class SharedImages:
    """Images in a shared-memory block: its name, and each image's (H, W, 3) shape."""

    name: str | None  # None: no image (no block)
    shapes: tuple[tuple[int, int, int], ...]


def share_images(images: list[np.ndarray]) -> SharedImages:
    """Copy uint8 arrays into a new shared-memory block (in the decode process)."""
    sizes = [image.size for image in images]
    if not sum(sizes):
        return SharedImages(None, tuple(image.shape for image in images))
    block = shared_memory.SharedMemory(create=True, size=sum(sizes))
    try:
        offset = 0
        for image, size in zip(images, sizes, strict=True):
            np.frombuffer(block.buf, np.uint8, size, offset)[:] = image.reshape(-1)
            offset += size
    except BaseException:
        block.close()
        block.unlink()
        raise
    block.close()
    return SharedImages(block.name, tuple(image.shape for image in images))


def receive_images(shared: SharedImages) -> list[np.ndarray]:
    """The images of a block, as views of one fresh array; the block is unlinked."""
    sizes = [int(np.prod(shape)) for shape in shared.shapes]
    flat = np.empty(sum(sizes), np.uint8)
    if shared.name is not None:
        block = shared_memory.SharedMemory(name=shared.name)
        try:
            flat[:] = np.frombuffer(block.buf, np.uint8, flat.size)
        finally:
            block.close()
            block.unlink()
    images, offset = [], 0
    for shape, size in zip(shared.shapes, sizes, strict=True):
        images.append(flat[offset:offset + size].reshape(shape))
        offset += size
    return images


def discard_images(shared: SharedImages) -> None:
    """Unlink a block whose images are not wanted (a shard given up half way)."""
    if shared.name is not None:
        try:
            block = shared_memory.SharedMemory(name=shared.name)
        except FileNotFoundError:
            return
        block.close()
        block.unlink()
