"""Merging indexes built apart (same model) into one: ``dahash-index merge OUT INDEX ...``.

Every committed shard of the inputs is copied into OUT with one crash-safe commit, as a build
would commit it, and gets new row ids from OUT. The rules:

- Inputs must share the model (checksum, hence K and backbone) and the build parameters
  stored in ``extra`` (the bands); OUT, when it exists, must hold the same model. An input
  that is OUT, or the same input given twice, is refused.
- Shards are committed in order of (shard name, shard URL). A build commits the shards of
  its root sorted by name, so indexes built from disjoint sets of one archive's shards merge
  into exactly the index a single build over all of them gives: same rows in the same order,
  hence the same row ids, and the same ties. Sorting by URL would do that only when each
  input's shards sort after all of the previous input's (halves split by name range), and
  not when inputs were built from sibling roots holding interleaved shard names.
- A shard is known by its URL. One already in OUT with the same fingerprint is skipped, which
  makes a merge resumable: run it again after a crash and it goes on where it stopped (a run
  that finds nothing to do changes nothing). A shard URL held by several inputs is taken once,
  from the first input given; one whose versions differ (another fingerprint) is taken from
  the first input, or kept as OUT has it, with a one-line warning: nothing OUT holds is lost.
- A scene ``(url, member)`` is kept once: a row whose scene OUT already holds, or an earlier
  shard of this merge brought, is dropped (and counted). Likewise for recorded scene errors.

Memory: one shard's part at a time, plus 16 bytes per row of OUT for the scenes seen.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from dahash_index.model.identity import ModelIdentity
from dahash_index.store import (
    ERRORS_SCHEMA,
    MANIFEST,
    IndexReader,
    IndexStoreError,
    IndexWriter,
    ModelMismatchError,
)
from dahash_index.store.check import checksum_problem
from dahash_index.store.manifest import Manifest, ShardEntry, read_manifest
from dahash_index.store.parts import codes_from_arrow, read_parquet, read_part
from dahash_index.store.vectors import open_vectors


@dataclass
class MergeReport:
    """What one ``merge_indexes`` run did."""

    shards_adopted: int = 0  # committed to OUT by this run
    shards_skipped: int = 0  # in OUT already, or the same shard URL in an earlier input
    scenes_dropped: int = 0  # rows whose scene OUT or an earlier shard already held
    rows: int = 0  # rows committed by this run
    row_count: int = 0  # rows OUT holds now
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # one line each, also printed


@dataclass(frozen=True)
class _Source:
    """One shard of one input, as it is to be copied."""

    path: Path  # the input index
    manifest: Manifest  # its manifest, read once (``IndexReader.manifest`` copies it each time)
    url: str
    entry: ShardEntry


def merge_indexes(
    out: Path,
    inputs: Sequence[Path],
    kind: str | None = None,
    nlist: int | None = None,
    progress: bool = True,
) -> MergeReport:
    """Merge the indexes ``inputs`` into ``out`` (created, or added to); see the module
    docstring for the rules. kind: OUT's FAISS index kind [default: OUT's, else the first
    input's]. nlist: IVF lists [default: OUT's, else chosen from the merged row count].

    Raises ModelMismatchError when the models (or K) differ, IndexStoreError for any other
    refusal (OUT among the inputs, an input given twice, other bands, a damaged part).
    """
    start = time.perf_counter()
    out = Path(out)
    readers = _open_inputs(out, [Path(p) for p in inputs])
    first = readers[0]
    existing = read_manifest(out) if (out / MANIFEST).is_file() else None
    for other in readers[1:]:
        _check_same_model(first.path, first.manifest, other.path, other.manifest)
        _check_same_extra(first, other)
    if existing is not None:
        _check_same_model(first.path, first.manifest, out, existing)
    if kind is None:
        # An index without rows is not bound by its kind; otherwise OUT's kind is kept.
        kind = existing.kind if existing and existing.row_count else first.kind

    report = MergeReport()

    def warn(line: str) -> None:
        report.warnings.append(line)
        tqdm.write(f"Warning: {line}", file=sys.stderr)

    model = ModelIdentity.of_manifest(first.manifest, first.model_path)
    writer = IndexWriter.open(out, model, kind=kind, nlist=nlist, extra=first.manifest.extra)
    try:
        _merge(readers, writer, report, warn, progress)
        writer.finalize()
    except BaseException:
        if existing is None and not writer.manifest.shards:
            # Refused before its first commit: the directory this merge made goes (removed
            # while the lock is held, so no other writer can be in it).
            shutil.rmtree(out, ignore_errors=True)
        writer.close()
        raise
    report.row_count = writer.manifest.row_count
    writer.close()
    report.seconds = time.perf_counter() - start
    return report


def _merge(
    readers: Sequence[IndexReader],
    writer: IndexWriter,
    report: MergeReport,
    warn: Callable[[str], None],
    progress: bool,
) -> None:
    """Commit every shard the plan keeps, in order, one commit each."""
    todo = _plan(readers, writer, report, warn)
    scenes, failed = _seen_in(writer)
    bits = writer.manifest.bits
    # Not on a pipe or a log file, where every redraw would add to one endless line.
    bar = tqdm(total=len(todo), unit="shard", desc="merge", disable=None if progress else True)
    try:
        for source in todo:
            codes, rows, errors, vectors, dropped = _take_shard(source, bits, scenes, failed)
            writer.commit_shard(source.entry.name, source.url, codes, rows, errors,
                                fingerprint=source.entry.fingerprint,
                                precision=source.entry.precision, vectors=vectors)
            report.shards_adopted += 1
            report.rows += len(codes)
            report.scenes_dropped += dropped
            bar.update(1)
    finally:
        bar.close()


def _open_inputs(out: Path, inputs: Sequence[Path]) -> list[IndexReader]:
    """Open every input, refusing none at all, OUT itself, and one given twice."""
    if not inputs:
        raise ValueError("merge needs at least one index to merge")
    target = out.resolve()
    seen: dict[Path, Path] = {}
    for path in inputs:
        where = path.resolve()
        if where == target:
            raise IndexStoreError(f"{path}: is the output index {out}; it cannot also be merged")
        if where in seen:
            raise IndexStoreError(f"{path}: given twice (also as {seen[where]})")
        seen[where] = path
    return [IndexReader.open(path) for path in inputs]


def _describe(manifest: Manifest) -> str:
    return (f"model {manifest.model_sha256[:12]} ({manifest.bits} bits, "
            f"backbone {manifest.backbone})")


def _check_same_model(first: Path, first_manifest: Manifest, path: Path, manifest: Manifest
                      ) -> None:
    """Raise ModelMismatchError, in one line naming both models, unless the codes of the two
    indexes come from the same model (checksum, K and backbone)."""
    keys = ("model_sha256", "bits", "backbone", "backbone_sha256")
    if any(getattr(manifest, k) != getattr(first_manifest, k) for k in keys):
        raise ModelMismatchError(
            f"{path}: holds codes of {_describe(manifest)}, but {first} holds codes of "
            f"{_describe(first_manifest)}; only indexes of one model can be merged"
        )


def _check_same_extra(first: IndexReader, other: IndexReader) -> None:
    """Codes made from other bands of the scenes do not belong in one index."""
    a, b = first.manifest.extra, other.manifest.extra
    if a != b:
        raise IndexStoreError(
            f"{other.path}: was built with {b}, but {first.path} with {a}; only indexes built "
            "with the same options can be merged"
        )


def _plan(
    readers: Sequence[IndexReader],
    writer: IndexWriter,
    report: MergeReport,
    warn: Callable[[str], None],
) -> list[_Source]:
    """The shards to commit, in (name, URL) order: each URL once, from the first input that
    holds it, and none that OUT holds already."""
    chosen: dict[str, _Source] = {}
    for reader in readers:
        manifest = reader.manifest
        for url, entry in manifest.shards.items():
            kept = chosen.get(url)
            if kept is None:
                chosen[url] = _Source(reader.path, manifest, url, entry)
                continue
            report.shards_skipped += 1
            if kept.entry.fingerprint != entry.fingerprint:
                warn(f"shard {url} differs in {reader.path} and {kept.path}; "
                     f"merged as {kept.path} holds it")
    todo = []
    for url, source in chosen.items():
        held = writer.entry(url)
        if held is None:
            todo.append(source)
            continue
        report.shards_skipped += 1
        if held.fingerprint != source.entry.fingerprint:
            warn(f"shard {url} differs in {source.path} and {writer.path}; "
                 f"kept as {writer.path} holds it")
    return sorted(todo, key=lambda s: (s.entry.name, s.url))


def _seen_in(writer: IndexWriter) -> tuple[SceneKeys, set[str]]:
    """The scenes OUT holds as rows, and those it records as errors; read a shard at a time."""
    manifest = writer.manifest
    scenes, failed = SceneKeys(), set()
    for url, entry in manifest.shards.items():
        part = read_part(writer.path, manifest, url, columns=["url", "member"])
        scenes.add_new(scene_digests(part))
        errors = read_parquet(writer.path, entry.errors, ERRORS_SCHEMA, entry.error_count)
        failed.update(_error_keys(errors))
    return scenes, failed


def _take_shard(
    source: _Source, bits: int, scenes: SceneKeys, failed: set[str]
) -> tuple[np.ndarray, pa.Table, pa.Table, np.ndarray | None, int]:
    """A shard's (codes, rows, errors, re-rank vectors or None, rows dropped) without the
    scenes seen before; marks its scenes as seen. The files' checksums are verified first: a
    merge must not spread damage."""
    path, entry = source.path, source.entry
    for key in ("part", "errors") + (("vectors",) if entry.vectors else ()):
        problem = checksum_problem(path, entry, key)
        if problem is not None:
            raise IndexStoreError(f"{path}: {getattr(entry, key)}: {problem}; "
                                  f"`dahash-index check --repair {path}` drops its shard")
    part = read_part(path, source.manifest, source.url)
    fresh = scenes.add_new(scene_digests(part))
    mask = pa.array(fresh)
    codes = codes_from_arrow(part["code"], bits // 8)[fresh]
    rows = part.drop_columns(["row_id", "code"]).filter(mask)
    vectors = open_vectors(path, entry.vectors, entry.rows)[fresh] if entry.vectors else None
    errors = read_parquet(path, entry.errors, ERRORS_SCHEMA, entry.error_count)
    keep = []
    for key in _error_keys(errors):
        keep.append(key not in failed)
        failed.add(key)
    return (codes, rows, errors.filter(pa.array(keep, pa.bool_())), vectors,
            int((~fresh).sum()))


def _scene_key(url: str, member: str | None) -> str:
    # JSON keeps (url, None) apart from (url, "") and any url from any url + member.
    return json.dumps([url, member])


def _error_keys(errors: pa.Table) -> Iterable[str]:
    return (_scene_key(u, m) for u, m in zip(errors["url"].to_pylist(),
                                             errors["member"].to_pylist(), strict=True))


def scene_digests(table: pa.Table) -> np.ndarray:
    """16-byte digests (numpy 'S16', one per row) of the scenes ``(url, member)`` of a table
    with those columns: compact keys to tell whether a scene was seen (collisions are
    negligible, about n^2 / 2^129)."""
    keys = zip(table["url"].to_pylist(), table["member"].to_pylist(), strict=True)
    digests = [hashlib.blake2b(_scene_key(u, m).encode(), digest_size=16).digest()
               for u, m in keys]
    return np.array(digests, dtype="S16") if digests else np.empty(0, dtype="S16")


class SceneKeys:
    """A set of scene digests in a few sorted arrays (16 bytes per scene, not a Python object
    each). Runs of similar size are merged, so adding n scenes in batches costs O(n log n) in
    all and a lookup searches O(log n) runs."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(run) for run in self._runs)

    def contains(self, digests: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``digests`` are in the set."""
        found = np.zeros(len(digests), dtype=bool)
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, digests), len(run) - 1)
            found |= run[at] == digests
        return found

    def add_new(self, digests: np.ndarray) -> np.ndarray:
        """Add ``digests``; return the mask of those that are new: not in the set before and
        not repeating an earlier one of ``digests`` (the first occurrence counts as new)."""
        new = np.zeros(len(digests), dtype=bool)
        if not len(digests):
            return new
        _, first = np.unique(digests, return_index=True)
        new[first] = True
        new &= ~self.contains(digests)
        if new.any():
            self._runs.append(np.sort(digests[new]))
            while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
                last = self._runs.pop()
                self._runs[-1] = np.sort(np.concatenate([self._runs[-1], last]))
        return new
