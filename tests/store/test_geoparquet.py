"""Footprints as WKB polygons (store.geoparquet), checked against hand-packed bytes."""

import json
import struct

import numpy as np
import pyarrow as pa

from dahash_index.store import geoparquet
from dahash_index.store.geoparquet import footprint_wkb, with_footprints


def _polygon(w, s, e, n) -> bytes:
    return struct.pack("<BIII10d", 1, 3, 1, 5, w, s, e, s, e, n, w, n, w, s)


def test_footprints_are_wkb_polygons_null_where_a_bound_is_unknown(monkeypatch):
    monkeypatch.setattr(geoparquet, "_CHUNK_ROWS", 2)  # chunks of 2 rows: 3 chunks for 5 rows
    bounds = np.array([[1, 2, 3, 4], [np.nan, 0, 0, 0], [5, 6, 7, 8], [0, 0, 0, 0],
                       [-1, -2, 1, np.nan]], dtype=np.float64)
    column = footprint_wkb(bounds)
    assert column.num_chunks == 3 and column.type == pa.binary()
    assert column.to_pylist() == [_polygon(1, 2, 3, 4), None, _polygon(5, 6, 7, 8),
                                  _polygon(0, 0, 0, 0), None]
    assert len(_polygon(1, 2, 3, 4)) == 93


def test_the_geo_metadata_bounds_every_footprint():
    table = pa.table({"row_id": [0, 1, 2], "west": [10.0, None, -5.0],
                      "south": [40.0, None, 41.0], "east": [11.0, None, -4.0],
                      "north": [41.0, None, 42.5]})
    out = with_footprints(table)
    assert out.column_names == ["row_id", "west", "south", "east", "north", "geometry"]
    geo = json.loads(out.schema.metadata[b"geo"])
    assert geo["columns"]["geometry"]["bbox"] == [-5.0, 40.0, 11.0, 42.5]
    assert out["geometry"].to_pylist()[1] is None
    # no bounds columns at all: null footprints, no geometry types
    bare = with_footprints(pa.table({"row_id": [0]}))
    assert bare["geometry"].to_pylist() == [None]
    assert json.loads(bare.schema.metadata[b"geo"])["columns"]["geometry"] == {
        "encoding": "WKB", "geometry_types": []}
