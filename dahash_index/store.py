"""The on-disk index: a self-describing directory and its crash-safe commit protocol.

Layout of an index directory::

    manifest.json            the commit point: format, model, K, kind, shards, row count, ...
    model.pt                 a copy of the checkpoint the codes came from
    parts/<NNNNNN>.parquet   one per committed shard: row_id, code and the scene metadata
    errors/<NNNNNN>.parquet  one per committed shard: the scenes that could not be indexed
    index-<G>.faiss          the FAISS binary index written by ``finalize`` (a cache)

A shard's codes live in its Parquet part (a fixed-size binary ``code`` column), so one file
makes a shard's codes and metadata durable together and they can never disagree. Row ids are
int64 and contiguous: the n rows of a shard get ``[next_row_id, next_row_id + n)``, so a row id
is also the row's position in the parts concatenated in commit order.

Commit protocol. Every file is written to ``<name>.tmp``, fsynced and renamed into place; a
shard's part and errors files, under names no manifest has used yet (the new generation
number), become durable before the new ``manifest.json`` is, and only the rename of
``manifest.json`` commits the shard. A process killed at any instant therefore leaves either the
old manifest (whose files are all intact; the new files are unreferenced leftovers) or the new
one (whose files are all durable). Leftovers are deleted when a writer next opens the index,
after it has read the manifest that does not reference them.

Readers read ``manifest.json`` once, at open, and see that committed state however the writer
goes on. The FAISS file is derived from the parts: a reader adds the codes of shards committed
after the last ``finalize`` in memory, and rebuilds the index from the parts if the file is gone.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import shutil
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexes import add_codes, default_nlist, load_index, new_index, save_index, train_ivf
from indexes.binary import as_ivf, check_bits, check_codes

FORMAT = "dahash-index/1"
MANIFEST = "manifest.json"
MODEL = "model.pt"
KINDS = ("flat", "ivf")

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
        *(pa.field(name, pa.float64()) for name in ("left", "bottom", "right", "top")),
        *(pa.field(name, pa.float64()) for name in ("west", "south", "east", "north")),
        pa.field("pixel_size_x", pa.float64()),
        pa.field("pixel_size_y", pa.float64()),
        pa.field("datetime", pa.string()),
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


# --- small helpers -------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once the directory entry is flushed.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through ``path.tmp``: write, flush, fsync, rename. The caller fsyncs the
    directory. A failure leaves at most the .tmp file, which the next writer open deletes."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _model_sha256(checkpoint_path: str | os.PathLike) -> str:
    # Imported here: torch costs seconds to import and reading an index never needs it.
    from dahash_index.backbones import sha256_file

    if not Path(checkpoint_path).is_file():
        raise IndexStoreError(f"{checkpoint_path}: model checkpoint not found")
    return sha256_file(checkpoint_path)


def _mismatch(directory: Path, manifest: Mapping, checkpoint_path: object, sha: str) -> str:
    return (
        f"index {directory} was built with model {manifest['model_sha256'][:12]} "
        f"(backbone {manifest['backbone']}); {checkpoint_path} is {sha[:12]}"
    )


def _codes_to_arrow(codes: np.ndarray) -> pa.FixedSizeBinaryArray:
    """uint8 (n, K/8), C-contiguous -> fixed_size_binary(K/8) array of n values (zero copy)."""
    n, size = codes.shape
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(size), n, [None, pa.py_buffer(codes)])


def _codes_from_arrow(column: pa.ChunkedArray, size: int) -> np.ndarray:
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


def _conform(
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


# --- the manifest and the files it names ---------------------------------------------------

_MANIFEST_KEYS = (
    "format bits model_sha256 backbone backbone_sha256 kind nlist row_count next_row_id "
    "generation index_file index_shards created updated extra shards"
).split()


def _read_manifest(directory: Path) -> dict:
    """Read and check ``directory/manifest.json``: contiguous row ids, totals that add up."""
    path = directory / MANIFEST
    if not path.is_file():
        raise IndexStoreError(f"{directory}: not a dahash index (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise IndexStoreError(f"{directory}: {MANIFEST} is unreadable ({_one_line(err)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise IndexStoreError(f"{directory}: {MANIFEST} has format {found!r}, expected {FORMAT!r}")
    missing = [key for key in _MANIFEST_KEYS if key not in manifest]
    if missing:
        raise IndexStoreError(f"{directory}: {MANIFEST} lacks {missing}")
    try:
        position = 0
        for name, entry in manifest["shards"].items():
            if entry["first_row"] != position or entry["rows"] < 0:
                raise IndexStoreError(
                    f"{directory}: {MANIFEST}: shard {name!r} holds rows from "
                    f"{entry['first_row']} (x{entry['rows']}), expected from {position}"
                )
            position += entry["rows"]
        if not position == manifest["row_count"] == manifest["next_row_id"]:
            raise IndexStoreError(
                f"{directory}: {MANIFEST}: shards hold {position} rows but row_count is "
                f"{manifest['row_count']} and next_row_id {manifest['next_row_id']}"
            )
        if not set(manifest["index_shards"]) <= set(manifest["shards"]):
            raise IndexStoreError(f"{directory}: {MANIFEST}: index_shards names unknown shards")
    except (KeyError, TypeError, AttributeError) as err:
        raise IndexStoreError(f"{directory}: {MANIFEST} is malformed ({_one_line(err)})") from None
    return manifest


def _check_files(directory: Path, manifest: Mapping) -> None:
    # Only a stat per file: contents are checked when read.
    for entry in manifest["shards"].values():
        for rel in (entry["part"], entry["errors"]):
            if not (directory / rel).is_file():
                raise IndexStoreError(f"{directory}: {rel} is missing (named in {MANIFEST})")


def _read_parquet(
    directory: Path, rel: str, schema: pa.Schema, rows: int, mmap: bool = False
) -> pa.Table:
    """Read one part or errors file, refusing one that does not match what the manifest says."""
    try:
        table = pq.read_table(directory / rel, columns=schema.names, memory_map=mmap)
    except FileNotFoundError:
        raise IndexStoreError(f"{directory}: {rel} is missing (named in {MANIFEST})") from None
    except (OSError, pa.ArrowException) as err:
        raise IndexStoreError(f"{directory}: {rel} is unreadable ({_one_line(err)})") from None
    if not table.schema.equals(schema):
        raise IndexStoreError(f"{directory}: {rel} does not have the expected columns")
    if table.num_rows != rows:
        raise IndexStoreError(
            f"{directory}: {rel} holds {table.num_rows} rows, {MANIFEST} says {rows}"
        )
    return table


def _read_part(
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
    table = _read_parquet(directory, entry["part"], schema, entry["rows"], mmap)
    first = entry["first_row"]
    expected = np.arange(first, first + entry["rows"], dtype=np.int64)
    if not np.array_equal(table["row_id"].to_numpy(), expected):
        raise IndexStoreError(
            f"{directory}: {entry['part']} row ids are not {first}..{first + entry['rows'] - 1}"
        )
    return table


def _read_codes(
    directory: Path, manifest: Mapping, shards: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Row ids int64 (n,) and codes uint8 (n, K/8) of the given shards, in their order."""
    size = manifest["bits"] // 8
    tables = [_read_part(directory, manifest, s, ["code"]) for s in shards]
    if not tables:
        return np.empty(0, dtype=np.int64), np.empty((0, size), dtype=np.uint8)
    table = pa.concat_tables(tables)
    return table["row_id"].to_numpy(), _codes_from_arrow(table["code"], size)


