"""A shard's Parquet files: codes as fixed-size binary, rows checked against the manifest.

Whole parts are read by ``read_part``; a few rows by ``read_footer`` (once per part) and
``read_row_groups``, which read only the row groups and columns asked for."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dahash_index.store.layout import (
    LATER_COLUMNS,
    MANIFEST,
    IndexStoreError,
    lacks_only_later_columns,
    metadata_schema,
    unreadable,
    with_later_columns,
)
from dahash_index.store.manifest import Manifest

# Rows per Parquet row group of a part: a lookup of a few rows reads (and decodes) only the row
# groups that hold them. Smaller groups decode faster, but each group costs a fixed amount per
# column and a footer entry; try other sizes with benchmarks/scale.py --row-group-rows.
ROW_GROUP_ROWS = 8192


def write_table(table: pa.Table, f) -> None:
    """Write a part or errors table to the open binary file ``f``. Only row ids get
    statistics (the lookup of rows by id uses them); others would bloat the footer."""
    stats = ["row_id"] if "row_id" in table.column_names else False
    pq.write_table(table, f, row_group_size=ROW_GROUP_ROWS, write_statistics=stats)


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
    """Read one part or errors file, refusing one that does not match what the manifest says
    (a part from before chips or STAC reads those columns as nulls: ``with_later_columns``)."""
    try:
        found = pq.read_schema(directory / rel, memory_map=mmap).names
        names = [n for n in schema.names if n in found or n not in LATER_COLUMNS]
        table = pq.read_table(directory / rel, columns=names, memory_map=mmap)
    except (OSError, pa.ArrowException) as err:
        raise unreadable(directory, rel, err) from None
    table = with_later_columns(table, schema.names)
    if not table.schema.equals(schema):
        raise IndexStoreError(f"{directory}: {rel} does not have the expected columns")
    if table.num_rows != rows:
        raise IndexStoreError(
            f"{directory}: {rel} holds {table.num_rows} rows, {MANIFEST} says {rows}"
        )
    return table


def read_part(
    directory: Path,
    manifest: Manifest,
    shard: str,
    columns: Sequence[str] | None = None,
    mmap: bool = False,
) -> pa.Table:
    """A shard's part (all columns, or row_id plus ``columns``), its row ids checked."""
    entry = manifest.shards[shard]
    schema = metadata_schema(manifest.bits)
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in dict.fromkeys(["row_id", *columns])])
    table = read_parquet(directory, entry.part, schema, entry.rows, mmap)
    check_row_ids(directory, entry.part, table["row_id"], entry.first_row, entry.rows)
    return table


