"""What an index directory holds: file names, table schemas, the manifest and its checks."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from dahash_index.columns import (
    BOUNDS_COLUMNS,
    WGS84_COLUMNS,
    WINDOW_COLUMNS,
)
from dahash_index.errors import check_bits, one_line
from dahash_index.indexes.registry import list_kinds
from dahash_index.model.identity import ModelIdentity, missing_model

FORMAT = "dahash-index/3"
# Read and upgraded in memory; written back as FORMAT. Format 2 lacks WINDOW_COLUMNS: its
# parts and lookup files are read with those columns null (``with_window_columns``).
OLD_FORMATS = ("dahash-index/1", "dahash-index/2")
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


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def model_sha256(checkpoint_path: str | os.PathLike) -> str:
    from dahash_index.files import sha256_file

    if not Path(checkpoint_path).is_file():
        raise IndexStoreError(missing_model(checkpoint_path))
    return sha256_file(checkpoint_path)


def mismatch(directory: Path, manifest: Mapping, checkpoint_path: object, sha: str) -> str:
    return (
        f"index {directory} was built with model {manifest['model_sha256'][:12]} "
        f"(backbone {manifest['backbone']}); {checkpoint_path} is {sha[:12]}"
    )


def check_model(directory: Path, manifest: Mapping, model: ModelIdentity) -> None:
    """Raise ModelMismatchError unless ``model`` made (or may make) the index's codes."""
    if model.sha256 != manifest["model_sha256"]:
        raise ModelMismatchError(mismatch(directory, manifest, model.path or "the model",
                                          model.sha256))


# --- the manifest --------------------------------------------------------------------------
#
# "shards" maps each committed shard's key (its full URL: the identity of a shard is where it
# is plus what it holds) to an entry:
#   name         the shard's short name ('agricultural', 'part-0001.tar'), as in the parts
#   fingerprint  what the shard held when it was read (names, sizes, mtimes/ETags), or None
#   part/errors  its Parquet files; part_sha256/errors_sha256 their checksums at commit
#   lookup       its lookup file (store.lookup: the metadata again, addressable by row) and
#                lookup_sha256; absent in entries committed before lookup files
#   first_row, rows, error_count
# Entries are in commit order, which is row-id order. Row ids are never reused: a shard that
# is re-indexed gets new ones, so a live index may have gaps.
#
# The FAISS side (written by ``IndexWriter.finalize``, a cache of the parts' codes):
#   index_file      None (no FAISS side: readers index the parts' codes themselves), or
#                   SEGMENT_DIR ("index.faiss", a directory of segment files), or, in manifests
#                   written before segments, one FAISS file (an IDMap or IVF of every row)
#   index_segments  [{"file": path, "ranges": [[first_row, rows], ...]}, ...]: the FAISS files
#                   searched as one (indexes.sharded), each holding the rows of the ranges in that
#                   order, one range per shard (ascending). A flat segment is a plain
#                   IndexBinaryFlat (no ids stored: position -> row id from the ranges); an IVF
#                   segment stores row ids in its lists; all IVF segments share one quantizer.
#                   Added with segments; read_manifest derives it for older manifests.
#   index_shards    the shards whose rows the segments hold
#   index_retired   [first_row, rows] ranges that the segments still hold but no shard does
# Segment files are written once under a name no manifest has used (the generation) and never
# rewritten, so a reader may keep them memory-mapped across commits.
SEGMENT_DIR = "index.faiss"

_MANIFEST_KEYS = (
    "format bits model_sha256 backbone backbone_sha256 kind nlist row_count next_row_id "
    "generation index_file index_shards index_retired created updated extra shards"
).split()


