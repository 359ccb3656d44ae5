"""Footprints as GeoParquet 1.1 geometry (https://geoparquet.org/releases/v1.1.0/).

A table with the WGS84 bounds columns (west, south, east, north) gets a ``geometry`` column of
WKB polygons and the ``geo`` schema metadata, so that GeoPandas (``read_parquet``), DuckDB and
QGIS open it as a layer. An index's parts carry it (``writer``), and so do the hits that
``query --format parquet`` writes. With no "crs" in the metadata, readers take OGC:CRS84
(longitude, latitude).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from dahash_index.columns import WGS84_COLUMNS

GEOMETRY = "geometry"
GEOPARQUET_VERSION = "1.1.0"

# One WKB polygon of one ring of 5 points, little-endian: byte order, type (3 = Polygon), ring
# count, point count, then 10 doubles. A packed record, so a column of them is one buffer.
_WKB_POLYGON = np.dtype([("order", "u1"), ("type", "<u4"), ("rings", "<u4"),
                         ("points", "<u4"), ("xy", "<f8", (10,))])


def footprint_wkb(bounds: np.ndarray) -> pa.ChunkedArray:
    """float64 (n, 4) WGS84 bounds (west, south, east, north; NaN where unknown) -> n WKB
    polygons (binary), the counter-clockwise ring west-south, east-south, east-north,
    west-north; null where any bound is NaN."""
    bounds = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
    # binary's int32 offsets hold 2 GiB a chunk: 16 M polygons of 93 bytes
    chunks = [_wkb_chunk(bounds[start:start + _CHUNK_ROWS])
              for start in range(0, len(bounds), _CHUNK_ROWS)]
    return pa.chunked_array(chunks, pa.binary())


_CHUNK_ROWS = 1 << 24


def _wkb_chunk(bounds: np.ndarray) -> pa.BinaryArray:
    known = ~np.isnan(bounds).any(axis=1)
    west, south, east, north = bounds[known].T
    records = np.zeros(len(west), _WKB_POLYGON)
    records["order"], records["type"], records["rings"], records["points"] = 1, 3, 1, 5
    records["xy"] = np.column_stack([west, south, east, south, east, north, west, north,
                                     west, south])
    offsets = np.concatenate([[0], np.cumsum(known * _WKB_POLYGON.itemsize)]).astype(np.int32)
    buffers = [pa.py_buffer(np.packbits(known, bitorder="little")), pa.py_buffer(offsets),
               pa.py_buffer(records.view(np.uint8))]
    return pa.Array.from_buffers(pa.binary(), len(bounds), buffers,
                                 null_count=int((~known).sum()))


def with_footprints(table: pa.Table) -> pa.Table:
    """``table`` with a ``geometry`` column appended (its footprints, from the WGS84 bounds
    columns; null without them) and the GeoParquet ``geo`` metadata (bbox of the footprints)."""
    bounds = np.column_stack([
        table[name].cast(pa.float64()).to_numpy(zero_copy_only=False)
        if name in table.column_names else np.full(table.num_rows, np.nan)
        for name in WGS84_COLUMNS
    ]) if table.num_rows else np.empty((0, 4))
    column = {"encoding": "WKB", "geometry_types": []}
    known = bounds[~np.isnan(bounds).any(axis=1)]
    if len(known):
        column["geometry_types"] = ["Polygon"]
        column["bbox"] = [*known[:, :2].min(axis=0).tolist(), *known[:, 2:].max(axis=0).tolist()]
    geo = {"version": GEOPARQUET_VERSION, "primary_column": GEOMETRY,
           "columns": {GEOMETRY: column}}
    table = table.append_column(GEOMETRY, footprint_wkb(bounds))
    return table.replace_schema_metadata({**(table.schema.metadata or {}),
                                          b"geo": json.dumps(geo).encode()})
