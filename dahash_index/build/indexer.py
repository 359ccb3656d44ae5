"""Build an index: list and plan the shards, let a runner encode them, adopt what it stages.

``build_index`` is the build's one committer. It lists the shards under a URL, plans which are
new or changed (their fingerprint differs from the committed one), adopts what an interrupted
build left staged, and hands the rest to an engine's runner (``engines``: the local one, or
Ray), which runs the shard worker (``worker``). Each shard result the runner stages is adopted
at once: its rows get row ids and it is committed in one crash-safe step. A re-run skips
committed, unchanged shards, so a killed build resumes where it stopped. Undecodable scenes are
reported in one line each, recorded in the errors table, and the build goes on. A shard the
storage fails on is not committed, named in one line, and retried by the next build.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from dahash_index.build.engines import get_runner
from dahash_index.build.job import BuildEvents, BuildJob, BuildOptions
from dahash_index.build.stages import ShardTask, check_bands, gone_shards, plan_shards
from dahash_index.model.checkpoint import Checkpoint, load_checkpoint
from dahash_index.sources.labels import SceneLabels
from dahash_index.sources.shards import Shard, ShardReader, shards_root
from dahash_index.sources.stac import StacReader
from dahash_index.store import MANIFEST, IndexWriter, ModelMismatchError, read_manifest
from dahash_index.store.staging import StagedResult, list_results, remove_result


@dataclass
class BuildReport:
    shards_total: int = 0
    shards_skipped: int = 0  # committed by an earlier run, unchanged
    shards_indexed: int = 0
    shards_reindexed: int = 0  # of those indexed: changed since, or retried for errors
    shards_gone: list[str] = field(default_factory=list)  # committed under the root, now gone
    pruned: bool = False  # shards_gone were retired (--prune)
    failed: list[str] = field(default_factory=list)  # one line per shard not indexed
    scenes: int = 0  # rows committed by this run
    errors: int = 0  # scene errors recorded by this run
    chips_skipped: int = 0  # chips of large scenes left out as mostly nodata
    seconds: float = 0.0
    row_count: int = 0
    exact_ivf: bool = False  # an IVF with too few codes to train yet: searched exactly


def build_index(
    shards_url: str,
    index_dir: str | Path,
    model_path: str | Path,
    options: BuildOptions | None = None,
    progress: bool = True,
) -> BuildReport:
    """Index every new or changed shard under ``shards_url`` into ``index_dir`` (created or
    resumed); with ``options.stac``, ``shards_url`` is a STAC catalog and its collections are
    the shards (``sources.stac``). Shards the storage fails on are left out and named in
    ``report.failed``."""
    options = options or BuildOptions()
    start = time.perf_counter()
    index_dir = Path(index_dir)
    try:
        reader = (StacReader(shards_url, options.asset, options.storage_options or None)
                  if options.stac else ShardReader(shards_url, options.storage_options or None))
    except FileNotFoundError:
        if options.prune and (index_dir / MANIFEST).is_file():  # a moved or deleted archive
            return _prune_only(shards_url, index_dir, model_path, options, start)
        raise
    shards = reader.list_shards()
    if not shards and not options.prune:
        raise FileNotFoundError(
            f"no shards under {shards_url}: expected subdirectories or .tar files of scenes, "
            "or scene files"
        )
    checkpoint = load_checkpoint(model_path)
    options = replace(options, labels=_labels(index_dir, options.labels))
    extra = {"bands": list(options.bands) if options.bands else None}
    if options.tiling is not None:  # an index built whole keeps the extra it always had
        extra["tiling"] = options.tiling.as_dict()
    if options.labels.recorded is not None:  # and one with folder labels too
        extra["labels"] = options.labels.recorded
    created = not (index_dir / MANIFEST).is_file()
    writer = IndexWriter.open(index_dir, checkpoint.identity, options.kind, options.nlist, extra,
                              options.wait)
    try:
        report = _build(reader, shards, writer, checkpoint, options, progress)
    except BaseException:
        if created and not writer.manifest.shards:
            # Refused before its first commit: the directory this build made goes (removed
            # while the lock is held, so no other writer can be in it).
            shutil.rmtree(index_dir, ignore_errors=True)
        writer.close()
        raise
    writer.close()
    report.seconds = time.perf_counter() - start
    return report


def _labels(index_dir: Path, given: SceneLabels | None) -> SceneLabels:
    """The build's labelling: ``given``, else the index's own (none for a new index).
    Refuses (ValueError) to label an index's new scenes another way than its others."""
    if not (index_dir / MANIFEST).is_file():
        return given or SceneLabels("none")
    manifest = read_manifest(index_dir)
    recorded = manifest.extra.get("labels")  # absent: folder labels, as before the choice
    if given is None:
        if recorded is not None and recorded.startswith("csv"):
            raise ValueError(f"{index_dir}: its labels come from a CSV file ({recorded}); give "
                             "it again: --label-from FILE")
        return SceneLabels("folder" if recorded is None else recorded)
    if given.recorded != recorded and manifest.row_count:
        def name(value: str | None) -> str:
            return "folder" if value is None else value

        raise ValueError(f"{index_dir}: its labels come from {name(recorded)}, not "
                         f"{name(given.recorded)}; build into a new index to label scenes "
                         "another way")
    return given


