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
from dahash_index.pipeline.stages import (
    ShardResult,
    ShardTask,
    index_shard,
    read_scenes,
    write_shard_result,
)
from dahash_index.shards import Shard, ShardReader, ShardReadError
from dahash_index.store.staging import StagedResult
from dahash_index.streaming import (
    DecodePool,
    decode_for_index,
    default_workers,
    prefetch,
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
        defer = (encoder.device.type == "cuda" if self.device_jpegs is None
                 else self.device_jpegs)
        return partial(decode_for_index, bands=self.bands, max_pixels=self.max_pixels,
                       defer_jpegs=defer)

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
    """This process indexes the shards one after another: a thread reads ahead, scenes are
    decoded in line (CPU) or in decode processes (GPU), and the network encodes batches."""

    def run(self, job: BuildJob, tasks: Sequence[ShardTask], events: BuildEvents) -> None:
        if not tasks:
            return
        encoder = job.encoder()
        workers = job.workers if job.workers is not None else default_workers(encoder.device)
        pool = DecodePool(workers)
        reader = job.reader()
        model = job.checkpoint.identity
        try:
            for task in tasks:
                result = _index_with_retry(job, reader, task, encoder, pool, events)
                if isinstance(result, str):
                    events.failed(task, result)
                else:
                    events.staged(task, write_shard_result(job.staging, model, task, result))
        finally:
            pool.shutdown()


def _index_with_retry(
    job: BuildJob,
    reader: ShardReader,
    task: ShardTask,
    encoder: SceneEncoder,
    pool: DecodePool,
    events: BuildEvents,
) -> ShardResult | str:
    """The shard's result; once more on a fresh decode pool if a decode process died; a
    one-line reason instead when the shard cannot be indexed this time."""
    decode_one = job.decode_one(encoder)
    batch_size = job.batch_size_for(encoder)
    window = max(2, pool.workers) * batch_size

    def on_error(error: dict) -> None:
        tqdm.write(skipped_line(error), file=sys.stderr)
        events.scenes(0, 1)

    shard = task.shard
    for attempt in (1, 2):
        try:
            scenes = prefetch(job.read(reader, shard), 2 * batch_size)
            return index_shard(scenes, lambda items: pool.map(decode_one, items, window),
                               encoder, batch_size, on_error,
                               lambda n: events.scenes(n, 0))
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