def _faiss_index(
    directory: Path, manifest: Mapping, mmap: bool = False, train_sample: int | None = None
) -> tuple[faiss.IndexBinary, int | None]:
    """The index of every committed row, and its nlist (None for flat).

    Starts from the manifest's FAISS file and adds the shards it lacks; from scratch (training
    an IVF on the codes, or ``train_sample`` of them) when there is no file or it is gone, which
    happens when a later ``finalize`` replaced it while a reader was open. ``mmap`` applies only
    when the file covers every shard: a memory-mapped index is read-only.
    """
    kind, nlist, bits = manifest["kind"], manifest["nlist"], manifest["bits"]
    shards = list(manifest["shards"])
    covered = set(manifest["index_shards"])
    todo = [s for s in shards if s not in covered]
    index = None
    if manifest["index_file"] is not None:
        index = _load_faiss_file(directory, manifest, mmap and not todo)
    if index is None:
        todo = shards
        if kind == "ivf" and nlist is None:
            nlist = default_nlist(manifest["row_count"])
        index = new_index(bits, kind, nlist)
    ids, codes = _read_codes(directory, manifest, todo)
    if not index.is_trained:
        if train_sample is not None and train_sample < len(codes):
            rows = np.random.default_rng(0).choice(len(codes), size=train_sample, replace=False)
            sample = codes[np.sort(rows)]
        else:
            sample = codes
        try:
            train_ivf(index, sample)
        except ValueError as err:
            raise IndexStoreError(f"{directory}: cannot train the IVF index: {err}") from None
    if len(codes):  # a memory-mapped index refuses even an empty add
        add_codes(index, codes, ids)
    return index, nlist


