"""Stream shards of scenes through the network into an on-disk index, one shard at a time.

For each shard not yet committed: read scene bytes (``ShardReader``) in a background thread,
decode them (in worker processes when the network runs on a GPU, in line on a CPU), encode
them in batches (``SceneEncoder``), then commit the shard's codes, metadata and errors in one
step (``IndexWriter.commit_shard``). A re-run skips committed shards, so a killed build
resumes where it stopped. Unreadable scenes are reported in one line each, recorded in the
errors table, and the build goes on.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from tqdm import tqdm

from dahash_index.backbones import image_to_tensor
from dahash_index.checkpoint import load_checkpoint
from dahash_index.encoder import SceneEncoder
from dahash_index.images import DEFAULT_MAX_PIXELS, SceneDecodeError, decode_scene
from dahash_index.shards import SceneBytes, SceneError, Shard, ShardReader
from dahash_index.store import IndexWriter


@dataclass(frozen=True)
class BuildOptions:
    kind: str = "flat"
    nlist: int | None = None
    bands: tuple[int, int, int] | None = None
    batch_size: int = 32
    workers: int | None = None  # decode processes; 0 decodes in line; None: default_workers
    max_pixels: int = DEFAULT_MAX_PIXELS
    storage_options: dict = field(default_factory=dict)
    device: str | None = None


@dataclass
class BuildReport:
    shards_total: int = 0
    shards_skipped: int = 0  # already committed by an earlier run
    shards_indexed: int = 0
    scenes: int = 0
    errors: int = 0
    seconds: float = 0.0
    row_count: int = 0


T = TypeVar("T")


def default_workers(device: torch.device) -> int:
    """Decode processes when none are asked for. Zero on a CPU: the backbone's threads already
    use every core, and a decoder beside them slows the forward more than decoding in line
    costs (benchmarks/build_throughput.py). On a GPU, enough processes to keep it fed."""
    if device.type == "cpu":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def scene_name(url: str, member: str | None) -> str:
    """How a scene is named in messages: the file URL, or 'tar-url[member]'."""
    return f"{url}[{member}]" if member else url


def decode_for_index(
    scene: SceneBytes, bands: tuple[int, int, int] | None, max_pixels: int
) -> tuple[dict, np.ndarray | None, str | None]:
    """Decode one scene -> (metadata row, network input (3, 299, 299) float32 or None, error)."""
    row = {"url": scene.url, "shard": scene.shard, "member": scene.member, "label": scene.label}
    try:
        image, info = decode_scene(scene.data, scene.member or scene.url, bands, max_pixels)
    except SceneDecodeError as err:
        return row, None, str(err)
    bounds = info.bounds or (None,) * 4
    wgs84 = info.bounds_wgs84 or (None,) * 4
    pixel = info.pixel_size or (None, None)
    row.update(
        width=info.width, height=info.height, bands=info.bands, dtype=info.dtype, crs=info.crs,
        left=bounds[0], bottom=bounds[1], right=bounds[2], top=bounds[3],
        west=wgs84[0], south=wgs84[1], east=wgs84[2], north=wgs84[3],
        pixel_size_x=pixel[0], pixel_size_y=pixel[1], datetime=info.datetime,
    )
    return row, image_to_tensor(image).numpy(), None


def _init_decode_worker(parent_pid: int | None = None) -> None:
    # Decoders must not start their own OpenMP pools next to the backbone's threads.
    torch.set_num_threads(1)
    if parent_pid is not None:
        threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()


def _exit_when_orphaned(parent_pid: int) -> None:
    # A build killed with SIGKILL cannot shut its pool down, and a worker blocked on the call
    # queue (whose write end it holds itself) would never see EOF: it would live on forever.
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


def _prefetch(items: Iterable[T], depth: int) -> Iterator[T]:
    """``items`` iterated by a background thread, at most ``depth`` ahead of the consumer.

    Reading scene bytes waits on disks and networks with the GIL released, so the next scenes
    arrive while the current batch is encoded. An exception in ``items`` is raised here.
    """
    ready: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as err:  # handed to the consumer, which re-raises it
            put((end, err))
            return
        put((end, None))

    threading.Thread(target=produce, daemon=True, name="scene-reader").start()
    try:
        while True:
            item, error = ready.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()  # a consumer that stops early releases the reader thread


def _ordered_map(
    executor: Executor | None, fn: Callable, items: Iterable, window: int
) -> Iterator:
    """fn over items, in order, with at most ``window`` in flight (bounded memory)."""
    if executor is None:
        yield from map(fn, items)
        return
    pending: deque[Future] = deque()
    for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _batches(results: Iterator, size: int, on_error: Callable[[dict], None]) -> Iterator:
    """Group decoded scenes into (rows, stacked inputs) batches; errors go to on_error."""
    rows: list[dict] = []
    inputs: list[np.ndarray] = []
    for row, x, reason in results:
        if x is None:
            on_error(row | {"reason": reason})
            continue
        rows.append(row)
        inputs.append(x)
        if len(rows) == size:
            yield rows, np.stack(inputs)
            rows, inputs = [], []
    if rows:
        yield rows, np.stack(inputs)


def index_shard(
    reader: ShardReader,
    shard: Shard,
    encoder: SceneEncoder,
    decode: Callable,
    executor: Executor | None,
    options: BuildOptions,
    on_progress: Callable[[int, int], None],
) -> tuple[np.ndarray, list[dict], list[dict]]:
    """Encode one shard -> (codes (n, K/8) uint8, n metadata rows, error rows)."""
    errors: list[dict] = []

    def record_error(error: dict) -> None:
        errors.append(error)
        name = scene_name(error["url"], error.get("member"))
        tqdm.write(f"skipped {name}: {error['reason']}", file=sys.stderr)
        on_progress(0, 1)

    def scenes() -> Iterator[SceneBytes]:
        for item in _prefetch(reader.iter_scenes(shard), 2 * options.batch_size):
            if isinstance(item, SceneError):
                record_error({"url": item.url, "shard": item.shard, "member": item.member,
                              "reason": item.reason})
            else:
                yield item

    window = max(2, options.workers) * options.batch_size
    results = _ordered_map(executor, decode, scenes(), window)
    all_rows: list[dict] = []
    all_codes: list[np.ndarray] = []
    for rows, inputs in _batches(results, options.batch_size, record_error):
        all_codes.append(encoder.encode(torch.from_numpy(inputs)))
        all_rows.extend(rows)
        on_progress(len(rows), 0)
    codes = np.concatenate(all_codes) if all_codes else np.zeros((0, encoder.bits // 8), np.uint8)
    errors = [{k: e.get(k) for k in ("url", "shard", "member", "reason")} for e in errors]
    return codes, all_rows, errors


def build_index(
    shards_url: str,
    index_dir: str | Path,
    model_path: str | Path,
    options: BuildOptions = BuildOptions(),
    progress: bool = True,
) -> BuildReport:
    """Index every shard under ``shards_url`` into ``index_dir`` (created or resumed)."""
    start = time.perf_counter()
    reader = ShardReader(shards_url, options.storage_options or None)
    checkpoint = load_checkpoint(model_path)
    extra = {"bands": list(options.bands) if options.bands else None}
    writer = IndexWriter.open(index_dir, model_path, options.kind, options.nlist, extra)
    shards = reader.list_shards()
    todo = [s for s in shards if not writer.is_committed(s.name)]
    report = BuildReport(shards_total=len(shards), shards_skipped=len(shards) - len(todo))
    encoder = SceneEncoder(checkpoint, options.device)
    if options.workers is None:
        options = replace(options, workers=default_workers(encoder.device))
    decode = partial(decode_for_index, bands=options.bands, max_pixels=options.max_pixels)

    bar = tqdm(total=len(todo), unit="shard", desc="build", disable=not progress)

    def on_progress(scenes: int, errors: int) -> None:
        report.scenes += scenes
        report.errors += errors
        rate = report.scenes / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(scenes=report.scenes, per_s=f"{rate:.1f}", errors=report.errors)

    executor = None
    if options.workers > 0 and todo:
        executor = ProcessPoolExecutor(
            options.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_decode_worker,
            initargs=(os.getpid(),),
        )
    try:
        for shard in todo:
            codes, rows, errors = index_shard(reader, shard, encoder, decode, executor, options,
                                              on_progress)
            writer.commit_shard(shard.name, shard.url, codes, rows, errors)
            report.shards_indexed += 1
            bar.update(1)
    finally:
        bar.close()
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    writer.finalize()
    report.row_count = writer.manifest["row_count"]
    report.seconds = time.perf_counter() - start
    return report
