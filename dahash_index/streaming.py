"""The streaming parts of a build: scene bytes read ahead in a thread, decoded in worker
processes (or in line), grouped into batches for the network, in bounded memory.

Decoders must never share the cores the backbone uses on a CPU (see ``default_workers``); on a
GPU they keep it fed. A decode process that dies breaks the pool: ``DecodePool.restart``
gives a fresh one.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import TypeVar

import numpy as np
import torch

from dahash_index.backbones import image_to_tensor
from dahash_index.images import SceneDecodeError, SceneInfo, decode_scene
from dahash_index.scene_chips import SceneChip
from dahash_index.shards import SceneBytes

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
    scene: SceneBytes | SceneChip, bands: tuple[int, int, int] | None, max_pixels: int
) -> tuple[dict, np.ndarray | None, str | None]:
    """Decode one scene -> (metadata row, network input (3, 299, 299) float32 or None, error).
    A chip comes decoded already (``scene_chips``): its row adds its window."""
    row = {"url": scene.url, "shard": scene.shard, "member": scene.member, "label": scene.label}
    if isinstance(scene, SceneChip):
        col, top, width, height = scene.window
        row.update(scene_columns(scene.info), col_off=col, row_off=top, window_width=width,
                   window_height=height)
        return row, image_to_tensor(scene.image).numpy(), None
    try:
        image, info = decode_scene(scene.data, scene.member or scene.url, bands, max_pixels)
    except SceneDecodeError as err:
        return row, None, str(err)
    row.update(scene_columns(info))
    return row, image_to_tensor(image).numpy(), None


def scene_columns(info: SceneInfo) -> dict:
    """A SceneInfo as metadata columns (``store.METADATA_SCHEMA``)."""
    bounds = info.bounds or (None,) * 4
    wgs84 = info.bounds_wgs84 or (None,) * 4
    pixel = info.pixel_size or (None, None)
    return dict(
        width=info.width, height=info.height, bands=info.bands, dtype=info.dtype, crs=info.crs,
        left=bounds[0], bottom=bounds[1], right=bounds[2], top=bounds[3],
        west=wgs84[0], south=wgs84[1], east=wgs84[2], north=wgs84[3],
        pixel_size_x=pixel[0], pixel_size_y=pixel[1], datetime=info.datetime,
    )


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


def prefetch(items: Iterable[T], depth: int) -> Iterator[T]:
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


def ordered_map(
    executor: Executor | None,
    fn: Callable,
    items: Iterable,
    window: int,
    result: Callable[[Future], object] = Future.result,
) -> Iterator:
    """fn over items, in order, with at most ``window`` in flight (bounded memory).
    result: how to wait for one future (``DecodePool.result`` notices dead workers)."""
    if executor is None:
        yield from map(fn, items)
        return
    pending: deque[Future] = deque()
    for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= window:
            yield result(pending.popleft())
    while pending:
        yield result(pending.popleft())


def batches(results: Iterator, size: int, on_error: Callable[[dict], None]) -> Iterator:
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


class DecodePool:
    """The decode processes (none when ``workers`` is 0), restartable after one died."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.executor: ProcessPoolExecutor | None = None
        self.restart()

    def restart(self) -> None:
        self.shutdown()
        if self.workers > 0:
            self.executor = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_decode_worker,
                initargs=(os.getpid(),),
            )

    def map(self, fn: Callable, items: Iterable, window: int) -> Iterator:
        """fn over items in order, in the decode processes (in line without any), at most
        ``window`` in flight."""
        return ordered_map(self.executor, fn, items, window, self.result)

    def result(self, future: Future) -> object:
        """``future.result()``, raising BrokenProcessPool if a decode process died.

        A worker killed while it writes a result leaves a partial message in the result pipe:
        CPython's executor thread then waits in recv() forever and never notices the death
        (seen with 3.11, 1 kill in 3). So wait in steps, and when a worker is gone, kill the
        rest and close the parent's copy of the pipe's write end: the reader gets EOF, and the
        executor marks the pool broken as it should.
        """
        while True:
            try:
                return future.result(timeout=1.0)
            except FuturesTimeout:
                processes = list(getattr(self.executor, "_processes", {}).values())
                if processes and all(p.is_alive() for p in processes):
                    continue
                for p in processes:
                    p.kill()
                    p.join()
                writer = getattr(getattr(self.executor, "_result_queue", None), "_writer", None)
                if writer is not None:
                    writer.close()
                return future.result()

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)
            self.executor = None