def read_codes(
    directory: Path, manifest: Manifest, shards: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Row ids int64 (n,) and codes uint8 (n, K/8) of the given shards, in their order.

    Filled one part at a time into arrays allocated once, so that the peak memory is the
    result plus one part's two columns, not twice the result."""
    size = manifest.bits // 8
    n = sum(manifest.shards[s].rows for s in shards)
    ids = np.empty(n, dtype=np.int64)
    codes = np.empty((n, size), dtype=np.uint8)
    start = 0
    for shard in shards:
        footer = read_footer(directory, manifest, shard)
        rows = footer.rows
        ids[start : start + rows] = np.arange(footer.first_row, footer.first_row + rows)
        table = read_row_groups(footer, range(footer.groups), ["code"])
        codes[start : start + rows] = codes_from_arrow(table["code"], size)
        start += rows
    return ids, codes


# --- reading a few rows of a part -----------------------------------------------------------


@dataclass(frozen=True)
class PartFooter:
    """What a part's Parquet footer says, checked against the manifest (a few kB per part).

    group_starts: int64 (groups + 1,), the part-relative row of each row group's first row,
    then the part's row count. ids_checked: every row group's row_id statistics say it holds
    exactly its rows' ids (``first_row + group_starts[g]`` onwards); when a writer left no
    statistics, ``read_row_groups`` reads and checks the row ids of each group it reads.
    (Statistics that fit do not prove every id; ``check_index`` verifies whole files by
    checksum.) compact_strings: the string columns stored in under 16 bytes a value in every
    row group (dictionary-encoded, few distinct values), worth reading as dictionaries.
    """

    directory: Path
    rel: str
    metadata: pq.FileMetaData
    first_row: int
    group_starts: np.ndarray
    ids_checked: bool
    compact_strings: frozenset[str]

    @property
    def rows(self) -> int:
        return int(self.group_starts[-1])

    @property
    def groups(self) -> int:
        return len(self.group_starts) - 1

    def groups_of(self, rows: np.ndarray) -> np.ndarray:
        """The row group of each part-relative row (int64 (m,) -> int64 (m,))."""
        return np.searchsorted(self.group_starts, rows, side="right") - 1


def read_footer(directory: Path, manifest: Manifest, shard: str) -> PartFooter:
    """Read and check a shard's part footer: its columns, row count and row-id statistics.

    Reads only the footer (no column data)."""
    entry = manifest.shards[shard]
    rel, first, rows = entry.part, entry.first_row, entry.rows
    try:
        metadata = pq.read_metadata(directory / rel)
        found = metadata.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as err:
        raise unreadable(directory, rel, err) from None
    if not lacks_only_later_columns(found, metadata_schema(manifest.bits)):
        raise IndexStoreError(f"{directory}: {rel} does not have the expected columns")
    if metadata.num_rows != rows:
        raise IndexStoreError(
            f"{directory}: {rel} holds {metadata.num_rows} rows, {MANIFEST} says {rows}"
        )
    sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
    ids_checked = _check_id_statistics(directory, rel, metadata, found.names.index("row_id"),
                                       first + starts)
    return PartFooter(directory, rel, metadata, first, starts, ids_checked,
                      _compact_strings(metadata, found))


def _compact_strings(metadata: pq.FileMetaData, schema: pa.Schema) -> frozenset[str]:
    compact = set()
    for j, field in enumerate(schema):
        chunks = [metadata.row_group(g).column(j) for g in range(metadata.num_row_groups)]
        if field.type == pa.string() and all(
            c.has_dictionary_page and c.total_uncompressed_size < 16 * max(c.num_values, 1)
            for c in chunks
        ):
            compact.add(field.name)
    return frozenset(compact)


def read_row_groups(
    footer: PartFooter,
    groups: Sequence[int],
    columns: Sequence[str],
    mmap: bool = False,
    dictionary: Sequence[str] = (),
) -> pa.Table:
    """The rows of the given row groups (in that order) of a part, ``columns`` only.

    dictionary: string columns to read dictionary-encoded (as Parquet stores them): decoding
    a low-cardinality column to plain strings costs more than the rest of its read, and a
    caller that takes a few rows can cast just those. Safe to call from several threads: each
    call opens the file anew (from the cached footer, which costs no read).
    """
    columns = list(columns)
    read = columns if footer.ids_checked else list(dict.fromkeys([*columns, "row_id"]))
    present = footer.metadata.schema.names
    read = [c for c in read if c in present or c not in LATER_COLUMNS]
    try:
        reader = pq.ParquetFile(footer.directory / footer.rel, metadata=footer.metadata,
                                memory_map=mmap, read_dictionary=list(dictionary) or None)
        # One thread: with decoding threads per column, a small read only gets slower.
        table = reader.read_row_groups(list(groups), columns=read, use_threads=False)
    except (OSError, pa.ArrowException) as err:
        raise unreadable(footer.directory, footer.rel, err) from None
    if not footer.ids_checked:
        for g, chunk in zip(groups, _split(table["row_id"], footer, groups), strict=True):
            first = footer.first_row + int(footer.group_starts[g])
            check_row_ids(footer.directory, footer.rel, chunk, first, len(chunk),
                          footer.first_row, footer.rows)
    table = with_later_columns(table, columns)  # a part from before chips or STAC: nulls
    return table.select(columns)  # in the order asked for, without an added row_id


def _split(column: pa.ChunkedArray, footer: PartFooter, groups: Sequence[int]) -> list:
    sizes = np.diff(footer.group_starts)[list(groups)]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return [column.slice(int(a), int(b - a)) for a, b in zip(offsets[:-1], offsets[1:],
                                                             strict=True)]


def check_row_ids(directory: Path, rel: str, column: pa.ChunkedArray | pa.Array, first: int,
                  rows: int, part_first: int | None = None, part_rows: int | None = None) -> None:
    """Raise unless ``column`` holds exactly ``first .. first + rows - 1``; the message names
    the part's whole range (``part_first``, ``part_rows``; default the same)."""
    if not np.array_equal(column.to_numpy(), np.arange(first, first + rows, dtype=np.int64)):
        a = first if part_first is None else part_first
        n = rows if part_rows is None else part_rows
        raise IndexStoreError(f"{directory}: {rel} row ids are not {a}..{a + n - 1}")


def _check_id_statistics(directory: Path, rel: str, metadata: pq.FileMetaData, column: int,
                         expected: np.ndarray) -> bool:
    """True when every row group's row_id statistics fit its expected contiguous ids
    (``expected``: int64 (groups + 1,) ids, as group_starts); raise when one does not fit;
    False when some group has no statistics (the ids are then checked when read)."""
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        stats = group.column(column).statistics
        if group.num_rows == 0:
            continue
        if stats is None or not stats.has_min_max or stats.null_count is None:
            return False
        low, high = int(expected[g]), int(expected[g + 1]) - 1
        if (stats.min, stats.max, stats.null_count) != (low, high, 0):
            first, last = int(expected[0]), int(expected[-1]) - 1
            raise IndexStoreError(f"{directory}: {rel} row ids are not {first}..{last}")
    return True