def _load_faiss_file(directory: Path, manifest: Mapping, mmap: bool) -> faiss.IndexBinary | None:
    """The manifest's FAISS file, checked against it; None if the file is gone."""
    rel = manifest["index_file"]
    path = directory / rel
    try:
        index = load_index(str(path), mmap=mmap)
    except RuntimeError as err:  # FAISS reports every read problem as RuntimeError
        if not path.exists():
            return None
        raise IndexStoreError(f"{directory}: {rel} is unreadable ({_one_line(err)})") from None
    expected = sum(manifest["shards"][s]["rows"] for s in manifest["index_shards"])
    is_ivf = as_ivf(index) is not None
    if index.d != manifest["bits"] or is_ivf != (manifest["kind"] == "ivf"):
        raise IndexStoreError(
            f"{directory}: {rel} is not a {manifest['bits']}-bit {manifest['kind']} index"
        )
    if index.ntotal != expected:
        raise IndexStoreError(
            f"{directory}: {rel} holds {index.ntotal} codes, {MANIFEST} says {expected}"
        )
    return index


# --- writing -------------------------------------------------------------------------------


def _create(
    directory: Path,
    checkpoint_path: str | os.PathLike,
    kind: str,
    nlist: int | None,
    extra: Mapping | None,
) -> None:
    """Make a new index directory: built beside it, then renamed into place, so that a crash
    never leaves a half-made index where the next open would refuse it as a foreign folder."""
    from dahash_index.checkpoint import load_checkpoint  # lazy: see _model_sha256

    if not Path(checkpoint_path).is_file():
        raise IndexStoreError(f"{checkpoint_path}: model checkpoint not found")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.creating-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        (tmp / "parts").mkdir()
        (tmp / "errors").mkdir()
        with open(checkpoint_path, "rb") as src:
            _write_file(tmp / MODEL, lambda f: shutil.copyfileobj(src, f, 1 << 20))
        # Read the copy, not the original: its checksum is then the one of the file we hold.
        ckpt = load_checkpoint(tmp / MODEL)
        now = _now()
        manifest = {
            "format": FORMAT,
            "bits": ckpt.net_config.bits,
            "model_sha256": ckpt.sha256,
            "backbone": ckpt.backbone,
            "backbone_sha256": ckpt.backbone_sha256,
            "kind": kind,
            "nlist": nlist,
            "row_count": 0,
            "next_row_id": 0,
            "generation": 0,
            "index_file": None,
            "index_shards": [],
            "created": now,
            "updated": now,
            "extra": extra or {},
            "shards": {},
        }
        data = json.dumps(manifest, indent=1).encode()
        _write_file(tmp / MANIFEST, lambda f: f.write(data))
        _fsync_dir(tmp)
        os.rename(tmp, directory)  # replaces a missing or empty directory, atomically
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if (directory / MANIFEST).is_file():
            return  # another process created it first; the caller opens theirs
        raise
    _fsync_dir(directory.parent)


def _remove_leftovers(directory: Path, manifest: Mapping) -> None:
    """Delete what no committed manifest references: parts of interrupted commits, .tmp files,
    FAISS files replaced by a later finalize. Called only after reading that manifest."""
    keep = {entry[k] for entry in manifest["shards"].values() for k in ("part", "errors")}
    for sub in ("parts", "errors"):
        (directory / sub).mkdir(exist_ok=True)
        for f in (directory / sub).iterdir():
            if f.suffix in (".parquet", ".tmp") and f"{sub}/{f.name}" not in keep and f.is_file():
                f.unlink()
    for f in directory.iterdir():
        stale = f.name.startswith("index-") and f.suffix == ".faiss"
        if f.is_file() and (f.suffix == ".tmp" or (stale and f.name != manifest["index_file"])):
            f.unlink()


def _lock(directory: Path) -> int:
    # Two writers would delete each other's in-flight files; flock is released by the kernel
    # even when the holder is SIGKILLed.
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise IndexStoreError(f"{directory}: another IndexWriter has it open") from None
    return fd


