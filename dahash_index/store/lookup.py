"""A shard's lookup file: its scene metadata, addressable by row, for the rows of search hits.

A Parquet part answers a lookup of one row by decoding a whole row group of every column
(thousands of rows); at 100 M rows, 50 hits touch about 40 parts and take hundreds of
milliseconds. The lookup file holds the same metadata (``METADATA_SCHEMA``: no row_id, which
is the position, and no code) as an uncompressed Arrow IPC file of record batches of
``LOOKUP_BATCH_ROWS`` rows, memory-mapped: reading a batch copies nothing, and gathering rows
touches only their pages, so hits cost the same whether 50 or 50,000 of them are asked for at
once (a batch of queries). Opening it reads its footer (a few hundred bytes).

Files written before (``LZ4_BATCH_ROWS``-row LZ4 batches, which a hit must decompress whole)
are still read; their schema carries no batch size.

The Parquet part stays the shard's record (merge, check, codes); the lookup file is written
beside it in the same commit, checksummed in the manifest, and verified against the part by
``check_index``. Indexes written before lookup files have none: their hits are read from the
parts' row groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from dahash_index.arrow_arrays import numeric_array
from dahash_index.store.blocks import BlockChecks
from dahash_index.store.layout import (
    MANIFEST,
    METADATA_SCHEMA,
    IndexStoreError,
    checksum_error,
    lacks_only_later_columns,
    unreadable,
    with_later_columns,
)

# Rows per record batch of the files written now: large, as a batch costs nothing to open; a
# bound keeps each string column's offsets within int32.
LOOKUP_BATCH_ROWS = 1 << 20
# The batch size of files written before this one was recorded in them (LZ4-compressed).
LZ4_BATCH_ROWS = 256
_BATCH_ROWS_KEY = b"dahash_index:batch_rows"
# Arrow's take over several record batches first concatenates them whole; gathering from at
# most this many rows of batches at a time bounds that copy (LZ4 files' small batches).
_TAKE_ROWS = 1 << 16

_READ_OPTIONS = ipc.IpcReadOptions(use_threads=False)


def write_lookup(rows: pa.Table, f, batch_rows: int = LOOKUP_BATCH_ROWS,
                 compression: str | None = None) -> list[int]:
    """Write ``rows`` (a table with METADATA_SCHEMA's columns, any others ignored) as a lookup
    file of ``batch_rows``-row batches into the open binary file ``f``; -> the offset where
    each batch ends (the next one's message starts there: ``LookupFile`` verifies a message's
    bytes before it reads its batch). compression: None (the store's), "lz4" or "zstd"
    (``benchmarks/lookup_batch.py`` compares them)."""
    table = rows.select(METADATA_SCHEMA.names).cast(METADATA_SCHEMA)
    schema = METADATA_SCHEMA.with_metadata({_BATCH_ROWS_KEY: str(batch_rows).encode()})
    options = ipc.IpcWriteOptions(compression=compression)
    ends = []
    with ipc.new_file(f, schema, options=options) as writer:
        for batch in table.to_batches(max_chunksize=batch_rows):
            writer.write_batch(batch)
            ends.append(f.tell())
    return ends


class LookupFile:
    """An open lookup file of ``rows`` rows (memory-mapped; a few kB of footer in memory).

    Checked when opened: the schema and the number of batches; each batch read is checked for
    its length. With ``blocks`` (``store.blocks`` digests of blocks of ``block_bytes``) and
    ``batch_ends`` (what
    ``write_lookup`` returned), every byte is verified against its block's checksum before it
    is used: the file's head and footer at open, a batch's message before the batch is read,
    the hits' values before they are taken. Safe to share between threads.
    """

    def __init__(self, directory: Path, rel: str, rows: int, blocks: bytes | str | None = None,
                 batch_ends: Sequence[int] | None = None, block_bytes: int | None = None) -> None:
        self.directory, self.rel, self.rows = directory, rel, rows
        self._checks = BlockChecks(directory, rel, blocks, block_bytes) if blocks else None
        self._batch_ends = list(batch_ends or [])
        try:
            if self._checks is not None:
                self._verify_structure()
            source = pa.memory_map(str(directory / rel))
            self._reader = ipc.open_file(source, options=_READ_OPTIONS)
            # where the mapping starts: a buffer's file offset is its address minus this
            self._base = source.read_buffer(1).address if self._checks is not None else 0
        except (OSError, pa.ArrowException) as err:
            raise unreadable(directory, rel, err) from None
        if not lacks_only_later_columns(self._reader.schema, METADATA_SCHEMA):
            raise IndexStoreError(f"{directory}: {rel} does not have the expected columns")
        said = (self._reader.schema.metadata or {}).get(_BATCH_ROWS_KEY)
        self.batch_rows = int(said) if said and said.isdigit() and int(said) > 0 \
            else LZ4_BATCH_ROWS
        batches = -(-rows // self.batch_rows)
        if self._reader.num_record_batches != batches:
            raise IndexStoreError(
                f"{directory}: {rel} holds {self._reader.num_record_batches} batches, "
                f"{MANIFEST} says {rows} rows ({batches} batches of {self.batch_rows})"
            )
        if self._checks is not None and len(self._batch_ends) != batches:
            raise checksum_error(directory, rel)
        # Rows whose values were verified (a bit each): a row read again costs no checks.
        self._rows_verified = np.zeros(-(-rows // 8), np.uint8) if self._checks else None
        self._batches: dict[int, pa.RecordBatch] = {}  # of the mapping: nothing copied

    def _verify_structure(self) -> None:
        """Verify what Arrow reads to open the file: its head (magic, schema message) and its
        footer (the batches' places)."""
        checks, size = self._checks, self._checks.size
        if size < 26:
            raise checksum_error(self.directory, self.rel)
        checks.verify_range(0, 16)
        head = checks.read(0, 16)
        schema_end = 16 + int(np.frombuffer(head[12:16], "<i4")[0])
        checks.verify_range(0, schema_end)
        checks.verify_range(size - 10, size)
        footer = int(np.frombuffer(checks.read(size - 10, size - 6), "<i4")[0])
        checks.verify_range(size - 10 - footer, size)
        self._message_starts = [schema_end, *self._batch_ends[:-1]]

    def take(self, rows: np.ndarray) -> pa.Table:
        """The part-relative ``rows`` (int64 (m,), ascending, in ``[0, rows)``) as a
        METADATA_SCHEMA table, in their order: each batch they touch is read once, and Arrow's
        ``take`` gathers the rows (no Python work per row)."""
        size = self.batch_rows
        batch_of = rows // size
        touched, first = np.unique(batch_of, return_index=True)
        bounds = np.append(first, len(rows))
        per_take = max(1, _TAKE_ROWS // size)
        pieces = [pa.Table.from_batches([], schema=METADATA_SCHEMA)]  # not empty_table: pandas
        for at in range(0, len(touched), per_take):
            group = touched[at:at + per_take]
            lo, hi = bounds[at], bounds[at + len(group)]
            batches = [self._batch(b) for b in group.tolist()]
            # Every batch but the file's last holds ``size`` rows (``_batch`` checks), and the
            # last can only come last: the k-th batch of the group starts at k * size.
            slot = np.searchsorted(group, batch_of[lo:hi])
            if self._checks is not None and not self._checks.complete:
                mine = rows[lo:hi]
                new = (self._rows_verified[mine >> 3] >> (mine & 7).astype(np.uint8)) & 1 == 0
                for k, batch in enumerate(batches):
                    self._verify_rows(batch, mine[new & (slot == k)] % size)
                np.bitwise_or.at(self._rows_verified, mine[new] >> 3,
                                 (1 << (mine[new] & 7)).astype(np.uint8))
            table = pa.Table.from_batches(batches, schema=METADATA_SCHEMA)
            pieces.append(table.take(numeric_array(slot * size + rows[lo:hi] % size)))
        return pa.concat_tables(pieces)

    def _verify_rows(self, batch: pa.RecordBatch, rows: np.ndarray) -> None:
        """Verify the blocks holding the values of ``rows`` (int64, of ``batch``) in every
        column: validity bits, fixed-width values, string offsets; then, from offsets now
        known to be intact, the strings' characters."""
        first, last, strings = [], [], []
        for column in batch.columns:
            validity, *values = column.buffers()
            at = column.offset + rows
            if validity is not None and validity.size:
                first.append(validity.address - self._base + at // 8)
                last.append(first[-1])
            string = pa.types.is_string(column.type)
            width = 4 if string else column.type.bit_width // 8  # int32 offsets for strings
            if values[0] is not None and values[0].size:
                first.append(values[0].address - self._base + at * width)
                # a string's offset and the next one, which ends it
                last.append(first[-1] + (2 * width if string else width) - 1)
            if string and values[1] is not None and values[1].size:
                strings.append((values[0], values[1], at))
        if first:
            self._checks.verify_bytes(np.concatenate(first), np.concatenate(last))
        first, last = [], []
        for offsets, chars, at in strings:
            bounds = np.frombuffer(offsets, np.int32)
            start, end = bounds[at].astype(np.int64), bounds[at + 1].astype(np.int64)
            held = end > start
            base = chars.address - self._base
            first.append(base + start[held])
            last.append(base + end[held] - 1)
        if first:  # in one call: its blocks are read from the disk together
            self._checks.verify_bytes(np.concatenate(first), np.concatenate(last))

    def read_all(self) -> pa.Table:
        """Every row, METADATA_SCHEMA (for ``check_index``)."""
        batches = [self._batch(b) for b in range(self._reader.num_record_batches)]
        return pa.Table.from_batches(batches, schema=METADATA_SCHEMA)

    def _batch(self, b: int) -> pa.RecordBatch:
        found = self._batches.get(b)
        if found is not None:
            return found
        if self._checks is not None:  # the batch's message: where its buffers lie
            start = self._message_starts[b]
            self._checks.verify_range(start, start + 8)
            length = int(np.frombuffer(self._checks.read(start + 4, start + 8), "<i4")[0])
            self._checks.verify_range(start, start + 8 + length)
        try:
            batch = self._reader.get_batch(b)
        except (OSError, pa.ArrowException) as err:
            raise unreadable(self.directory, self.rel, err) from None
        batch = with_later_columns(batch, METADATA_SCHEMA.names)  # from before chips or STAC: nulls
        expected = min(self.batch_rows, self.rows - b * self.batch_rows)
        if batch.num_rows != expected:
            raise IndexStoreError(
                f"{self.directory}: {self.rel} batch {b} holds {batch.num_rows} rows, not "
                f"{expected}"
            )
        if self._checks is not None:  # uncompressed: a view of the mapping, kept
            self._batches[b] = batch
        return batch
