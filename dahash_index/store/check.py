"""Verify an index directory file by file, and recover from damage by forgetting damaged shards.

``check_index`` reads every file the manifest names: each part, errors and lookup file
against the checksum recorded at commit, its schema, row count and row ids (a lookup file:
that it holds exactly its part's metadata); the model copy against the
manifest's model checksum; each FAISS segment file's K, kind, row count and ids.
``repair_index`` drops the damaged shards from the manifest in one commit (and the FAISS side,
when a segment file is damaged), so that the next build indexes those shards again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dahash_index.errors import one_line
from dahash_index.files import atomic_write, fsync_dir, sha256_file
from dahash_index.indexes import load_index
from dahash_index.indexes.binary import as_ivf
from dahash_index.model.identity import ModelIdentity
from dahash_index.store.blocks import read_digests
from dahash_index.store.faiss_file import check_segment
from dahash_index.store.layout import (
    ERRORS_SCHEMA,
    MANIFEST,
    METADATA_SCHEMA,
    MODEL,
    IndexStoreError,
)
from dahash_index.store.layout import checksum_problem as layout_checksum_problem
from dahash_index.store.lookup import LookupFile
from dahash_index.store.manifest import (
    Manifest,
    Segment,
    ShardEntry,
    previous_manifests,
    read_manifest,
)
from dahash_index.store.parts import read_parquet, read_part
from dahash_index.store.vectors import open_vectors
from dahash_index.store.writer import IndexWriter


@dataclass(frozen=True)
class Damage:
    """One damaged file: the shard it belongs to (None for the model or the FAISS file)."""

    file: str  # relative to the index directory
    reason: str
    shard: str | None = None

    def __str__(self) -> str:
        where = f" (shard {self.shard})" if self.shard else ""
        return f"{self.file}: {self.reason}{where}"


@dataclass
class CheckReport:
    path: Path
    rows: int = 0
    shards: int = 0
    files: int = 0  # files read and verified
    damage: list[Damage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damage


def check_index(path: str | os.PathLike) -> CheckReport:
    """Read and verify every file of the index at ``path``. A damaged manifest is reported
    as such (``repair_index`` restores the last good copy); raises IndexStoreError only when
    there is no index at all."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise IndexStoreError(f"{path}: not a dahash index (no {MANIFEST})")
    try:
        manifest = read_manifest(path)
    except IndexStoreError as err:
        return CheckReport(path, files=1, damage=[Damage(MANIFEST, _strip(path, err))])
    report = CheckReport(path, manifest.row_count, len(manifest.shards))
    for key, entry in manifest.shards.items():
        damaged = set()
        for what, rel in entry.files():  # the part before the lookup file checked by it
            problem = _check_shard_file(path, manifest, key, what, "part" not in damaged)
            report.files += 1
            if problem is not None:
                damaged.add(what)
                report.damage.append(Damage(rel, problem, key))
    report.files += 1
    if not (path / MODEL).is_file():
        report.damage.append(Damage(MODEL, "missing"))
    elif sha256_file(path / MODEL) != manifest.model_sha256:
        report.damage.append(Damage(MODEL, "checksum differs from the manifest's model"))
    report.files += len(manifest.segments)
    report.damage += _check_faiss(path, manifest)
    return report


