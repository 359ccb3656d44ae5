"""Query hits as files other tools open: CSV, GeoJSON, GeoParquet (``query --format``).

Each function takes the hits as ``SceneIndex.query`` rows (dicts, one per hit; rows that carry
an ``error`` are not hits and are left out) and returns what is written. A hit's footprint is
the polygon of its WGS84 bounds (west, south, east, north), or none for a scene without them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dahash_index.columns import WGS84_COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa

# pyarrow is imported by to_geoparquet only: `query --server` prints CSV and GeoJSON without it.
FORMATS = ("plain", "json", "csv", "geojson", "stac", "parquet")
STAC_VERSION = "1.1.0"
# The hit's own columns in a STAC item's properties, under a prefix of their own.
_RANKING = ("query", "query_name", "rank", "distance", "score", "row_id")


def hit_rows(rows: Sequence[dict]) -> list[dict]:
    """The rows that are hits (no ``error``), without the ``error`` and ``code`` columns."""
    return [{k: v for k, v in row.items() if k not in ("error", "code")}
            for row in rows if row.get("error") is None]


def footprint(row: dict) -> list[list[float]] | None:
    """The closed ring [[lon, lat], ...] (5 points, counter-clockwise) of a hit's WGS84
    bounds, or None when it has none."""
    if any(row.get(c) is None for c in WGS84_COLUMNS):
        return None
    west, south, east, north = (float(row[c]) for c in WGS84_COLUMNS)
    return [[west, south], [east, south], [east, north], [west, north], [west, south]]


def to_csv(rows: Sequence[dict]) -> str:
    """The hits as CSV text: a header of the columns, one line per hit (null: empty)."""
    hits = hit_rows(rows)
    out = io.StringIO()
    if hits:
        writer = csv.DictWriter(out, fieldnames=list(hits[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(hits)
    return out.getvalue()


def to_geojson(rows: Sequence[dict]) -> dict:
    """The hits as a GeoJSON FeatureCollection (RFC 7946): one Feature per hit, its footprint
    as a Polygon (null geometry without one), every column as a property."""
    features = []
    for hit in hit_rows(rows):
        ring = footprint(hit)
        features.append({"type": "Feature",
                         "geometry": {"type": "Polygon", "coordinates": [ring]} if ring else None,
                         "properties": hit})
    return {"type": "FeatureCollection", "features": features}


def to_stac_items(rows: Sequence[dict]) -> dict:
    """The hits as a STAC ItemCollection: one Item per hit, its id the STAC item's it was
    built from (``build --stac``) or ``row-<row_id>``; its footprint and bbox; the item's
    properties and datetime; the ranking as ``dahash:rank``, ``dahash:distance``,
    ``dahash:score`` ... properties; the scene as the ``scene`` asset."""
    items = []
    for hit in hit_rows(rows):
        ring = footprint(hit)
        properties = json.loads(hit["properties"]) if hit.get("properties") else {}
        properties["datetime"] = hit.get("datetime") or properties.get("datetime")
        properties.update({f"dahash:{k}": hit.get(k) for k in _RANKING})
        href = hit["url"] if not hit.get("member") else f"{hit['url']}/{hit['member']}"
        items.append({
            "type": "Feature", "stac_version": STAC_VERSION,
            "id": hit.get("item_id") or f"row-{hit['row_id']}",
            "geometry": {"type": "Polygon", "coordinates": [ring]} if ring else None,
            **({"bbox": [*ring[0], *ring[2]]} if ring else {}),
            "properties": properties,
            "assets": {"scene": {"href": href, "roles": ["data"]}},
            "links": [],
        })
    return {"type": "FeatureCollection", "features": items}


def to_geoparquet(rows: Sequence[dict]) -> pa.Table:
    """The hits as a table with a ``geometry`` column (WKB polygons, null without a footprint)
    and GeoParquet 1.1 metadata (``store.geoparquet``): ``pyarrow.parquet.write_table`` makes a
    file that GeoPandas, DuckDB and QGIS open as a layer."""
    import pyarrow as pa

    from dahash_index.store.geoparquet import with_footprints

    hits = hit_rows(rows)
    return with_footprints(pa.Table.from_pylist(hits) if hits else pa.table({}))
