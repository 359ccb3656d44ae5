"""A shard's lookup file: its scene metadata, addressable by row, for the rows of search hits.

A Parquet part answers a lookup of one row by decoding a whole row group of every column
(thousands of rows); at 100 M rows, 50 hits touch about 40 parts and take hundreds of
milliseconds. The lookup file holds the same metadata (``METADATA_SCHEMA``: no row_id, which
is the position, and no code) as an Arrow IPC file of LZ4-compressed record batches of
``LOOKUP_BATCH_ROWS`` rows. It is memory-mapped, and one row costs the decompression of one
small batch; its footer (24 bytes a batch) is all that opening it reads.

The Parquet part stays the shard's record (merge, check, codes); the lookup file is written
beside it in the same commit, checksummed in the manifest, and verified against the part by
``check_index``. Indexes written before lookup files have none: their hits are read from the
parts' row groups.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from dahash_index.store.layout import (
    MANIFEST,
    METADATA_SCHEMA,
    IndexStoreError,
    lacks_only_windows,
    unreadable,
    with_window_columns,
)

# Rows per record batch. A hit decompresses its batch's buffers (3 for most columns): the
# fixed cost per buffer dominates below a few thousand rows, and LZ4 compresses small batches
# almost as well as large ones. benchmarks/lookup_batch.py measures the choice.
LOOKUP_BATCH_ROWS = 256

# Decompressing a batch's ~50 buffers on Arrow's thread pool costs more than it saves.
_READ_OPTIONS = ipc.IpcReadOptions(use_threads=False)


def write_lookup(rows: pa.Table, f) -> None:
    """Write ``rows`` (a table with METADATA_SCHEMA's columns, any others ignored) as a lookup
    file into the open binary file ``f``."""
    table = rows.select(METADATA_SCHEMA.names).cast(METADATA_SCHEMA)
    options = ipc.IpcWriteOptions(compression="lz4")
    with ipc.new_file(f, METADATA_SCHEMA, options=options) as writer:
        for batch in table.to_batches(max_chunksize=LOOKUP_BATCH_ROWS):
            writer.write_batch(batch)


class LookupFile:
    """An open lookup file of ``rows`` rows (memory-mapped; a few kB of footer in memory).

    Checked when opened: the schema and the number of batches; each batch read is checked for
    its length. Safe to share between threads (each batch read is independent).
    """

    def __init__(self, directory: Path, rel: str, rows: int) -> None:
        self.directory, self.rel, self.rows = directory, rel, rows
        try:
            self._reader = ipc.open_file(pa.memory_map(str(directory / rel)),
                                         options=_READ_OPTIONS)
        except (OSError, pa.ArrowException) as err:
            raise unreadable(directory, rel, err) from None
        if not lacks_only_windows(self._reader.schema, METADATA_SCHEMA):
            raise IndexStoreError(f"{directory}: {rel} does not have the expected columns")
        batches = -(-rows // LOOKUP_BATCH_ROWS)
        if self._reader.num_record_batches != batches:
            raise IndexStoreError(
                f"{directory}: {rel} holds {self._reader.num_record_batches} batches, "
                f"{MANIFEST} says {rows} rows ({batches} batches of {LOOKUP_BATCH_ROWS})"
            )

    def take(self, rows: np.ndarray) -> list[pa.RecordBatch]:
        """The part-relative ``rows`` (int64 (m,), ascending, in ``[0, rows)``) as one-row
        slices of their batches, in order: ``pa.Table.from_batches`` joins them."""
        out = []
        last, batch = -1, None
        for row in rows.tolist():
            b = row // LOOKUP_BATCH_ROWS
            if b != last:
                batch, last = self._batch(b), b
            out.append(batch.slice(row - b * LOOKUP_BATCH_ROWS, 1))
        return out

    def read_all(self) -> pa.Table:
        """Every row, METADATA_SCHEMA (for ``check_index``)."""
        batches = [self._batch(b) for b in range(self._reader.num_record_batches)]
        return pa.Table.from_batches(batches, schema=METADATA_SCHEMA)

    def _batch(self, b: int) -> pa.RecordBatch:
        try:
            batch = self._reader.get_batch(b)
        except (OSError, pa.ArrowException) as err:
            raise unreadable(self.directory, self.rel, err) from None
        batch = with_window_columns(batch, METADATA_SCHEMA.names)  # from before chips: nulls
        expected = min(LOOKUP_BATCH_ROWS, self.rows - b * LOOKUP_BATCH_ROWS)
        if batch.num_rows != expected:
            raise IndexStoreError(
                f"{self.directory}: {self.rel} batch {b} holds {batch.num_rows} rows, not "
                f"{expected}"
            )
        return batch
