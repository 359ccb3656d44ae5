"""The Ray engine: scenes are read by Ray tasks and encoded by an actor pool, GPU actors where
there are GPUs. The committer runs on the driver.

    driver: plan ──> read task (scene bytes) ──> encoder actor: decode, encode, stage ──┐
            adopt <── StagedResult (a path and counts) <────────────────────────────────┘

Each actor holds one ``worker.ShardWorker`` (the worker the local engine runs too) and gives
it a whole shard at a time, so a shard is batched exactly as the local engine batches it and
gets bit-identical codes (the backbone's CPU kernels give the same floats for any thread
count; checked by tests/test_ray_engine.py). The actor writes the result into the index's
staging area, which its workers must reach (a shared filesystem on a cluster), and returns
only its description.

A worker that dies is no loss: staged results are written whole (a shard whose actor dies
leaves at most an invisible ``.tmp-`` directory), Ray restarts dead actors and re-runs their
shards, and read tasks are retried. A shard that kills its worker ``SHARD_ATTEMPTS`` times is
reported failed (the next build retries it).
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from dahash_index.errors import one_line
from dahash_index.sources.shards import (
    SceneBytes,
    SceneError,
    SceneFile,
    Shard,
    ShardReader,
    ShardReadError,
)
from dahash_index.sources.windows import read_shard
from dahash_index.store.staging import StagedResult, list_results, remove_result

# Read tasks run in Ray workers that import this module: importing torch there (through the
# runner, the stages or the encoder) costs seconds of CPU per worker, taken from the actors on
# a small machine. So the module itself stays light; the actor and the driver import the rest.
if TYPE_CHECKING:
    from dahash_index.build.job import BuildEvents, BuildJob
    from dahash_index.build.stages import ShardTask
    from dahash_index.build.worker import ShardWorker

PIP_HINT = "pip install 'dahash-index[ray]'"
SHARD_ATTEMPTS = 3  # a shard that kills its actor this often is reported failed, not retried
READ_RETRIES = 3  # re-runs of a read task whose worker process died
ACTOR_RESTARTS = 8  # per actor, over the whole build
SHARDS_PER_ACTOR = 2  # in flight: one encoding, one being read next (bounds the memory held)
# Torch threads per CPU actor: one actor per core decodes on one core while the other
# encodes, where one actor of two threads leaves a core idle while it decodes (on 2 cores the
# two shapes measured within noise of each other, 115 s and 119 s for 400 scenes).
CPU_THREADS = 1


def import_ray() -> Any:
    """The ``ray`` module, or a RuntimeError (one line, with the pip hint) without it."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(f"engine 'ray' needs the ray package: {PIP_HINT}") from None
    return ray


def read_task(reader: ShardReader, shard: Shard, tiled: bool
              ) -> list[SceneBytes | SceneFile | SceneError] | str:
    """A Ray task: ``windows.read_shard`` as a list, or a one-line reason when the storage
    fails."""
    try:
        return list(read_shard(reader, shard, tiled))
    except ShardReadError as err:
        return str(err)


class ShardEncoder:
    """A Ray actor: one ShardWorker, indexing whole shards into the staging area.

    The job comes as ``[ObjectRef]`` (Ray leaves a nested ref unresolved) and is fetched on
    first use: small constructor arguments keep restarts safe (ray-project/ray#53727), and a
    restarted actor fetches it again from the retried call.
    """

    def __init__(self, device: str, threads: int) -> None:
        import torch

        # Ray sizes OMP_NUM_THREADS from the reservation; say it to torch in any case.
        torch.set_num_threads(threads)
        self.device = device
        self.worker: ShardWorker | None = None

    def setup(self, job_ref: list) -> ShardWorker:
        """Fetch the job and load the model, once per actor process."""
        if self.worker is None:
            import ray

            from dahash_index.build.worker import ShardWorker

            self.worker = ShardWorker(ray.get(job_ref[0]), self.device)
        return self.worker

    def ready(self, job_ref: list) -> bool:
        self.setup(job_ref)
        return True

    def index(
        self, job_ref: list, task: ShardTask, scenes: list[SceneBytes | SceneError] | str
    ) -> tuple[StagedResult, list[dict]] | str:
        """Index one shard (decode in line, encode, stage) -> (its staged result, its scene
        errors), or the read task's one-line reason."""
        if isinstance(scenes, str):
            return scenes
        return self.setup(job_ref).index(task, scenes)


@dataclass(frozen=True)
class PoolShape:
    """How many encoder actors, and what each holds."""

    actors: int
    device: str
    cpus: float  # logical CPUs each actor reserves
    gpus: float
    threads: int  # torch threads each actor uses


