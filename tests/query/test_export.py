"""Query hits as CSV, GeoJSON and GeoParquet (dahash_index/query/export.py), by hand."""

from __future__ import annotations

import csv
import io
import json
import struct

import pyarrow as pa
import pyarrow.parquet as pq

from dahash_index.query.export import footprint, to_csv, to_geojson, to_geoparquet

HIT = {"query": 0, "query_name": "a.tif", "rank": 1, "distance": 3, "score": 0.5, "row_id": 7,
       "url": "s3://b/x.tif", "label": None, "west": 10.0, "south": 45.0, "east": 10.5,
       "north": 45.25, "error": None}
BARE = {**HIT, "rank": 2, "row_id": 8, "url": "y.jpg", "west": None, "south": None,
        "east": None, "north": None}
FAILED = {**{k: None for k in HIT}, "query": 1, "query_name": "bad.jpg",
          "error": "bad.jpg: not an image"}
ROWS = [HIT, BARE, FAILED]
RING = [[10.0, 45.0], [10.5, 45.0], [10.5, 45.25], [10.0, 45.25], [10.0, 45.0]]


def test_footprint_is_the_closed_ring_of_the_wgs84_bounds():
    assert footprint(HIT) == RING
    assert footprint(BARE) is None


def test_csv_has_a_header_and_a_line_per_hit_without_errors():
    lines = list(csv.DictReader(io.StringIO(to_csv(ROWS))))
    assert [line["row_id"] for line in lines] == ["7", "8"]
    assert "error" not in lines[0] and lines[0]["label"] == "" and lines[0]["west"] == "10.0"
    assert to_csv([FAILED]) == ""


def test_geojson_is_a_feature_collection_of_footprints():
    collection = json.loads(json.dumps(to_geojson(ROWS)))  # JSON as written
    assert collection["type"] == "FeatureCollection"
    first, second = collection["features"]
    assert first["type"] == "Feature"
    assert first["geometry"] == {"type": "Polygon", "coordinates": [RING]}
    assert first["properties"]["url"] == "s3://b/x.tif" and "error" not in first["properties"]
    assert second["geometry"] is None and second["properties"]["row_id"] == 8


def test_geoparquet_has_wkb_polygons_and_its_metadata(tmp_path):
    pq.write_table(to_geoparquet(ROWS), tmp_path / "hits.parquet")
    table = pq.read_table(tmp_path / "hits.parquet")
    geo = json.loads(table.schema.metadata[b"geo"])
    assert geo == {"version": "1.1.0", "primary_column": "geometry",
                   "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"],
                                            "bbox": [10.0, 45.0, 10.5, 45.25]}}}
    wkb, missing = table["geometry"].to_pylist()
    assert missing is None
    order, kind, rings, points = struct.unpack_from("<BIII", wkb)
    assert (order, kind, rings, points) == (1, 3, 1, 5)
    coords = struct.unpack_from("<10d", wkb, 13)
    assert [list(coords[i:i + 2]) for i in range(0, 10, 2)] == RING
    assert table["row_id"].to_pylist() == [7, 8] and "error" not in table.column_names
    assert to_geoparquet([FAILED]).column_names == ["geometry"]
    assert pa.types.is_binary(table.schema.field("geometry").type)
