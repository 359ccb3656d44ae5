"""What an index directory holds: file names, table schemas, the store's errors and the
model checks (the manifest has a module of its own, ``manifest``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from dahash_index.columns import (
    BOUNDS_COLUMNS,
    LATER_COLUMNS,
    WGS84_COLUMNS,
    WINDOW_COLUMNS,
)
from dahash_index.errors import check_bits, one_line
from dahash_index.files import sha256_file
from dahash_index.indexes.registry import list_kinds
from dahash_index.model.identity import missing_model

MANIFEST = "manifest.json"
MODEL = "model.pt"
# The kinds a store can be built as: the registry's storable ones (flat, ivf). Whatever the kind,
# the store keeps its FAISS side as segments searched as one (indexes.sharded).
KINDS = tuple(list_kinds(storable=True))

# The scene metadata a caller hands to ``commit_shard``; the parts add row_id and code in front.
METADATA_SCHEMA = pa.schema(
    [
        pa.field("url", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("member", pa.string()),  # tar member, None for plain files
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("bands", pa.int16(), nullable=False),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("crs", pa.string()),
        # bounds in the CRS's units, then in WGS84 degrees; pixel size in CRS units
        *(pa.field(name, pa.float64()) for name in BOUNDS_COLUMNS + WGS84_COLUMNS),
        pa.field("pixel_size_x", pa.float64()),
        pa.field("pixel_size_y", pa.float64()),
        pa.field("datetime", pa.string()),
        # a chip's pixel window in its scene (``chips``); null for a whole scene
        *(pa.field(name, pa.int32()) for name in WINDOW_COLUMNS),
        # a STAC item's id and its properties as JSON (``build --stac``); null for files
        pa.field("item_id", pa.string()),
        pa.field("properties", pa.string()),
    ]
)

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("url", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("member", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
    ]
)


def metadata_schema(bits: int) -> pa.Schema:
    """Schema of a Parquet part for K-bit codes: row_id int64, code binary(K/8), METADATA_SCHEMA."""
    bits = check_bits(bits)
    return pa.schema(
        [
            pa.field("row_id", pa.int64(), nullable=False),
            pa.field("code", pa.binary(bits // 8), nullable=False),
            *METADATA_SCHEMA,
        ]
    )


class IndexStoreError(ValueError):
    """An index directory cannot be created, opened or read; the one-line message names it."""


class ModelMismatchError(IndexStoreError):
    """The index was built with another model checkpoint."""


def unreadable(directory: Path, rel: str, err: BaseException) -> IndexStoreError:
    """The one-line error for a file of the index that cannot be read."""
    if isinstance(err, FileNotFoundError):
        return IndexStoreError(f"{directory}: {rel} is missing (named in {MANIFEST})")
    return IndexStoreError(f"{directory}: {rel} is unreadable ({one_line(err)})")


CHECKSUM_DIFFERS = "checksum differs from the one recorded at commit"


def checksum_problem(directory: Path, rel: str, expected: str | None) -> str | None:
    """CHECKSUM_DIFFERS when ``directory/rel`` does not hash to ``expected`` (the SHA-256
    recorded at commit), else None (also when none was recorded, as by older indexes)."""
    if expected is not None and sha256_file(directory / rel) != expected:
        return CHECKSUM_DIFFERS
    return None


def verify_checksum(directory: Path, rel: str, expected: str | None) -> None:
    """Refuse, in one line, a file of the index that does not match its recorded checksum:
    a flipped byte would otherwise answer queries wrongly and silently."""
    if checksum_problem(directory, rel, expected) is not None:
        raise checksum_error(directory, rel)


def checksum_error(directory: Path, rel: str) -> IndexStoreError:
    """The one-line refusal of a file of the index that differs from its checksum at commit."""
    return IndexStoreError(f"{directory}: {rel}: {CHECKSUM_DIFFERS}; `dahash-index check "
                           f"--repair {directory}` repairs it")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def model_sha256(checkpoint_path: str | os.PathLike) -> str:
    from dahash_index.files import sha256_file

    if not Path(checkpoint_path).is_file():
        raise IndexStoreError(missing_model(checkpoint_path))
    return sha256_file(checkpoint_path)


def with_later_columns(table: pa.Table | pa.RecordBatch, names: Sequence[str]
                       ) -> pa.Table | pa.RecordBatch:
    """``table`` with the LATER_COLUMNS among ``names`` that it lacks (a part or lookup file
    written before chips or STAC) added as nulls; its columns in ``names``' order."""
    have = table.schema.names
    if all(name in have for name in names if name in LATER_COLUMNS):
        return table
    keep = [name for name in names if name in have or name in LATER_COLUMNS]
    fields = [table.schema.field(name) if name in have else METADATA_SCHEMA.field(name)
              for name in keep]
    arrays = [table.column(name) if name in have else pa.nulls(table.num_rows, field.type)
              for name, field in zip(keep, fields, strict=True)]
    make = pa.RecordBatch if isinstance(table, pa.RecordBatch) else pa.Table
    return make.from_arrays(arrays, schema=pa.schema(fields))


def lacks_only_later_columns(found: pa.Schema, schema: pa.Schema) -> bool:
    """Whether ``found`` is ``schema`` but for some LATER_COLUMNS (a file from before chips
    or STAC), or ``schema`` itself."""
    kept = pa.schema([f for f in schema if f.name in found.names or f.name not in LATER_COLUMNS])
    return all(name in found.names for name in kept.names) and pa.schema(
        [found.field(name) for name in kept.names]).equals(kept)


# A shard's files: the manifest entry's field for each, and the folder that holds them.
SHARD_FILES = {"part": "parts", "errors": "errors", "lookup": "lookup", "vectors": "vectors",
               "digests": "digests"}
