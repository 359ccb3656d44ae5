"""The streaming parts of a build: scene bytes read ahead in a thread, decoded in worker
processes (or in line), in order, in bounded memory.

Decoders hand over (H, W, 3) uint8 images at their own size, ``CHUNK`` scenes per task,
through shared memory (``shared_images``); the resize to 299 px happens where the network
runs. For a GPU, JPEGs are not decoded here at all: their bytes go on, and nvJPEG decodes a
batch at a time (``device_jpeg.decode_batch``). TIFFs are always decoded here.

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
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from functools import partial
from itertools import islice
from typing import TypeVar

import numpy as np
import torch

from dahash_index.build.shared_images import (
    SharedImages,
    discard_images,
    receive_images,
    share_images,
)
from dahash_index.errors import printable
from dahash_index.scenes.decode import decode_scene
from dahash_index.scenes.device_jpeg import JpegData, defer_jpeg
from dahash_index.scenes.scene import SceneDecodeError, SceneInfo
from dahash_index.sources.shards import SceneBytes
from dahash_index.sources.windows import SceneChip

T = TypeVar("T")
# (metadata row, (H, W, 3) uint8 image, or JpegData to decode on the device, or None; error)
Decoded = tuple[dict, "np.ndarray | JpegData | None", "str | None"]
JPEG_SUFFIXES = (".jpg", ".jpeg")
CHUNK = 16  # scenes per task of a decode process: one future and one shared block each


def default_workers(device: torch.device) -> int:
    """Decode processes when none are asked for. Zero on a CPU: the backbone's threads already
    use every core, and a decoder beside them slows the forward more than decoding in line
    costs (benchmarks/build_throughput.py). On a GPU, every core but one (which reads the
    shards and feeds the GPU): TIFF decoding scales with cores."""
    if device.type == "cpu":
        return 0
    return max(1, (os.cpu_count() or 2) - 1)


def scene_name(url: str, member: str | None) -> str:
    """How a scene is named in messages: the file URL, or 'tar-url[member]', control
    characters escaped (one message, one line)."""
    return printable(f"{url}[{member}]" if member else url)


def decode_for_index(
    scene: SceneBytes | SceneChip, bands: tuple[int, int, int] | None, max_pixels: int,
    defer_jpegs: bool = False,
) -> Decoded:
    """Decode one scene -> (metadata row, (H, W, 3) uint8 image or None, error or None).
    A chip comes decoded already (``scene_chips``): its row adds its window. With
    ``defer_jpegs``, a JPEG that nvJPEG can take is not decoded: its image is a
    ``device_jpeg.JpegData`` (its bytes), decoded later on the network's device."""
    if isinstance(scene, SceneChip):
        col, top, width, height = scene.window
        return (_row(scene) | scene_columns(scene.info) | dict(
            col_off=col, row_off=top, window_width=width, window_height=height),
            scene.image, None)
    deferred = defer_for_device(scene, max_pixels) if defer_jpegs else None
    if deferred is not None:
        return deferred
    row = _row(scene)
    try:
        image, info = decode_scene(scene.data, scene.member or scene.url, bands, max_pixels)
    except SceneDecodeError as err:
        return row, None, str(err)
    return row | scene_columns(info), image, None


def defer_for_device(scene: SceneBytes | SceneChip, max_pixels: int) -> Decoded | None:
    """A JPEG that the network's device will decode, as ``decode_for_index`` gives it: its row
    from its header alone (microseconds: cheaper here than handed to a decode process) and
    its bytes. None for any other scene, and for a JPEG the device cannot take."""
    if isinstance(scene, SceneChip):
        return None
    name = scene.member or scene.url
    if not name.lower().endswith(JPEG_SUFFIXES):
        return None
    try:
        deferred = defer_jpeg(scene.data, name, max_pixels)
    except SceneDecodeError as err:  # above max_pixels, from its header
        return _row(scene), None, str(err)
    if deferred is None:
        return None
    jpeg, info = deferred
    return _row(scene) | scene_columns(info), jpeg, None


def _row(scene: SceneBytes | SceneChip) -> dict:
    return {"url": scene.url, "shard": scene.shard, "member": scene.member,
            "label": scene.label}


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
    submit: Callable[[object], Future],
    items: Iterable,
    window: int,
    result: Callable[[Future], object] = Future.result,
    discard: Callable[[object], None] | None = None,
) -> Iterator:
    """submit(item) for each item -> their futures' results, in order, with at most
    ``window`` in flight (bounded memory).
    result: how to wait for one future (``DecodePool.result`` notices dead workers).
    discard: what to do with the results nobody will take when the consumer stops early
    (their futures are cancelled, or discarded as they finish)."""
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(submit(item))
            if len(pending) >= window:
                yield result(pending.popleft())
        while pending:
            yield result(pending.popleft())
    finally:
        for future in pending:
            if not future.cancel() and discard is not None:
                future.add_done_callback(partial(_discard_result, discard))


def _discard_result(discard: Callable[[object], None], future: Future) -> None:
    if not future.cancelled() and future.exception() is None:
        discard(future.result())


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """items in lists of ``size`` (the last one shorter)."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def decode_shared(decode_one: Callable[[T], Decoded], chunk: list[T]
                  ) -> tuple[list[Decoded], SharedImages]:
    """In a decode process: decode a chunk, its images moved into shared memory (the rows
    hold None in their place until ``unshare`` puts them back)."""
    decoded = [decode_one(item) for item in chunk]
    arrays = [image for _, image, _ in decoded if isinstance(image, np.ndarray)]
    rows = [(row, None if isinstance(image, np.ndarray) else image, error)
            for row, image, error in decoded]
    return rows, share_images(arrays)


def unshare(result: tuple[list[Decoded], SharedImages]) -> list[Decoded]:
    """The decoded chunk ``decode_shared`` made, its images back in place."""
    rows, shared = result
    images = iter(receive_images(shared))
    return [(row, next(images) if image is None and error is None else image, error)
            for row, image, error in rows]


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

    def map(self, decode_one: Callable[[T], Decoded], items: Iterable[T], window: int,
            in_line: Callable[[T], Decoded | None] | None = None) -> Iterator[Decoded]:
        """decode_one over items in order, in the decode processes (in line without any),
        ``CHUNK`` items per task, at most ``window`` items in flight. The decoded images come
        back through shared memory (``shared_images``).

        in_line(item): the item's result when it needs no decode process, had here for less
        than handing it to one costs (``defer_for_device``); None otherwise."""
        if self.executor is None:
            for item in items:
                done = in_line(item) if in_line else None
                yield done if done is not None else decode_one(item)
            return
        done_here: deque[list[Decoded | None]] = deque()  # each chunk's, in submit order

        def submit(chunk: list[T]) -> Future:
            done = [in_line(item) for item in chunk] if in_line else [None] * len(chunk)
            done_here.append(done)
            rest = [item for item, d in zip(chunk, done, strict=True) if d is None]
            if rest:
                return self.executor.submit(decode_shared, decode_one, rest)
            future: Future = Future()
            future.set_result(([], SharedImages(None, ())))
            return future

        for result in ordered_map(submit, chunks(items, CHUNK), max(1, window // CHUNK),
                                  self.result, lambda result: discard_images(result[1])):
            decoded = iter(unshare(result))
            yield from [d if d is not None else next(decoded) for d in done_here.popleft()]

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
