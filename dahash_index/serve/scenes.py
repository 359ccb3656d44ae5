"""Result rows as the service's JSON: one object a scene, with its bounds grouped."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dahash_index.columns import (
    BOUNDS_COLUMNS,
    METADATA_COLUMNS,
    WGS84_COLUMNS,
    WINDOW_COLUMNS,
)

# Metadata columns as they appear in a scene object; bounds and pixel size are grouped below.
_PLAIN = ("row_id", "url", "member", "shard", "label", "width", "height", "bands", "dtype",
          "crs", "datetime", "item_id", "properties")


def scene_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """One metadata row (a dict of ``IndexReader.metadata`` columns) as the API's scene:
    its plain columns, ``bounds`` (in the CRS) and ``wgs84`` (degrees) as objects or null
    when unknown, ``pixel_size`` as [x, y] or null, ``window`` (a chip's pixel window in its
    scene: col_off, row_off, window_width, window_height) or null for a whole scene."""
    out = {key: row.get(key) for key in _PLAIN}
    out["bounds"] = _group(row, BOUNDS_COLUMNS)
    out["wgs84"] = _group(row, WGS84_COLUMNS)
    size = (row.get("pixel_size_x"), row.get("pixel_size_y"))
    out["pixel_size"] = None if None in size else list(size)
    out["window"] = _group(row, WINDOW_COLUMNS)
    return out


def hit_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """One hit row of ``SceneIndex.query``: rank, Hamming distance, re-rank score (null when
    the hits were not re-ranked), then its scene."""
    return {"rank": row["rank"], "distance": row["distance"], "score": row.get("score"),
            **scene_json(row)}


def hit_row(hit: Mapping[str, Any]) -> dict[str, Any]:
    """``hit_json``'s inverse: rank, distance, score, row_id and the metadata columns, flat,
    in the order of ``SceneIndex.query``'s table."""
    bounds = hit.get("bounds") or {}
    wgs84 = hit.get("wgs84") or {}
    size = hit.get("pixel_size") or (None, None)
    window = hit.get("window") or {}
    flat = {**{k: hit.get(k) for k in _PLAIN}, **{k: bounds.get(k) for k in BOUNDS_COLUMNS},
            **{k: wgs84.get(k) for k in WGS84_COLUMNS}, "pixel_size_x": size[0],
            "pixel_size_y": size[1], **{k: window.get(k) for k in WINDOW_COLUMNS}}
    return {"rank": hit["rank"], "distance": hit["distance"], "score": hit.get("score"),
            "row_id": hit["row_id"], **{key: flat[key] for key in METADATA_COLUMNS}}


def _group(row: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any] | None:
    values = {key: row.get(key) for key in keys}
    return None if any(v is None for v in values.values()) else values