def quick_check(path: str | os.PathLike) -> CheckReport:
    """What ``info`` verifies: every named file exists and each Parquet file's footer is
    readable and gives the row count the manifest says (no data read, no checksums)."""
    path = Path(path)
    manifest = read_manifest(path)
    report = CheckReport(path, manifest.row_count, len(manifest.shards))
    for key, entry in manifest.shards.items():
        for what, rel in entry.files():
            report.files += 1
            rows = entry.error_count if what == "errors" else entry.rows
            try:
                if what == "lookup":
                    LookupFile(path, rel, rows)  # checks its footer's batch count
                    continue
                if what == "vectors":
                    open_vectors(path, rel, entry.rows)  # its header's shape
                    continue
                if what == "digests":
                    (path / rel).stat()
                    continue
                found = pq.read_metadata(path / rel).num_rows
            except FileNotFoundError:
                report.damage.append(Damage(rel, f"missing (named in {MANIFEST})", key))
                continue
            except (OSError, pa.ArrowException) as err:
                report.damage.append(Damage(rel, f"unreadable ({one_line(err)})", key))
                continue
            except IndexStoreError as err:
                report.damage.append(Damage(rel, _strip(path, err), key))
                continue
            if found != rows:
                report.damage.append(Damage(rel, f"holds {found} rows, {MANIFEST} says {rows}",
                                            key))
    for segment in manifest.segments:
        if not (path / segment.file).is_file():
            report.damage.append(Damage(segment.file, f"missing (named in {MANIFEST})"))
    return report


def repair_index(report: CheckReport, model: Path | None = None) -> list[str]:
    """Repair what ``check_index`` found, in this order: a damaged manifest is restored from
    its last good copy; a damaged model copy is replaced by ``model`` when that file is the
    very model the manifest names (same sha256); shards with damaged files are dropped from
    the manifest (one commit) so that the next build indexes them again; a damaged FAISS
    segment is rebuilt from the parts' codes. Returns the dropped shard URLs. Nothing is
    guessed: IndexStoreError when a damage has no sure repair."""
    if any(d.file == MANIFEST for d in report.damage):
        restore_manifest(report.path)
        report = check_index(report.path)
        if report.ok:
            return []
        return repair_index(report, model)
    manifest = read_manifest(report.path)
    if any(d.file == MODEL for d in report.damage):
        restore_model(report.path, manifest, model)
    shards = list(dict.fromkeys(d.shard for d in report.damage if d.shard))
    faiss_damaged = any(d.shard is None and d.file != MODEL for d in report.damage)
    identity = ModelIdentity.of_manifest(manifest, report.path / MODEL)
    with IndexWriter.open(report.path, identity, kind=manifest.kind, check=False) as writer:
        if shards or faiss_damaged:
            writer.drop_shards(shards, drop_index_file=faiss_damaged)
        if faiss_damaged:
            writer.finalize()
    return shards


def restore_model(path: Path, manifest: Manifest, model: Path | None) -> None:
    """Copy ``model`` over the index's damaged model copy, if it is the manifest's model."""
    if model is None:
        raise IndexStoreError(f"{path}: {MODEL} is damaged; `dahash-index check --repair "
                              f"--model MODEL.pt {path}` restores it from the model the index "
                              "was built with")
    if sha256_file(model) != manifest.model_sha256:
        raise IndexStoreError(f"{model}: not the model {path} was built with (sha256 "
                              f"{manifest.model_sha256[:12]}…); nothing restored")
    data = Path(model).read_bytes()
    atomic_write(path / MODEL, lambda f: f.write(data))
    fsync_dir(path)


def restore_manifest(path: Path) -> Manifest:
    """Replace a damaged manifest.json by the newest earlier copy (``manifests/``) that reads
    and whose files are all there, or the newest that reads (its shards with missing files
    are then dropped by ``repair_index``). Nothing is guessed: IndexStoreError without one."""
    readable = []
    for copy in previous_manifests(path):
        try:
            readable.append((copy, read_manifest(path, copy)))
        except IndexStoreError:
            continue
    if not readable:
        raise IndexStoreError(f"{path}: {MANIFEST} is damaged and no earlier copy of it reads; "
                              "rebuild the index")
    whole = [(copy, manifest) for copy, manifest in readable
             if all((path / rel).is_file() for e in manifest.shards.values()
                    for _, rel in e.files())]
    copy, manifest = (whole or readable)[0]
    data = copy.read_bytes()
    atomic_write(path / MANIFEST, lambda f: f.write(data))
    fsync_dir(path)
    return manifest


