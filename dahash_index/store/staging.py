"""The staging area of an index: shard results written by workers, waiting to be adopted.

A worker (the local build loop, a Ray actor, a process on another machine sharing the
directory) writes each shard it encoded as one self-contained result::

    staging/<id>.result/
        result.json      shard name, URL and fingerprint, model SHA-256, K, row counts
        rows.parquet     code + METADATA_SCHEMA, no row ids yet
        errors.parquet   ERRORS_SCHEMA
        vectors.npy      the rows' re-rank vectors (``store.vectors``), for a model with them

It is written under ``staging/.tmp-<id>/`` and renamed into place whole, so a worker killed
mid-shard leaves only a ``.tmp-`` directory, which no one lists and the next writer deletes.
Row ids are not known until the single committer adopts the result
(``IndexWriter.adopt``): then its rows are written as a part with row ids and committed like
any shard, and the result is deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dahash_index.errors import one_line
from dahash_index.files import atomic_write, fsync_dir
from dahash_index.indexes.binary import check_codes
from dahash_index.model.identity import ModelIdentity
from dahash_index.store.layout import (
    ERRORS_SCHEMA,
    METADATA_SCHEMA,
    IndexStoreError,
    with_later_columns,
)
from dahash_index.store.parts import codes_from_arrow, codes_to_arrow, conform, write_table
from dahash_index.store.vectors import check_vectors, write_vectors

STAGING = "staging"
RESULT_FORMAT = "dahash-index-shard-result/1"
_SUFFIX = ".result"
_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class StagedResult:
    """A finished shard result in a staging area: where it is and what it says of itself."""

    path: Path
    shard_name: str
    shard_url: str
    fingerprint: str | None
    model_sha256: str
    bits: int
    rows: int
    error_count: int
    chips_skipped: int = 0  # chips of large scenes left out as mostly nodata (not errors)
    precision: str | None = None  # the backbone's arithmetic (``precision``); None: unrecorded
    vector_dim: int | None = None  # D of its re-rank vectors; None: it has none


def write_result(
    staging: Path,
    model: ModelIdentity,
    shard_name: str,
    shard_url: str,
    fingerprint: str | None,
    codes: np.ndarray,
    rows: pa.Table | Sequence[Mapping[str, Any]],
    errors: pa.Table | Sequence[Mapping[str, Any]],
    chips_skipped: int = 0,
    precision: str | None = None,
    vectors: np.ndarray | None = None,
) -> StagedResult:
    """Write one shard's result into ``staging`` whole or not at all; return it.

    codes: uint8 (n, K/8), row i of ``rows`` (METADATA_SCHEMA columns) goes with code i;
    errors: ERRORS_SCHEMA rows. precision: what the backbone ran in. vectors: the rows'
    re-rank vectors (n, D), or None. Checked here, so that a bad result fails in the worker
    that made it, not in the committer.
    """
    codes = check_codes(codes, model.bits // 8)
    scene = conform(rows, METADATA_SCHEMA, f"rows of shard {shard_name!r}")
    if scene.num_rows != len(codes):
        raise ValueError(f"shard {shard_name!r}: {len(codes)} codes but {scene.num_rows} rows")
    errs = conform(errors, ERRORS_SCHEMA, f"errors of shard {shard_name!r}")
    if vectors is not None:
        vectors = check_vectors(vectors, len(codes), f"shard {shard_name!r}")
    table = pa.Table.from_arrays([codes_to_arrow(codes), *scene.columns],
                                 schema=_rows_schema(model.bits))
    result_id = uuid.uuid4().hex
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / f"{_TMP_PREFIX}{result_id}"
    tmp.mkdir()
    result = StagedResult(staging / f"{result_id}{_SUFFIX}", shard_name, shard_url, fingerprint,
                          model.sha256, model.bits, scene.num_rows, errs.num_rows, chips_skipped,
                          precision, None if vectors is None else vectors.shape[1])
    try:
        atomic_write(tmp / "rows.parquet", lambda f: write_table(table, f))
        atomic_write(tmp / "errors.parquet", lambda f: write_table(errs, f))
        if vectors is not None:
            atomic_write(tmp / "vectors.npy", lambda f: write_vectors(vectors, f))
        meta = {"format": RESULT_FORMAT,
                **{k: v for k, v in asdict(result).items() if k != "path"}}
        data = json.dumps(meta, indent=1).encode()
        atomic_write(tmp / "result.json", lambda f: f.write(data))
        fsync_dir(tmp)
        os.rename(tmp, result.path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(staging)
    return result


def list_results(staging: Path) -> list[StagedResult]:
    """The finished results in ``staging``, oldest first (unfinished ``.tmp-`` ones are not
    results). A result whose result.json is unreadable is refused (IndexStoreError)."""
    if not staging.is_dir():
        return []
    paths = [p for p in staging.iterdir() if p.name.endswith(_SUFFIX) and p.is_dir()]
    return [read_result(p) for p in sorted(paths, key=lambda p: (p.stat().st_mtime_ns, p.name))]


def read_result(path: Path) -> StagedResult:
    """The description of the result at ``path`` (its result.json)."""
    try:
        meta = json.loads((path / "result.json").read_bytes())
        if meta.pop("format") != RESULT_FORMAT:
            raise ValueError("not a shard result")
        return StagedResult(path=path, **meta)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise IndexStoreError(f"{path}: unreadable shard result ({one_line(err)})") from None


def read_rows(result: StagedResult) -> tuple[np.ndarray, pa.Table, pa.Table]:
    """A result's (codes uint8 (n, K/8), metadata rows (METADATA_SCHEMA), errors)."""
    try:
        table = pq.read_table(result.path / "rows.parquet")
        errors = pq.read_table(result.path / "errors.parquet")
    except (OSError, pa.ArrowException) as err:
        raise IndexStoreError(f"{result.path}: unreadable shard result ({one_line(err)})") from None
    # staged before chips or STAC: those columns null
    table = with_later_columns(table, _rows_schema(result.bits).names)
    if (not table.schema.equals(_rows_schema(result.bits)) or table.num_rows != result.rows
            or not errors.schema.equals(ERRORS_SCHEMA) or errors.num_rows != result.error_count):
        raise IndexStoreError(f"{result.path}: shard result does not match its result.json")
    codes = codes_from_arrow(table["code"], result.bits // 8)
    return codes, table.drop_columns(["code"]), errors


def read_vectors(result: StagedResult) -> np.ndarray | None:
    """A result's re-rank vectors as stored (int8 (n, D), ``store.vectors``), or None when it
    has none."""
    if result.vector_dim is None:
        return None
    try:
        vectors = np.load(result.path / "vectors.npy", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise IndexStoreError(f"{result.path}: unreadable shard result ({one_line(err)})") from None
    if vectors.shape != (result.rows, result.vector_dim):
        raise IndexStoreError(f"{result.path}: shard result does not match its result.json")
    return vectors


def remove_result(result: StagedResult) -> None:
    """Delete a result (adopted, refused or stale)."""
    shutil.rmtree(result.path, ignore_errors=True)


def remove_unfinished(staging: Path) -> None:
    """Delete what killed workers left; only while no worker writes (the writer's open)."""
    if staging.is_dir():
        for p in staging.iterdir():
            if p.name.startswith(_TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


def _rows_schema(bits: int) -> pa.Schema:
    return pa.schema([pa.field("code", pa.binary(bits // 8), nullable=False), *METADATA_SCHEMA])