class IndexWriter:
    """Adds shards to an index directory, one atomic commit each; see the module docstring.

    One writer per directory at a time (an exclusive lock, released by ``close``, by garbage
    collection or by the process's end). Usable as a context manager.
    """

    def __init__(self, path: Path, manifest: dict, lock_fd: int) -> None:
        self.path = path
        self._manifest = manifest
        self._close_lock = weakref.finalize(self, os.close, lock_fd)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        checkpoint_path: str | os.PathLike,
        kind: str = "flat",
        nlist: int | None = None,
        extra: Mapping | None = None,
    ) -> IndexWriter:
        """Create an index directory, or reopen one to add shards to it.

        A new directory gets a copy of the checkpoint as model.pt and an empty manifest.
        Reopening refuses (ModelMismatchError) a checkpoint whose SHA-256 differs from the
        index's model, and (IndexStoreError) a different ``kind``, a given ``nlist`` or ``extra``
        different from the stored ones (None means "whatever the index has"). An existing
        non-empty directory without manifest.json is refused, never written into.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if extra is not None:
            extra = json.loads(json.dumps(dict(extra)))  # as stored: tuples become lists
        if nlist is not None and kind != "ivf":
            raise ValueError("nlist applies only to kind='ivf'")
        path = Path(path)
        if not (path / MANIFEST).is_file():
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise IndexStoreError(
                    f"{path}: exists and is not a dahash index (no {MANIFEST}); refusing to "
                    "write into it"
                )
            _create(path, checkpoint_path, kind, nlist, extra)
        lock_fd = _lock(path)
        try:
            manifest = _read_manifest(path)
            sha = _model_sha256(checkpoint_path)
            if sha != manifest["model_sha256"]:
                raise ModelMismatchError(_mismatch(path, manifest, checkpoint_path, sha))
            if kind != manifest["kind"]:
                raise IndexStoreError(f"{path}: index kind is {manifest['kind']!r}, not {kind!r}")
            if nlist is not None and manifest["nlist"] not in (None, nlist):
                raise IndexStoreError(f"{path}: index nlist is {manifest['nlist']}, not {nlist}")
            if extra is not None and extra != manifest["extra"]:
                raise IndexStoreError(
                    f"{path}: index was built with {manifest['extra']}, not {extra}"
                )
            _check_files(path, manifest)
            _remove_leftovers(path, manifest)
        except BaseException:
            os.close(lock_fd)
            raise
        if nlist is not None and manifest["nlist"] is None:
            manifest = {**manifest, "nlist": nlist}  # recorded with the next commit
        return cls(path, manifest, lock_fd)

    @property
    def manifest(self) -> dict:
        """A copy of the last committed manifest."""
        return copy.deepcopy(self._manifest)

    def is_committed(self, shard_name: str) -> bool:
        return shard_name in self._manifest["shards"]

    def commit_shard(
        self,
        shard_name: str,
        source: str,
        codes: np.ndarray,
        rows: pa.Table | Sequence[Mapping[str, Any]],
        errors: Sequence[Mapping[str, Any]],
    ) -> range:
        """Make one shard durable, whole or not at all; return the row ids its rows got.

        codes: uint8 (n, K/8), row i of ``rows`` goes with code i. rows: n rows of
        METADATA_SCHEMA's columns (a table or dicts; absent nullable columns become null).
        errors: dicts of ERRORS_SCHEMA's columns, the shard's scenes that could not be indexed.
        ``shard`` in rows and errors must be ``shard_name``. n may be 0: a shard whose every
        scene failed still commits (with its errors), so that a re-run does not retry it forever.
        """
        self._check_open()
        if self.is_committed(shard_name):
            raise IndexStoreError(f"{self.path}: shard {shard_name!r} is already committed")
        m = self._manifest
        codes = check_codes(codes, m["bits"] // 8)
        n = len(codes)
        scene = _conform(rows, METADATA_SCHEMA, f"rows of shard {shard_name!r}")
        if scene.num_rows != n:
            raise ValueError(f"shard {shard_name!r}: {n} codes but {scene.num_rows} rows")
        errs = _conform(errors, ERRORS_SCHEMA, f"errors of shard {shard_name!r}")
        for what, table in (("rows", scene), ("errors", errs)):
            if set(table["shard"].unique().to_pylist()) - {shard_name}:
                raise ValueError(f"shard {shard_name!r}: {what} name another shard")

        first = m["next_row_id"]
        ids = np.arange(first, first + n, dtype=np.int64)
        part = pa.Table.from_arrays(
            [pa.array(ids), _codes_to_arrow(codes), *scene.columns],
            schema=metadata_schema(m["bits"]),
        )
        generation = m["generation"] + 1
        # A name no committed manifest uses: an interrupted attempt's file is never referenced.
        name = f"{generation:06d}.parquet"
        entry = {
            "part": f"parts/{name}",
            "errors": f"errors/{name}",
            "first_row": first,
            "rows": n,
            "error_count": errs.num_rows,
            "source": source,
        }
        for rel, table in ((entry["part"], part), (entry["errors"], errs)):
            _write_file(self.path / rel, lambda f, t=table: pq.write_table(t, f))
        # The renames must be durable before the manifest that references them is.
        _fsync_dir(self.path / "parts")
        _fsync_dir(self.path / "errors")
        self._commit(
            {
                **m,
                "row_count": m["row_count"] + n,
                "next_row_id": first + n,
                "generation": generation,
                "shards": {**m["shards"], shard_name: entry},
            }
        )
        return range(first, first + n)

    def finalize(self, ivf_train_sample: int | None = None) -> None:
        """Write ``index-<generation>.faiss`` covering every committed shard and commit it.

        The previous FAISS file, if any, is reused (an IVF stays trained) and the shards it
        lacks are added. An IVF without one is trained on all codes, or on a random sample of
        ``ivf_train_sample`` of them, with the index's nlist or ``default_nlist(row_count)``;
        too few codes raise IndexStoreError (the caller may fall back to a flat index).
        Nothing happens when the FAISS file already covers every shard.
        """
        self._check_open()
        if ivf_train_sample is not None and ivf_train_sample < 1:
            raise ValueError(f"ivf_train_sample must be positive, got {ivf_train_sample}")
        m = self._manifest
        shards = list(m["shards"])
        if m["index_file"] is not None and m["index_shards"] == shards:
            return
        index, nlist = _faiss_index(self.path, m, train_sample=ivf_train_sample)
        generation = m["generation"] + 1
        index_file = f"index-{generation}.faiss"
        save_index(index, str(self.path / index_file))
        self._commit(
            {
                **m,
                "nlist": nlist,
                "generation": generation,
                "index_file": index_file,
                "index_shards": shards,
            }
        )
        # Only now that no durable manifest references them.
        for f in self.path.glob("index-*.faiss"):
            if f.name != index_file:
                f.unlink(missing_ok=True)

    def close(self) -> None:
        """Release the directory's lock; the writer cannot commit after this."""
        self._close_lock()

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if not self._close_lock.alive:
            raise IndexStoreError(f"{self.path}: this IndexWriter is closed")

    def _commit(self, manifest: dict) -> None:
        manifest["updated"] = _now()
        data = json.dumps(manifest, indent=1).encode()
        _write_file(self.path / MANIFEST, lambda f: f.write(data))
        # The rename has happened: memory follows the disk even if the fsync below fails.
        self._manifest = manifest
        _fsync_dir(self.path)


