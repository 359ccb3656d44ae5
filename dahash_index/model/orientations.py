"""The 8 orientations of a scene: the dihedral group D4 (4 rotations, each with or without a
horizontal flip).

Overhead scenes have no "up", so a scene turned by 90 degrees or mirrored is the same place.
Orientation ``k`` in 0..7 is: flip left-right when ``k >= 4``, then rotate counter-clockwise
by ``(k % 4) * 90`` degrees. Orientation 0 is the scene as stored. The transform acts on the
backbone's input tensor (after decoding and resizing to 299 x 299 px), so a cached feature of
orientation ``k`` is exactly ``backbone(orient(images, k))``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: the --server client reads this module
    import torch

ORIENTATIONS = tuple(range(8))
# Orientations a training scene is drawn in, by how many: identity; + left-right flip; the
# Klein four-group (identity, 180 degrees, and both flips); the whole group. Each extra one
# costs one more backbone pass per scene when features are extracted.
AUGMENTATION_SETS = {1: (0,), 2: (0, 4), 4: (0, 2, 4, 6), 8: ORIENTATIONS}


def check_orientation(k: int) -> int:
    """k as an int in 0..7, or ValueError."""
    if isinstance(k, bool) or int(k) != k or not 0 <= int(k) < len(ORIENTATIONS):
        raise ValueError(f"orientation must be an integer in 0..7, got {k!r}")
    return int(k)


def orient(images: torch.Tensor, k: int) -> torch.Tensor:
    """(N, C, H, W) -> the same images in orientation k (H and W swap for odd rotations)."""
    import torch

    k = check_orientation(k)
    x = images.flip(-1) if k >= 4 else images
    return torch.rot90(x, k % 4, dims=(-2, -1)) if k % 4 else x


# The orientations a query may be encoded in (``query --orientations N``): itself; its 4
# rotations; the whole group.
QUERY_ORIENTATIONS = {1: (0,), 4: (0, 1, 2, 3), 8: ORIENTATIONS}
# An image query is searched in its 4 rotations unless told otherwise (``query``, ``serve``,
# ``SceneIndex.query``): a scene turned by 90 degrees lands far from its original in the
# codes and in the re-rank vectors alike, and only its turned-back view finds it.
DEFAULT_QUERY_ORIENTATIONS = 4


def orient_image(image, k: int):
    """An (H, W, C) image (numpy array or torch tensor) in orientation k, as ``orient`` turns
    a batch of network inputs."""
    import torch

    k = check_orientation(k)
    if isinstance(image, torch.Tensor):
        x = image.flip(1) if k >= 4 else image
        return torch.rot90(x, k % 4, dims=(0, 1)) if k % 4 else x
    import numpy as np

    x = image[:, ::-1] if k >= 4 else image
    return np.ascontiguousarray(np.rot90(x, k % 4, axes=(0, 1)))