def _strip(path: Path, err: Exception) -> str:
    text = str(err)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def checksum_problem(path: Path, entry: ShardEntry, what: str) -> str | None:
    """Why a shard's ``what`` file ("part", "errors", "lookup", "vectors", "digests") fails the
    checksum recorded at commit, or None (also for files of format-1 indexes, which recorded
    none)."""
    return layout_checksum_problem(path, getattr(entry, what), entry.checksum(what))


def _check_shard_file(path: Path, manifest: Manifest, key: str, what: str, part_ok: bool
                      ) -> str | None:
    """Why a shard's file is damaged, or None. A lookup file is compared with the part only
    when the part is intact (``part_ok``); else it is only opened."""
    entry = manifest.shards[key]
    rel = getattr(entry, what)
    if not (path / rel).is_file():
        return f"missing (named in {MANIFEST})"
    problem = checksum_problem(path, entry, what)
    if problem is not None:
        return problem
    try:
        if what == "part":
            read_part(path, manifest, key)
        elif what == "errors":
            read_parquet(path, rel, ERRORS_SCHEMA, entry.error_count)
        elif what == "vectors":
            open_vectors(path, rel, entry.rows)
        elif what == "digests":
            read_digests(path, rel, None)  # its structure (its checksum is checked above)
        elif part_ok:
            return _lookup_problem(path, manifest, key)
        else:
            LookupFile(path, rel, entry.rows)
    except IndexStoreError as err:
        return _strip(path, err)
    return None


def _lookup_problem(path: Path, manifest: Manifest, key: str) -> str | None:
    """Why a shard's lookup file does not hold exactly its part's metadata, or None."""
    entry = manifest.shards[key]
    rows = LookupFile(path, entry.lookup, entry.rows).read_all()
    part = read_part(path, manifest, key, columns=METADATA_SCHEMA.names)
    if not rows.equals(part.select(METADATA_SCHEMA.names).cast(METADATA_SCHEMA)):
        return "differs from the shard's part"
    return None


def _check_faiss(path: Path, manifest: Manifest) -> list[Damage]:
    """Each FAISS segment file: readable, K, kind, row count, and the row ids an IDMap or IVF
    segment stores (a plain flat segment stores none: its ranges give them)."""
    damage = []
    for segment in manifest.segments:
        problem = _check_segment(path, manifest, segment)
        if problem is not None:
            damage.append(Damage(segment.file, problem))
    return damage


def _check_segment(path: Path, manifest: Manifest, segment: Segment) -> str | None:
    rel = segment.file
    if not (path / rel).is_file():
        return f"missing (named in {MANIFEST})"
    problem = layout_checksum_problem(path, rel, segment.sha256)
    if problem is not None:
        return problem
    try:
        index = load_index(str(path / rel), mmap=True)
        check_segment(path, manifest, segment, index)
    except RuntimeError as err:
        return f"unreadable ({one_line(err)})"
    except IndexStoreError as err:
        return _strip(path, err)
    if isinstance(faiss.downcast_IndexBinary(index), faiss.IndexBinaryFlat):
        return None
    expected = [np.arange(first, first + rows) for first, rows in segment.ranges]
    want = np.sort(np.concatenate(expected)) if expected else np.empty(0, np.int64)
    have = np.sort(_faiss_ids(index))
    if not np.array_equal(have, want):
        return "holds other row ids than the shards it covers"
    return None


def _faiss_ids(index: faiss.IndexBinary) -> np.ndarray:
    """The ids an IDMap or IVF binary index holds, int64 (ntotal,)."""
    ivf = as_ivf(index)
    if ivf is None:
        index = faiss.downcast_IndexBinary(index)
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    lists = ivf.invlists
    ids = [
        faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
        for i in range(ivf.nlist)
        if lists.list_size(i)
    ]
    return np.concatenate(ids).astype(np.int64) if ids else np.empty(0, np.int64)
