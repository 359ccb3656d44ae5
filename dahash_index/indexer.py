"""Build an index: list and plan the shards, let a runner encode them, adopt what it stages.

``build_index`` is the build's one committer. It lists the shards under a URL, plans which
are new or changed (their fingerprint differs from the committed one), adopts what an
interrupted build left staged, and hands the rest to a runner (``pipeline.runner``: the local
engine, or Ray). Each shard result the runner stages is adopted at once: its rows get row
ids and it is committed in one crash-safe step. A re-run skips committed, unchanged shards,
so a killed build resumes where it stopped. Undecodable scenes are reported in one line
each, recorded in the errors table, and the build goes on. A shard the storage fails on is
not committed, named in one line, and retried by the next build.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from dahash_index.checkpoint import Checkpoint, load_checkpoint
from dahash_index.checks import check_int
from dahash_index.chips import Tiling
from dahash_index.encoder import check_device
from dahash_index.images import DEFAULT_MAX_PIXELS
from dahash_index.pipeline.runner import ENGINES, BuildEvents, BuildJob, get_runner
from dahash_index.pipeline.stages import ShardTask, check_bands, plan_shards
from dahash_index.precision import check_precision
from dahash_index.shards import Shard, ShardReader
from dahash_index.store import KINDS, MANIFEST, IndexWriter, ModelMismatchError
from dahash_index.store.staging import StagedResult, list_results, remove_result


@dataclass(frozen=True)
class BuildOptions:
    """How to build; every value is checked when the options are made (ValueError)."""

    kind: str = "flat"
    nlist: int | None = None
    bands: tuple[int, int, int] | None = None
    batch_size: int | None = None  # None: the device's default (encoder.default_batch_size)
    workers: int | None = None  # decode processes; 0 decodes in line; None: default_workers
    max_pixels: int = DEFAULT_MAX_PIXELS
    storage_options: dict = field(default_factory=dict)
    device: str | None = None
    engine: str = "local"  # a key of pipeline.runner.ENGINES
    ray_address: str | None = None  # engine "ray": a cluster to join; None starts one here
    retry_errors: bool = False  # re-index committed shards that recorded scene errors
    wait: float = 0.0  # seconds to wait for another build holding the index
    tiling: Tiling | None = None  # large TIFFs as chips (``chips``); None: every scene whole
    precision: str | None = None  # "fp32", "tf32", "bf16"; None: the device's default
    device_jpegs: bool | None = None  # JPEGs decoded on the device; None: when it is a GPU

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.nlist is not None:
            if self.kind != "ivf":
                raise ValueError("nlist applies only to kind 'ivf'")
            check_int("nlist", self.nlist, 1)
        if self.bands is not None:
            if len(self.bands) != 3:
                raise ValueError(f"bands must be three band numbers, got {self.bands!r}")
            for band in self.bands:
                check_int("band numbers (1-based)", band, 1)
        if self.batch_size is not None:
            check_int("batch size", self.batch_size, 1)
        if self.precision is not None:
            check_precision(self.precision)
        check_device(self.device)
        if self.workers is not None:
            check_int("workers", self.workers, 0)
        check_int("max_pixels", self.max_pixels, 1)
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.ray_address is not None and self.engine != "ray":
            raise ValueError("ray_address applies only to engine 'ray'")
        if not isinstance(self.wait, (int, float)) or self.wait < 0:
            raise ValueError(f"wait must be a non-negative number of seconds, got {self.wait!r}")


@dataclass
class BuildReport:
    shards_total: int = 0
    shards_skipped: int = 0  # committed by an earlier run, unchanged
    shards_indexed: int = 0
    shards_reindexed: int = 0  # of those indexed: changed since, or retried for errors
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
    options: BuildOptions = BuildOptions(),
    progress: bool = True,
) -> BuildReport:
    """Index every new or changed shard under ``shards_url`` into ``index_dir`` (created or
    resumed). Shards the storage fails on are left out and named in ``report.failed``."""
    start = time.perf_counter()
    index_dir = Path(index_dir)
    reader = ShardReader(shards_url, options.storage_options or None)
    shards = reader.list_shards()
    if not shards:
        raise FileNotFoundError(
            f"no shards under {shards_url}: expected subdirectories or .tar files of scenes, "
            "or scene files"
        )
    checkpoint = load_checkpoint(model_path)
    extra = {"bands": list(options.bands) if options.bands else None}
    if options.tiling is not None:  # an index built whole keeps the extra it always had
        extra["tiling"] = options.tiling.as_dict()
    created = not (index_dir / MANIFEST).is_file()
    writer = IndexWriter.open(index_dir, checkpoint.identity, options.kind, options.nlist, extra,
                              options.wait)
    try:
        report = _build(reader, shards, writer, checkpoint, options, progress)
    except BaseException:
        if created and not writer.manifest["shards"]:
            # Refused before its first commit: the directory this build made goes (removed
            # while the lock is held, so no other writer can be in it).
            shutil.rmtree(index_dir, ignore_errors=True)
        writer.close()
        raise
    writer.close()
    report.seconds = time.perf_counter() - start
    return report


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
    report = BuildReport(shards_total=len(shards), shards_skipped=skipped, failed=failed)
    for line in failed:
        warn(f"Error: {line}")
    tasks = _adopt_leftovers(writer, tasks, report, warn)
    if tasks:
        check_bands(reader, tasks[0].shard, options.bands, options.max_pixels, options.tiling)
    job = BuildJob(checkpoint, reader.url, writer.staging, options.storage_options,
                   options.bands, options.max_pixels, options.batch_size, options.workers,
                   options.device, options.tiling, options.precision, options.device_jpegs)
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
    report.row_count = manifest["row_count"]
    report.exact_ivf = manifest["kind"] == "ivf" and manifest["index_file"] is None
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