# --- reading -------------------------------------------------------------------------------


class IndexReader:
    """The last committed state of an index directory, as of ``open``.

    Metadata of all parts is read at first use and kept in memory (the parts are
    never deleted, so a running writer does not disturb it).
    """

    def __init__(self, path: Path, manifest: dict, mmap: bool = False) -> None:
        self.path = path
        self._manifest = manifest
        self._mmap = mmap
        self._parts: list[pa.Table] | None = None
        self._starts = np.array(
            [e["first_row"] for e in manifest["shards"].values()], dtype=np.int64
        )
        self._index: faiss.IndexBinary | None = None

    @classmethod
    def open(cls, path: str | os.PathLike, mmap: bool = False) -> IndexReader:
        """Read the manifest (once) and check that the files it names exist.

        mmap: memory-map the Parquet parts and the FAISS file (the latter only when it covers
        every shard, see ``faiss_index``).
        """
        path = Path(path)
        manifest = _read_manifest(path)
        _check_files(path, manifest)
        return cls(path, manifest, mmap)

    @property
    def manifest(self) -> dict:
        """A copy of the manifest read at open."""
        return copy.deepcopy(self._manifest)

    @property
    def bits(self) -> int:
        return self._manifest["bits"]

    @property
    def kind(self) -> str:
        return self._manifest["kind"]

    @property
    def row_count(self) -> int:
        return self._manifest["row_count"]

    @property
    def model_path(self) -> Path:
        return self.path / MODEL

    @property
    def model_sha256(self) -> str:
        return self._manifest["model_sha256"]

    def check_model(self, checkpoint_path: str | os.PathLike) -> None:
        """Raise ModelMismatchError unless the checkpoint is the index's model (by SHA-256)."""
        sha = _model_sha256(checkpoint_path)
        if sha != self.model_sha256:
            raise ModelMismatchError(_mismatch(self.path, self._manifest, checkpoint_path, sha))

    def faiss_index(self) -> faiss.IndexBinary:
        """The FAISS binary index of every row, ids = row ids; built once, then cached.

        The finalized FAISS file, plus the codes of shards committed after it, added in memory
        (loaded without mmap in that case, as a mapped index is read-only). Without a file (never
        finalized, or replaced by a later finalize meanwhile) it is built from the parts'
        codes; an IVF is then trained here, which raises IndexStoreError if there are too few.
        """
        if self._index is None:
            self._index, _ = _faiss_index(self.path, self._manifest, mmap=self._mmap)
        return self._index

    def metadata(
        self, row_ids: np.ndarray | None = None, columns: Sequence[str] | None = None
    ) -> pa.Table:
        """Metadata rows in the order of ``row_ids`` (integer (m,); -1 gives a row of nulls);
        None means all rows in row-id order.

        columns: default all of the part schema but ``code``. With row_ids every column is
        nullable in the result, as -1 rows are null throughout.
        """
        parts = self._load_parts()
        schema = metadata_schema(self.bits)
        if columns is None:
            columns = [name for name in schema.names if name != "code"]
        unknown = sorted(set(columns) - set(schema.names))
        if unknown:
            raise ValueError(f"unknown columns {unknown}; the columns are {schema.names}")
        columns = list(columns)
        if row_ids is None:
            return pa.concat_tables(parts).select(columns) if parts else _empty(schema, columns)

        ids = np.asarray(row_ids)
        if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
            raise ValueError(f"row_ids must be integers of shape (m,), got {ids.dtype} {ids.shape}")
        ids = ids.astype(np.int64)
        if ids.size and (ids.min() < -1 or ids.max() >= self.row_count):
            raise ValueError(f"row_ids must lie in [-1, {self.row_count}) for this index")
        # Take from each part separately: a take on the concatenated (chunked) table would
        # concatenate every chunk first, costing time in the size of the whole index.
        valid = ids >= 0
        order = np.argsort(ids[valid], kind="stable")
        wanted = ids[valid][order]
        bounds = np.searchsorted(wanted, np.append(self._starts, self.row_count))
        pieces = [
            part.select(columns).take(wanted[lo:hi] - start)
            for part, start, lo, hi in zip(
                parts, self._starts, bounds[:-1], bounds[1:], strict=True
            )
            if hi > lo
        ]
        relaxed = pa.schema([schema.field(c).with_nullable(True) for c in columns])
        if pieces:
            gathered = pa.concat_tables(pieces).combine_chunks().cast(relaxed)
        else:  # only -1s, or no ids: something for the masked take below to index
            gathered = pa.Table.from_pylist([{}], schema=relaxed)
        # gathered[j] is the row of ids[valid][order[j]]; put every row back in place.
        position = np.zeros(len(ids), dtype=np.int64)
        position[np.flatnonzero(valid)[order]] = np.arange(len(wanted))
        return gathered.take(pa.array(position, mask=~valid))

    def errors(self) -> pa.Table:
        """The scenes that could not be indexed, of every committed shard (ERRORS_SCHEMA)."""
        tables = [
            _read_parquet(self.path, e["errors"], ERRORS_SCHEMA, e["error_count"])
            for e in self._manifest["shards"].values()
        ]
        return pa.concat_tables(tables) if tables else ERRORS_SCHEMA.empty_table()

    def codes(self) -> np.ndarray:
        """All codes, uint8 (row_count, K/8), in row-id order."""
        parts = self._load_parts()
        size = self.bits // 8
        if not parts:
            return np.empty((0, size), dtype=np.uint8)
        return _codes_from_arrow(pa.concat_tables(parts)["code"], size)

    def _load_parts(self) -> list[pa.Table]:
        if self._parts is None:
            self._parts = [
                _read_part(self.path, self._manifest, s, mmap=self._mmap)
                for s in self._manifest["shards"]
            ]
        return self._parts


def _empty(schema: pa.Schema, columns: Sequence[str]) -> pa.Table:
    return pa.schema([schema.field(c) for c in columns]).empty_table()
