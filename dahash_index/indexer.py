"""Stream shards of scenes through the network into an on-disk index, one shard at a time.

For each shard that is new or changed (its fingerprint differs from the committed one): read
scene bytes (``ShardReader``) in a background thread, decode them (in worker processes when
the network runs on a GPU, in line on a CPU; see ``streaming``), encode them in batches
(``SceneEncoder``), then commit the shard's codes, metadata and errors in one step
(``IndexWriter.commit_shard``). A re-run skips committed, unchanged shards, so a killed build
resumes where it stopped. Undecodable scenes are reported in one line each, recorded in the
errors table, and the build goes on. A shard the storage fails on (or whose decode process
dies twice) is not committed, named in one line, and retried by the next build.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dahash_index.checkpoint import Checkpoint, load_checkpoint
from dahash_index.checks import check_int
from dahash_index.encoder import SceneEncoder
from dahash_index.images import DEFAULT_MAX_PIXELS, SceneDecodeError, decode_scene
from dahash_index.shards import SceneBytes, SceneError, Shard, ShardReader, ShardReadError
from dahash_index.store import KINDS, MANIFEST, IndexWriter
from dahash_index.streaming import (
    DecodePool,
    batches,
    decode_for_index,
    default_workers,
    ordered_map,
    prefetch,
    scene_name,
)


@dataclass(frozen=True)
class BuildOptions:
    """How to build; every value is checked when the options are made (ValueError)."""

    kind: str = "flat"
    nlist: int | None = None
    bands: tuple[int, int, int] | None = None
    batch_size: int = 32
    workers: int | None = None  # decode processes; 0 decodes in line; None: default_workers
    max_pixels: int = DEFAULT_MAX_PIXELS
    storage_options: dict = field(default_factory=dict)
    device: str | None = None
    retry_errors: bool = False  # re-index committed shards that recorded scene errors
    wait: float = 0.0  # seconds to wait for another build holding the index

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
        check_int("batch size", self.batch_size, 1)
        if self.workers is not None:
            check_int("workers", self.workers, 0)
        check_int("max_pixels", self.max_pixels, 1)
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
    seconds: float = 0.0
    row_count: int = 0
    exact_ivf: bool = False  # an IVF with too few codes to train yet: searched exactly


@dataclass(frozen=True)
class ShardTask:
    """A shard to index: what it holds now, and whether it replaces a committed version."""

    shard: Shard
    fingerprint: str
    replace: bool


def index_shard(
    reader: ShardReader,
    shard: Shard,
    encoder: SceneEncoder,
    decode: Callable,
    pool: DecodePool,
    options: BuildOptions,
    on_progress: Callable[[int, int], None],
) -> tuple[np.ndarray, list[dict], list[dict]]:
    """Encode one shard -> (codes (n, K/8) uint8, n metadata rows, error rows); ``decode`` runs
    in the pool's processes, or in line when it has none."""
    errors: list[dict] = []

    def record_error(error: dict) -> None:
        errors.append(error)
        name = scene_name(error["url"], error.get("member"))
        tqdm.write(f"skipped {name}: {error['reason']}", file=sys.stderr)
        on_progress(0, 1)

    def scenes() -> Iterator[SceneBytes]:
        for item in prefetch(reader.iter_scenes(shard), 2 * options.batch_size):
            if isinstance(item, SceneError):
                record_error({"url": item.url, "shard": item.shard, "member": item.member,
                              "reason": item.reason})
            else:
                yield item

    window = max(2, options.workers) * options.batch_size
    results = ordered_map(pool.executor, decode, scenes(), window, pool.result)
    all_rows: list[dict] = []
    all_codes: list[np.ndarray] = []
    for rows, inputs in batches(results, options.batch_size, record_error):
        all_codes.append(encoder.encode(torch.from_numpy(inputs)))
        all_rows.extend(rows)
        on_progress(len(rows), 0)
    codes = np.concatenate(all_codes) if all_codes else np.zeros((0, encoder.bits // 8), np.uint8)
    errors = [{k: e.get(k) for k in ("url", "shard", "member", "reason")} for e in errors]
    return codes, all_rows, errors


def plan_shards(
    reader: ShardReader,
    writer: IndexWriter,
    shards: list[Shard],
    retry_errors: bool,
    warn: Callable[[str], None],
) -> tuple[list[ShardTask], int, list[str]]:
    """Decide what to index -> (tasks, shards skipped, one line per shard that cannot be listed).

    A shard is indexed when its URL is not committed; again (replacing its rows) when its
    fingerprint changed, when it yielded no row but had errors, or, with ``retry_errors``,
    when it had any error. Otherwise it is skipped.
    """
    tasks: list[ShardTask] = []
    skipped = 0
    failed: list[str] = []
    for shard in shards:
        try:
            fingerprint = reader.fingerprint(shard)
        except ShardReadError as err:
            failed.append(str(err))
            continue
        entry = writer.entry(shard.url)
        if entry is None:
            tasks.append(ShardTask(shard, fingerprint, False))
        elif entry["fingerprint"] != fingerprint:
            warn(f"Warning: shard {shard.url} changed since it was indexed; indexing it again "
                 f"(its {entry['rows']} old rows are replaced)")
            tasks.append(ShardTask(shard, fingerprint, True))
        elif entry["error_count"] and (retry_errors or entry["rows"] == 0):
            why = "--retry-errors" if retry_errors else "it yielded no row last time"
            warn(f"Warning: shard {shard.url} had {entry['error_count']} scene error(s); "
                 f"indexing it again ({why})")
            tasks.append(ShardTask(shard, fingerprint, True))
        else:
            skipped += 1
    return tasks, skipped, failed


def check_bands(reader: ShardReader, shard: Shard, options: BuildOptions) -> None:
    """Refuse ``options.bands`` before anything is committed when the shard's first readable
    scene decodes without them but not with them (the bands, not the scene, are wrong)."""
    if options.bands is None:
        return
    for item in islice(reader.iter_scenes(shard), 16):
        if isinstance(item, SceneError):
            continue
        name = scene_name(item.url, item.member)
        try:
            decode_scene(item.data, item.member or item.url, options.bands, options.max_pixels)
            return
        except SceneDecodeError as err:
            try:
                decode_scene(item.data, item.member or item.url, None, options.max_pixels)
            except SceneDecodeError:
                continue  # a bad scene: it says nothing about the bands
            bands = ",".join(map(str, options.bands))
            raise ValueError(f"--bands {bands} does not fit {name}: {err}") from None


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
    tasks, skipped, failed = plan_shards(reader, writer, shards, options.retry_errors,
                                         lambda line: tqdm.write(line, file=sys.stderr))
    report = BuildReport(shards_total=len(shards), shards_skipped=skipped, failed=failed)
    for line in failed:
        tqdm.write(f"Error: {line}", file=sys.stderr)
    if tasks:
        check_bands(reader, tasks[0].shard, options)
    encoder = SceneEncoder(checkpoint, options.device)
    if options.workers is None:
        options = replace(options, workers=default_workers(encoder.device))
    decode = partial(decode_for_index, bands=options.bands, max_pixels=options.max_pixels)

    # Not on a pipe or a log file, where every redraw would add to one endless line.
    bar = tqdm(total=len(tasks), unit="shard", desc="build", disable=None if progress else True)
    seen = {"scenes": 0, "errors": 0}

    def on_progress(scenes: int, errors: int) -> None:
        seen["scenes"] += scenes
        seen["errors"] += errors
        rate = seen["scenes"] / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(scenes=seen["scenes"], per_s=f"{rate:.1f}", errors=seen["errors"])

    pool = DecodePool(options.workers if tasks else 0)
    try:
        for task in tasks:
            result = _index_with_retry(reader, task.shard, encoder, decode, pool, options,
                                       on_progress)
            if isinstance(result, str):
                report.failed.append(result)
                tqdm.write(f"Error: {result}", file=sys.stderr)
            else:
                codes, rows, errors = result
                writer.commit_shard(task.shard.name, task.shard.url, codes, rows, errors,
                                    fingerprint=task.fingerprint, replace=task.replace)
                report.shards_indexed += 1
                report.shards_reindexed += task.replace
                report.scenes += len(rows)
                report.errors += len(errors)
            bar.update(1)
    finally:
        bar.close()
        pool.shutdown()
    writer.finalize()
    manifest = writer.manifest
    report.row_count = manifest["row_count"]
    report.exact_ivf = manifest["kind"] == "ivf" and manifest["index_file"] is None
    return report


def _index_with_retry(
    reader: ShardReader,
    shard: Shard,
    encoder: SceneEncoder,
    decode: Callable,
    pool: DecodePool,
    options: BuildOptions,
    on_progress: Callable[[int, int], None],
) -> tuple[np.ndarray, list[dict], list[dict]] | str:
    """index_shard, once more on a fresh decode pool if a decode process died; a one-line
    reason instead of the result when the shard cannot be indexed this time."""
    for attempt in (1, 2):
        try:
            return index_shard(reader, shard, encoder, decode, pool, options,
                               on_progress)
        except ShardReadError as err:
            return str(err)
        except BrokenProcessPool:
            pool.restart()
            if attempt == 2:
                return (f"shard {shard.url}: a decode process died twice while reading it; "
                        "not indexed (run build again to retry)")
            tqdm.write(f"Warning: a decode process died during shard {shard.url}; "
                       "reading it again", file=sys.stderr)
    raise AssertionError("unreachable")
