"""A shard's Parquet files: codes as fixed-size binary, rows checked against the manifest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dahash_index.files import one_line
from dahash_index.store.layout import MANIFEST, IndexStoreError, metadata_schema

# Rows per Parquet row group of a part: a lookup of a few rows reads (and decompresses) only
# the row groups that hold them, whatever the size of the part.
ROW_GROUP_ROWS = 65_536


def write_table(table: pa.Table, f) -> None:
    """Write a part or errors table to the open binary file ``f``."""
    pq.write_table(table, f, row_group_size=ROW_GROUP_ROWS)


def codes_to_arrow(codes: np.ndarray) -> pa.FixedSizeBinaryArray:
    """uint8 (n, K/8), C-contiguous -> fixed_size_binary(K/8) array of n values (zero copy)."""
    n, size = codes.shape
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(size), n, [None, pa.py_buffer(codes)])


def codes_from_arrow(column: pa.ChunkedArray, size: int) -> np.ndarray:
    """A non-null fixed_size_binary(size) column -> uint8 (n, size)."""
    out = np.empty((len(column), size), dtype=np.uint8)
    start = 0
    for chunk in column.chunks:
        n = len(chunk)
        data = chunk.buffers()[1]
        if n:
            out[start : start + n] = np.frombuffer(
                data, dtype=np.uint8, count=n * size, offset=chunk.offset * size
            ).reshape(n, size)
        start += n
    return out


def conform(
    rows: pa.Table | Sequence[Mapping[str, Any]], schema: pa.Schema, what: str
) -> pa.Table:
    """``rows`` as a table of exactly ``schema``: its columns in order, absent nullable columns
    null. Unknown columns are refused: a misspelt key would otherwise be dropped silently."""
    if isinstance(rows, pa.Table):
        names = set(rows.column_names)
    else:
        rows = list(rows)
        names = set().union(*(row.keys() for row in rows))
    unknown = sorted(names - set(schema.names))
    if unknown:
        raise ValueError(f"{what}: unknown columns {unknown}; the columns are {schema.names}")
    if isinstance(rows, pa.Table):
        missing = [f.name for f in schema if not f.nullable and f.name not in names]
        if missing:
            raise ValueError(f"{what}: missing required columns {missing}")
        n = rows.num_rows
        table = pa.table(
            {f.name: rows[f.name] if f.name in names else pa.nulls(n, f.type) for f in schema}
        ).cast(schema)  # a safe cast: a width that overflows int32 raises
    else:
        table = pa.Table.from_pylist(rows, schema=schema)  # absent keys become nulls
    nulls = [f.name for f in schema if not f.nullable and table[f.name].null_count]
    if nulls:
        raise ValueError(f"{what}: missing or null values in required columns {nulls}")
    return table


def read_parquet(
    directory: Path, rel: str, schema: pa.Schema, rows: int, mmap: bool = False
) -> pa.Table:
    """Read one part or errors file, refusing one that does not match what the manifest says."""
    try:
        table = pq.read_table(directory / rel, columns=schema.names, memory_map=mmap)
    except FileNotFoundError:
        raise IndexStoreError(f"{directory}: {rel} is missing (named in {MANIFEST})") from None
    except (OSError, pa.ArrowException) as err:
        raise IndexStoreError(f"{directory}: {rel} is unreadable ({one_line(err)})") from None
    if not table.schema.equals(schema):
        raise IndexStoreError(f"{directory}: {rel} does not have the expected columns")
    if table.num_rows != rows:
        raise IndexStoreError(
            f"{directory}: {rel} holds {table.num_rows} rows, {MANIFEST} says {rows}"
        )
    return table


def read_part(
    directory: Path,
    manifest: Mapping,
    shard: str,
    columns: Sequence[str] | None = None,
    mmap: bool = False,
) -> pa.Table:
    """A shard's part (all columns, or row_id plus ``columns``), its row ids checked."""
    entry = manifest["shards"][shard]
    schema = metadata_schema(manifest["bits"])
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in dict.fromkeys(["row_id", *columns])])
    table = read_parquet(directory, entry["part"], schema, entry["rows"], mmap)
    first = entry["first_row"]
    expected = np.arange(first, first + entry["rows"], dtype=np.int64)
    if not np.array_equal(table["row_id"].to_numpy(), expected):
        raise IndexStoreError(
            f"{directory}: {entry['part']} row ids are not {first}..{first + entry['rows'] - 1}"
        )
    return table


def read_codes(
    directory: Path, manifest: Mapping, shards: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Row ids int64 (n,) and codes uint8 (n, K/8) of the given shards, in their order."""
    size = manifest["bits"] // 8
    tables = [read_part(directory, manifest, s, ["code"]) for s in shards]
    if not tables:
        return np.empty(0, dtype=np.int64), np.empty((0, size), dtype=np.uint8)
    table = pa.concat_tables(tables)
    return table["row_id"].to_numpy(), codes_from_arrow(table["code"], size)