def pool_shape(resources: dict, device: str | None, threads: int | None = None) -> PoolShape:
    """One actor per GPU (unless the job asks for the CPU), else one per ``threads`` cores, so
    that the backbones' threads never outnumber the cores. Read tasks reserve no CPU: they
    wait on storage, and a reservation would leave a core idle."""
    cpus = max(1, int(resources.get("CPU", 1)))
    gpus = int(resources.get("GPU", 0))
    wants_cpu = device is not None and device.split(":")[0] == "cpu"
    if gpus and not wants_cpu:
        # The network runs on the GPU; the actor's CPU work is decoding in line, one scene at
        # a time. One CPU each keeps the actors placeable on any node that has a GPU.
        return PoolShape(gpus, device or "cuda", 1, 1, threads or 1)
    if device is not None and not wants_cpu:
        raise RuntimeError(f"device {device!r} asked for, but the Ray cluster has no GPU")
    threads = max(1, min(threads or CPU_THREADS, cpus))
    return PoolShape(max(1, cpus // threads), "cpu", threads, 0, threads)


class RayRunner:
    """Index shards on a Ray cluster: joined at ``address``, or started on this machine (and
    stopped afterwards) without one. ``actors`` / ``threads`` override the pool's shape."""

    def __init__(
        self, address: str | None = None, actors: int | None = None, threads: int | None = None
    ) -> None:
        self.ray = import_ray()
        self.address = address
        self.actors = actors
        self.threads = threads

    def run(self, job: BuildJob, tasks: Sequence[ShardTask], events: BuildEvents) -> None:
        if not tasks:
            return
        started = self._connect()
        try:
            shape = pool_shape(self.ray.cluster_resources(), job.options.device, self.threads)
            if self.actors:
                shape = PoolShape(self.actors, shape.device, shape.cpus, shape.gpus,
                                  shape.threads)
            _Build(self.ray, job, shape, events).run(tasks)
        finally:
            if started:
                self.ray.shutdown()

    def _connect(self) -> bool:
        """Join or start Ray -> whether this call started it (and so must stop it)."""
        ray = self.ray
        if ray.is_initialized():
            return False
        # Workers' output stays in Ray's log files; the driver reports every shard itself.
        quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
        if self.address is None:
            # This machine only: every core, on the loopback interface, no dashboard.
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                     _node_ip_address="127.0.0.1", **quiet)
        else:
            ray.init(address=self.address, **quiet)
        return True


class _Build:
    """One run's actor pool and the shards in flight on it."""

    def __init__(self, ray: Any, job: BuildJob, shape: PoolShape, events: BuildEvents) -> None:
        self.ray = ray
        self.events = events
        self.job = job
        self.read = ray.remote(num_cpus=0, max_retries=READ_RETRIES)(read_task)
        actor = ray.remote(ShardEncoder).options(
            num_cpus=shape.cpus, num_gpus=shape.gpus, max_restarts=ACTOR_RESTARTS,
            max_task_retries=SHARD_ATTEMPTS - 1)
        self.job_ref = [ray.put(job)]  # the checkpoint travels once, not once per shard
        self.actors = [actor.remote(shape.device, shape.threads)
                       for _ in range(shape.actors)]
        self.load = [0] * len(self.actors)
        self.in_flight: dict[Any, tuple[ShardTask, int, Any]] = {}
        self.reported: set[Path] = set()

    def run(self, tasks: Sequence[ShardTask]) -> None:
        self._check_actors()
        todo = deque(tasks)
        try:
            while todo or self.in_flight:
                self._submit(todo)
                done, _ = self.ray.wait(list(self.in_flight), num_returns=1)
                for ref in done:
                    self._finish(ref)
        finally:
            # Stops their shards too. What they staged stays: the next build adopts it.
            for actor in self.actors:
                self.ray.kill(actor)
        self._remove_orphans(tasks)

    def _check_actors(self) -> None:
        """Raise one line when the encoders cannot start (a bad model, no device): no shard
        could be indexed."""
        try:
            self.ray.get([a.ready.remote(self.job_ref) for a in self.actors])
        except self.ray.exceptions.RayError as err:
            cause = getattr(err, "cause", None) or err
            raise RuntimeError(f"the Ray encoders could not start: {one_line(cause)}") from None

    def _submit(self, todo: deque[ShardTask]) -> None:
        """Give each actor shards until it has SHARDS_PER_ACTOR in flight: while it encodes
        one, the next is read."""
        while todo:
            i = min(range(len(self.actors)), key=self.load.__getitem__)
            if self.load[i] >= SHARDS_PER_ACTOR:
                return
            task = todo.popleft()
            scenes = self.read.remote(self.job.reader, task.shard,
                                      self.job.options.tiling is not None)
            ref = self.actors[i].index.remote(self.job_ref, task, scenes)
            self.in_flight[ref] = (task, i, scenes)
            self.load[i] += 1

    def _finish(self, ref: Any) -> None:
        task, i, _scenes = self.in_flight.pop(ref)  # dropping the read's ref frees its bytes
        self.load[i] -= 1
        try:
            outcome = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as err:
            # Ray's message runs to many lines of ids and addresses; its kind says enough.
            self.events.failed(task, f"shard {task.shard.url}: the Ray actor encoding it died "
                                     f"({type(err).__name__}, after retries); not indexed (run "
                                     "build again to retry)")
            return
        except self.ray.exceptions.RayError as err:
            cause = getattr(err, "cause", None) or err
            self.events.failed(task, f"shard {task.shard.url}: {one_line(cause)}; not indexed "
                                     "(run build again to retry)")
            return
        if isinstance(outcome, str):
            self.events.failed(task, outcome)
            return
        from dahash_index.build.worker import skipped_line

        staged, errors = outcome
        for error in errors:
            tqdm.write(skipped_line(error), file=sys.stderr)
        self.events.scenes(staged.rows, len(errors))
        self.reported.add(staged.path)
        self.events.staged(task, staged)

    def _remove_orphans(self, tasks: Sequence[ShardTask]) -> None:
        """Delete results of this run's shards that no one reported: an actor that died after
        staging a shard, before its answer reached the driver, staged it twice."""
        urls = {t.shard.url for t in tasks}
        for result in list_results(self.job.staging):
            if result.shard_url in urls and result.path not in self.reported:
                remove_result(result)
