"""Query hits as files other tools open: CSV, GeoJSON, GeoParquet (``query --format``).

Each function takes the hits as ``SceneIndex.query`` rows (dicts, one per hit; rows that carry
an ``error`` are not hits and are left out) and returns what is written. A hit's footprint is
the polygon of its WGS84 bounds (west, south, east, north), or none for a scene without them.
"""

from __future__ import annotations

import csv
import io
import json
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dahash_index.columns import WGS84_COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa

# pyarrow is imported by to_geoparquet only: `query --server` prints CSV and GeoJSON without it.
FORMATS = ("plain", "json", "csv", "geojson", "parquet")

# GeoParquet 1.1 (https://geoparquet.org/releases/v1.1.0/): WKB polygons in lon/lat; with no
# "crs" given, a reader takes OGC:CRS84.
GEOPARQUET_VERSION = "1.1.0"


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


def to_geoparquet(rows: Sequence[dict]) -> pa.Table:
    """The hits as a table with a ``geometry`` column (WKB polygons, null without a footprint)
    and GeoParquet 1.1 metadata: ``pyarrow.parquet.write_table`` makes a file that GeoPandas,
    DuckDB's spatial extension and QGIS open as a layer."""
    import pyarrow as pa

    hits = hit_rows(rows)
    table = pa.Table.from_pylist(hits) if hits else pa.table({})
    rings = [footprint(h) for h in hits]
    geometry = pa.array([_wkb_polygon(r) if r else None for r in rings], pa.binary())
    table = table.append_column("geometry", geometry)
    found = [r for r in rings if r]
    column = {"encoding": "WKB", "geometry_types": ["Polygon"] if found else []}
    if found:
        column["bbox"] = [min(r[0][0] for r in found), min(r[0][1] for r in found),
                          max(r[2][0] for r in found), max(r[2][1] for r in found)]
    geo = {"version": GEOPARQUET_VERSION, "primary_column": "geometry",
           "columns": {"geometry": column}}
    return table.replace_schema_metadata({**(table.schema.metadata or {}),
                                          b"geo": json.dumps(geo).encode()})


def _wkb_polygon(ring: list[list[float]]) -> bytes:
    """One ring as a little-endian WKB Polygon."""
    flat = [value for point in ring for value in point]
    return struct.pack(f"<BIII{len(flat)}d", 1, 3, 1, len(ring), *flat)
