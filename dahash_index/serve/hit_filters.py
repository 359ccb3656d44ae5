"""Filters and paging of a query's hits (``POST /query?label=...&offset=...``), server-side.

The filters narrow the ``top`` hits a search found (they do not search further): a label, a
CRS, a date range, a largest Hamming distance, and an area (WGS84 box) that a hit's
footprint must meet. A page is then ``limit`` hits from ``offset`` of what is left; the
answer says how many that is in all (``total``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dahash_index.columns import WGS84_COLUMNS
from dahash_index.serve.requests import ServiceError

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
PARAMS = ("label", "crs", "date_from", "date_to", "max_distance", "bbox")


@dataclass(frozen=True)
class HitFilters:
    """label, crs: equal to; date_from / date_to: YYYY-MM-DD, inclusive, on the scene's
    datetime (a scene without one is left out by either); max_distance: Hamming distance at
    most; bbox: (west, south, east, north) degrees that a hit's WGS84 footprint meets."""

    label: str | None = None
    crs: str | None = None
    date_from: str | None = None
    date_to: str | None = None
    max_distance: int | None = None
    bbox: tuple[float, float, float, float] | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> HitFilters:
        """From a request's query parameters; ServiceError 422 (one line) for a bad one."""
        values: dict = {k: params[k] for k in ("label", "crs") if params.get(k)}
        for key in ("date_from", "date_to"):
            if params.get(key):
                if not _DATE.fullmatch(params[key]):
                    raise ServiceError(422, f"{key} must be a date YYYY-MM-DD, got "
                                            f"{params[key]!r}")
                values[key] = params[key]
        if params.get("max_distance"):
            text = params["max_distance"]
            if not text.isdigit() or len(text) > 4:
                raise ServiceError(422, f"max_distance must be a number of bits, got {text!r}")
            values["max_distance"] = int(text)
        if params.get("bbox"):
            values["bbox"] = _bbox(params["bbox"])
        return cls(**values)

    def __bool__(self) -> bool:
        return any(getattr(self, name) is not None for name in PARAMS)

    def keep(self, hit: Mapping) -> bool:
        """Whether a hit row (flat metadata columns, as ``SceneIndex.query`` gives) passes."""
        if self.label is not None and hit.get("label") != self.label:
            return False
        if self.crs is not None and hit.get("crs") != self.crs:
            return False
        if self.max_distance is not None and hit["distance"] > self.max_distance:
            return False
        day = (hit.get("datetime") or "")[:10]
        if self.date_from is not None and not (day and day >= self.date_from):
            return False
        if self.date_to is not None and not (day and day <= self.date_to):
            return False
        if self.bbox is not None:
            bounds = [hit.get(k) for k in WGS84_COLUMNS]
            if None in bounds:
                return False
            west, south, east, north = self.bbox
            if bounds[2] < west or bounds[0] > east or bounds[3] < south or bounds[1] > north:
                return False
        return True


def page_of(hits: Sequence[dict], filters: HitFilters, offset: int, limit: int | None
            ) -> tuple[list[dict], int]:
    """The hits that pass ``filters``, ``limit`` of them from ``offset`` (all with None),
    and how many pass in all."""
    kept = [hit for hit in hits if filters.keep(hit)] if filters else list(hits)
    end = None if limit is None else offset + limit
    return kept[offset:end], len(kept)


def _bbox(text: str) -> tuple[float, float, float, float]:
    try:
        west, south, east, north = (float(v) for v in text.split(","))
    except ValueError:
        raise ServiceError(422, f"bbox must be WEST,SOUTH,EAST,NORTH in degrees, got {text!r}"
                           ) from None
    if not (-180 <= west <= east <= 180 and -90 <= south <= north <= 90):
        raise ServiceError(422, f"bbox must be WEST,SOUTH,EAST,NORTH with west <= east and "
                                f"south <= north, in degrees, got {text!r}")
    return west, south, east, north