def read_manifest(directory: Path) -> dict:
    """Read and check ``directory/manifest.json``: ordered row ranges, totals that add up."""
    path = directory / MANIFEST
    if not path.is_file():
        raise IndexStoreError(f"{directory}: not a dahash index (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise IndexStoreError(f"{directory}: {MANIFEST} is unreadable ({one_line(err)})") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found == OLD_FORMATS[0]:
        manifest = _upgrade_v1(manifest)
    elif found in OLD_FORMATS:
        manifest = manifest | {"format": FORMAT}
    elif found != FORMAT:
        raise IndexStoreError(f"{directory}: {MANIFEST} has format {found!r}, expected {FORMAT!r}")
    if isinstance(manifest, dict):
        manifest = _with_segments(manifest)
    missing = [key for key in _MANIFEST_KEYS if key not in manifest]
    if missing:
        raise IndexStoreError(f"{directory}: {MANIFEST} lacks {missing}")
    try:
        end, total = 0, 0
        for key, entry in manifest["shards"].items():
            if entry["first_row"] < end or entry["rows"] < 0:
                raise IndexStoreError(
                    f"{directory}: {MANIFEST}: shard {key!r} holds rows from "
                    f"{entry['first_row']} (x{entry['rows']}), overlapping rows before {end}"
                )
            end = entry["first_row"] + entry["rows"]
            total += entry["rows"]
        if total != manifest["row_count"] or end > manifest["next_row_id"]:
            raise IndexStoreError(
                f"{directory}: {MANIFEST}: shards hold {total} rows up to row {end} but "
                f"row_count is {manifest['row_count']} and next_row_id {manifest['next_row_id']}"
            )
        if not set(manifest["index_shards"]) <= set(manifest["shards"]):
            raise IndexStoreError(f"{directory}: {MANIFEST}: index_shards names unknown shards")
        for first, rows in manifest["index_retired"]:
            if first < 0 or rows < 1:
                raise IndexStoreError(f"{directory}: {MANIFEST}: bad retired range {first}+{rows}")
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        if isinstance(err, IndexStoreError):
            raise
        raise IndexStoreError(f"{directory}: {MANIFEST} is malformed ({one_line(err)})") from None
    return manifest


def index_segments(manifest: Mapping) -> list[dict]:
    """The manifest's FAISS segments (see the manifest comment); [] when ``index_file`` is None.
    A manifest from before segments names one file holding the rows of ``index_shards`` and
    ``index_retired``: that file is its one segment."""
    if manifest.get("index_file") is None:
        return []  # also when a commit dropped the FAISS side but kept an old segment list
    if "index_segments" in manifest:
        return manifest["index_segments"]
    shards = manifest.get("shards", {})
    ranges = [[shards[s]["first_row"], shards[s]["rows"]]
              for s in manifest.get("index_shards", []) if shards[s]["rows"]]
    ranges = sorted(ranges + [list(r) for r in manifest.get("index_retired", [])])
    return [{"file": manifest["index_file"], "ranges": ranges}]


def _with_segments(manifest: dict) -> dict:
    try:
        return {**manifest, "index_segments": index_segments(manifest)}
    except (KeyError, TypeError, AttributeError):
        return manifest  # malformed: the checks below name what is wrong


def with_window_columns(table: pa.Table | pa.RecordBatch, names: Sequence[str]
                        ) -> pa.Table | pa.RecordBatch:
    """``table`` with the WINDOW_COLUMNS among ``names`` that it lacks (a part or lookup file
    written before chips) added as int32 nulls; its columns in ``names``' order."""
    have = table.schema.names
    if all(name in have for name in names if name in WINDOW_COLUMNS):
        return table
    keep = [name for name in names if name in have or name in WINDOW_COLUMNS]
    arrays = [table.column(name) if name in have else pa.nulls(table.num_rows, pa.int32())
              for name in keep]
    schema = pa.schema([table.schema.field(name) if name in have else pa.field(name, pa.int32())
                        for name in keep])
    make = pa.RecordBatch if isinstance(table, pa.RecordBatch) else pa.Table
    return make.from_arrays(arrays, schema=schema)


def lacks_only_windows(found: pa.Schema, schema: pa.Schema) -> bool:
    """Whether ``found`` is ``schema`` but for some WINDOW_COLUMNS (a file from before
    chips), or ``schema`` itself."""
    kept = pa.schema([f for f in schema if f.name in found.names or f.name not in WINDOW_COLUMNS])
    return all(name in found.names for name in kept.names) and pa.schema(
        [found.field(name) for name in kept.names]).equals(kept)


def _upgrade_v1(manifest: dict) -> dict:
    """A format-1 manifest (shards keyed by name, no fingerprints or checksums) as format 2."""
    shards, keys = {}, {}
    for name, entry in manifest.get("shards", {}).items():
        key = entry.get("source") or name
        if key in shards:
            key = name
        keys[name] = key
        shards[key] = {k: v for k, v in entry.items() if k != "source"} | {
            "name": name, "fingerprint": None, "part_sha256": None, "errors_sha256": None,
        }
    return manifest | {
        "format": FORMAT,
        "shards": shards,
        "index_shards": [keys.get(n, n) for n in manifest.get("index_shards", [])],
        "index_retired": [],
    }


# A shard's files: the manifest entry's key for each, and the folder that holds them.
SHARD_FILES = {"part": "parts", "errors": "errors", "lookup": "lookup"}


def shard_files(entry: Mapping) -> list[tuple[str, str]]:
    """(key, relative path) of each file a shard's manifest entry names."""
    return [(key, entry[key]) for key in SHARD_FILES if entry.get(key)]


def check_files(directory: Path, manifest: Mapping) -> None:
    """Raise unless every file the manifest names exists (a stat each; contents are checked
    when read, or by ``check_index``)."""
    for entry in manifest["shards"].values():
        for _, rel in shard_files(entry):
            if not (directory / rel).is_file():
                raise IndexStoreError(f"{directory}: {rel} is missing (named in {MANIFEST})")