def _prune_only(shards_url: str, index_dir: Path, model_path: str | Path,
                options: BuildOptions, start: float) -> BuildReport:
    """build --prune of a root that no longer exists: retire every shard committed under it."""
    checkpoint = load_checkpoint(model_path)
    base = shards_root(shards_url, options.storage_options or None)
    kind = read_manifest(index_dir).kind  # whatever kind the index has
    with IndexWriter.open(index_dir, checkpoint.identity, kind, wait=options.wait) as writer:
        report = BuildReport(shards_gone=gone_shards(writer.manifest.shards, base, []))
        _retire_gone(writer, report, True)
        writer.finalize()
        report.row_count = writer.manifest.row_count
    report.seconds = time.perf_counter() - start
    return report


def _retire_gone(writer: IndexWriter, report: BuildReport, prune: bool) -> None:
    if report.shards_gone and prune:
        writer.drop_shards(report.shards_gone)
        report.pruned = True


def _build(
    reader: ShardReader,
    shards: list[Shard],
    writer: IndexWriter,
    checkpoint: Checkpoint,
    options: BuildOptions,
    progress: bool,
) -> BuildReport:
    start = time.perf_counter()

    def warn(line: str) -> None:
        tqdm.write(line, file=sys.stderr)

    tasks, skipped, failed = plan_shards(reader, writer, shards, options.retry_errors, warn)
    report = BuildReport(shards_total=len(shards), shards_skipped=skipped, failed=failed,
                         shards_gone=gone_shards(writer.manifest.shards, reader.base,
                                                 [s.url for s in shards]))
    _retire_gone(writer, report, options.prune)
    for line in failed:
        warn(f"Error: {line}")
    tasks = _adopt_leftovers(writer, tasks, report, warn)
    if tasks:
        check_bands(reader, tasks[0].shard, options.bands, options.max_pixels, options.tiling)
    job = BuildJob(options, checkpoint, reader, writer.staging)
    runner = get_runner(options.engine, **({"address": options.ray_address}
                                           if options.engine == "ray" else {}))

    # Not on a pipe or a log file, where every redraw would add to one endless line.
    bar = tqdm(total=len(tasks), unit="shard", desc="build", disable=None if progress else True)
    seen = {"scenes": 0, "errors": 0}

    def on_scenes(scenes: int, errors: int) -> None:
        seen["scenes"] += scenes
        seen["errors"] += errors
        elapsed = max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(scenes=seen["scenes"], per_s=f"{seen['scenes'] / elapsed:.1f}",
                        shards_per_min=f"{60 * bar.n / elapsed:.1f}", errors=seen["errors"])

    def on_staged(task: ShardTask, result: StagedResult) -> None:
        writer.adopt(result)
        _count(report, task, result)
        bar.update(1)

    def on_failed(task: ShardTask, line: str) -> None:
        report.failed.append(line)
        warn(f"Error: {line}")
        bar.update(1)

    try:
        runner.run(job, tasks, BuildEvents(on_staged, on_failed, on_scenes))
    finally:
        bar.close()
    writer.finalize()
    manifest = writer.manifest
    report.row_count = manifest.row_count
    report.exact_ivf = manifest.kind == "ivf" and manifest.index_file is None
    return report


def _count(report: BuildReport, task: ShardTask, result: StagedResult) -> None:
    report.shards_indexed += 1
    report.shards_reindexed += task.replace
    report.scenes += result.rows
    report.errors += result.error_count
    report.chips_skipped += result.chips_skipped


def _adopt_leftovers(
    writer: IndexWriter, tasks: list[ShardTask], report: BuildReport, warn: Callable[[str], None]
) -> list[ShardTask]:
    """Adopt the staged results an interrupted build left that are still what a task would
    make (same shard URL and fingerprint); delete the others. Returns the tasks left to do."""
    pending = {(t.shard.url, t.fingerprint): t for t in tasks}
    for result in list_results(writer.staging):
        task = pending.pop((result.shard_url, result.fingerprint), None)
        if task is None:
            remove_result(result)  # stale: its shard changed, or it was adopted already
            continue
        try:
            writer.adopt(result)
        except ModelMismatchError as err:
            warn(f"Warning: {err}; removed")
            remove_result(result)
            pending[(result.shard_url, result.fingerprint)] = task
            continue
        _count(report, task, result)
    return [t for t in tasks if (t.shard.url, t.fingerprint) in pending]
