"""Runners: what wires the stages of a build together, on one machine or on many.

A runner takes a ``BuildJob`` (plain, picklable: everything a worker needs) and the shards to
index, and for each shard either stages its result in the index's staging area
(``events.staged``) or reports why it could not (``events.failed``). It never commits: the
build's one committer adopts staged results as they are reported (``indexer.build_index``).
Runners are chosen by name from ``ENGINES`` (``get_runner``), as clip-retrieval's
distributors are: ``local`` (this process) and ``ray`` (a Ray cluster, ``pipeline.ray_runner``,
needing the ``[ray]`` extra).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from dahash_index.checkpoint import Checkpoint
from dahash_index.chips import Tiling
from dahash_index.encoder import SceneEncoder
from dahash_index.pipeline.shard_stream import stream_shards
from dahash_index.pipeline.stages import ShardTask, read_scenes, write_shard_result
from dahash_index.shards import Shard, ShardReader
from dahash_index.store.staging import StagedResult
from dahash_index.streaming import (
    DecodePool,
    decode_for_index,
    default_workers,
    defer_for_device,
    scene_name,
)


@dataclass(frozen=True)
class BuildJob:
    """What every worker of a build needs, as plain values (sent to Ray workers as is)."""

    checkpoint: Checkpoint
    shards_url: str
    staging: Path
    storage_options: dict = field(default_factory=dict)
    bands: tuple[int, int, int] | None = None
    max_pixels: int = 0
    batch_size: int | None = None  # None: the encoder's device default (32 CPU, 256 GPU)
    workers: int | None = None  # decode processes per encoder; None: default_workers
    device: str | None = None
    tiling: Tiling | None = None  # chips of large TIFFs (``chips``); None: every scene whole
    precision: str | None = None  # None: the device's default (``precision``)
    device_jpegs: bool | None = None  # JPEGs decoded by the encoder's device; None: on a GPU

    def reader(self) -> ShardReader:
        return ShardReader(self.shards_url, self.storage_options or None)

    def read(self, reader: ShardReader, shard: Shard) -> Iterator:
        """stages.read_scenes with this job's tiling and bands."""
        return read_scenes(reader, shard, self.tiling, self.bands)

    def encoder(self) -> SceneEncoder:
        return SceneEncoder(self.checkpoint, self.device, self.precision)

    def decode_one(self, encoder: SceneEncoder) -> Callable:
        """streaming.decode_for_index with this job's bands and pixel limit, JPEGs left to
        the encoder's device when it is a GPU (or as ``device_jpegs`` says)."""
        return partial(decode_for_index, bands=self.bands, max_pixels=self.max_pixels,
                       defer_jpegs=self._defers_jpegs(encoder))

    def in_line(self, encoder: SceneEncoder) -> Callable | None:
        """What the build process does itself rather than hand to a decode process
        (``DecodePool.map``): reading the headers of JPEGs left to the device."""
        if not self._defers_jpegs(encoder):
            return None
        return partial(defer_for_device, max_pixels=self.max_pixels)

    def _defers_jpegs(self, encoder: SceneEncoder) -> bool:
        return encoder.device.type == "cuda" if self.device_jpegs is None else self.device_jpegs

    def batch_size_for(self, encoder: SceneEncoder) -> int:
        return self.batch_size or encoder.batch_size


@dataclass
class BuildEvents:
    """What a runner reports, as it happens (called from the thread that runs ``run``)."""

    staged: Callable[[ShardTask, StagedResult], None]
    failed: Callable[[ShardTask, str], None]  # a one-line reason; the shard is retried later
    scenes: Callable[[int, int], None] = lambda encoded, errors: None  # progress


class Runner(Protocol):
    def run(self, job: BuildJob, tasks: Sequence[ShardTask], events: BuildEvents) -> None:
        """Index every task: ``events.staged`` or ``events.failed`` once per task, in any
        order. Raises only for what no shard can succeed with (a bad model, no device)."""


def skipped_line(error: dict) -> str:
    """How a scene that could not be indexed is reported."""
    return f"skipped {scene_name(error['url'], error.get('member'))}: {error['reason']}"


class LocalRunner:
    """This process indexes the shards as one stream (``shard_stream``): a thread reads
    ahead, scenes are decoded in line (CPU) or in decode processes (GPU), the network encodes
    batches, and each shard is staged as soon as its last codes are back."""

    def run(self, job: BuildJob, tasks: Sequence[ShardTask], events: BuildEvents) -> None:
        if not tasks:
            return
        encoder = job.encoder()
        workers = job.workers if job.workers is not None else default_workers(encoder.device)
        pool = DecodePool(workers)
        reader = job.reader()
        model = job.checkpoint.identity
        todo = deque(tasks)
        alone = False  # after a decode process died: the first shard left, on its own

        def on_error(error: dict) -> None:
            tqdm.write(skipped_line(error), file=sys.stderr)
            events.scenes(0, 1)

        try:
            while todo:
                try:
                    for task, result in stream_shards(
                            [todo[0]] if alone else list(todo),
                            lambda task: job.read(reader, task.shard), job.decode_one(encoder),
                            pool, encoder, job.batch_size_for(encoder), on_error,
                            lambda n: events.scenes(n, 0), job.in_line(encoder)):
                        todo.popleft()
                        if isinstance(result, str):
                            events.failed(task, result)
                        else:
                            events.staged(task, write_shard_result(job.staging, model, task,
                                                                   result))
                    alone = False
                except BrokenProcessPool:
                    # The stream reaches past the first shard left, so which shard's scene
                    # killed it is not known: that shard goes again on its own. Dying
                    # there, it is the culprit; if not, the stream goes on as before.
                    pool.restart()
                    if alone:
                        task = todo.popleft()
                        events.failed(task, f"shard {task.shard.url}: a decode process died "
                                            "twice while reading it; not indexed (run build "
                                            "again to retry)")
                    else:
                        tqdm.write(f"Warning: a decode process died; reading shard "
                                   f"{todo[0].shard.url} again", file=sys.stderr)
                    alone = not alone
        finally:
            pool.shutdown()


def _ray_runner(**kwargs: object) -> Runner:
    from dahash_index.pipeline.ray_runner import RayRunner  # needs the [ray] extra

    return RayRunner(**kwargs)


# name -> factory(**engine options); the CLI's --engine choices come from here.
ENGINES: dict[str, Callable[..., Runner]] = {
    "local": lambda **kwargs: LocalRunner(),
    "ray": _ray_runner,
}


def get_runner(engine: str, **options: object) -> Runner:
    """The runner of ``engine`` (a key of ENGINES) made with its options (e.g. ray_address)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    return ENGINES[engine](**options)
