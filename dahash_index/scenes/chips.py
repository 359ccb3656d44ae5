"""Chips of large scenes: the grid of pixel windows, and each window's footprint.

A scene whose sides both exceed ``Tiling.min_side`` is cut into ``tile`` x ``tile`` chips laid
every ``stride`` pixels from its top-left corner; smaller scenes stay whole. The rules, the
same for builds and queries:

- A chip that runs past the right or bottom edge is read as the part inside the scene and
  padded with zeros (nodata) to ``tile`` x ``tile``; it is kept when at least half of it lies
  inside the scene, and dropped otherwise. Its recorded window is the part inside.
- ``stride`` larger than ``tile`` leaves gaps between chips (a sparse sample of the scene).
- Chips whose valid pixels (by the file's mask or nodata) are under ``min_valid`` of the chip
  are skipped and counted, not indexed.
- Bounds are those of the window through the scene's affine transform. For a rotated or
  sheared transform they are the envelope of the window's four corners.

Windows are plain tuples ``(col_off, row_off, width, height)`` in pixels, as in rasterio.
"""

from __future__ import annotations

from dataclasses import dataclass

from dahash_index.errors import check_int

Window = tuple[int, int, int, int]  # (col_off, row_off, width, height)
MIN_INSIDE = 0.5  # an edge chip is kept when at least this fraction of it is in the scene


@dataclass(frozen=True)
class Tiling:
    """How large scenes are cut: ``tile`` px chips every ``stride`` px (default ``tile``), for
    scenes whose sides both exceed ``min_side`` (default 2 x ``tile``); a chip is skipped when
    under ``min_valid`` of its pixels are valid."""

    tile: int
    stride: int | None = None
    min_side: int | None = None
    min_valid: float = 0.5

    def __post_init__(self) -> None:
        for name in ("tile", "stride", "min_side"):
            value = getattr(self, name)
            if value is not None:
                check_int(f"--{name.replace('_', '-')}", value, 1)
        if not 0.0 <= self.min_valid <= 1.0:
            raise ValueError(f"min_valid must be in [0, 1], got {self.min_valid!r}")

    @property
    def step(self) -> int:
        return self.stride or self.tile

    @property
    def threshold(self) -> int:
        return self.min_side or 2 * self.tile

    def applies(self, width: int, height: int) -> bool:
        """Whether a scene of this size is cut into chips."""
        return width > self.threshold and height > self.threshold

    def windows(self, width: int, height: int) -> list[Window]:
        """The chips of a ``width`` x ``height`` scene, row by row from the top left."""
        return [(col, row, w, h) for row, h in _offsets(height, self.tile, self.step)
                for col, w in _offsets(width, self.tile, self.step)]

    def as_dict(self) -> dict:
        """What the manifest records (``extra["tiling"]``)."""
        return {"tile": self.tile, "stride": self.step, "min_side": self.threshold,
                "min_valid": self.min_valid}


def _offsets(size: int, tile: int, step: int) -> list[tuple[int, int]]:
    """(offset, length inside the scene) of the chips along one axis."""
    out = []
    for offset in range(0, size, step):
        inside = min(tile, size - offset)
        if inside >= MIN_INSIDE * tile:
            out.append((offset, inside))
    return out


def parse_window(text: str) -> Window:
    """``'COL,ROW,W,H'`` -> (col, row, w, h): offsets non-negative, sizes positive; ValueError
    naming the value otherwise."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise ValueError(f"a window is COL,ROW,WIDTH,HEIGHT in pixels, got {text!r}")
    col, row, width, height = (int(p) for p in parts)
    if width < 1 or height < 1:
        raise ValueError(f"a window's width and height must be positive, got {text!r}")
    return col, row, width, height


def window_bounds(transform: tuple[float, ...], window: Window) -> tuple[float, float, float,
                                                                         float]:
    """(left, bottom, right, top) of ``window`` through the affine ``transform`` (a, b, c, d,
    e, f: x = a col + b row + c, y = d col + e row + f): the envelope of its four corners."""
    a, b, c, d, e, f = transform[:6]
    col, row, width, height = window
    corners = [(col + dc, row + dr) for dc in (0, width) for dr in (0, height)]
    xs = [a * x + b * y + c for x, y in corners]
    ys = [d * x + e * y + f for x, y in corners]
    return min(xs), min(ys), max(xs), max(ys)
