"""The one worker of a build, whatever engine runs it: read, decode, encode, stage.

A ``ShardWorker`` holds one ``SceneEncoder`` and the job's options. The local engine streams
many shards through it (``stream``: the next shard is read while the last one's batches
compute); a Ray actor hands it one shard at a time, already read by a Ray task (``index``).
Either way a shard's scenes are cut into chips (``--tile``), decoded, batched and encoded the
same way, and its result is written whole into the index's staging area for the build's one
committer to adopt. An engine decides only where this runs (clip-retrieval's ``worker.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial

from dahash_index.build.decode_pool import (
    DecodePool,
    decode_for_index,
    defer_for_device,
    scene_name,
)
from dahash_index.build.job import BuildJob
from dahash_index.build.shard_stream import index_shard, stream_shards
from dahash_index.build.stages import ShardResult, ShardTask
from dahash_index.model.encoder import SceneEncoder
from dahash_index.sources.labels import SceneLabels
from dahash_index.sources.shards import ShardReadError
from dahash_index.sources.windows import read_shard, tile_scenes
from dahash_index.store.staging import StagedResult, write_result


def _ignore(*args: object) -> None:
    pass


def skipped_line(error: dict) -> str:
    """How a scene that could not be indexed is reported."""
    return f"skipped {scene_name(error['url'], error.get('member'))}: {error['reason']}"


class ShardWorker:
    """One encoder indexing shards into the staging area (see the module docstring).

    device: where the network runs [default: the job's ``--device``, else the GPU when
    there is one]; a Ray actor passes the device of its reservation."""

    def __init__(self, job: BuildJob, device: str | None = None) -> None:
        options = job.options
        self.job = job
        self.encoder = SceneEncoder(job.checkpoint, device or options.device, options.precision)
        self.batch_size = options.batch_size or self.encoder.batch_size
        defers = (self.encoder.device.type == "cuda" if options.device_jpegs is None
                  else options.device_jpegs)
        # What a decode process runs per scene; with nvJPEG, JPEGs only have their header read,
        # in the build process itself (``in_line``), and go to the device as bytes.
        self.decode_one = partial(decode_for_index, bands=options.bands,
                                  max_pixels=options.max_pixels, defer_jpegs=defers)
        self.in_line = partial(defer_for_device, max_pixels=options.max_pixels) if defers \
            else None
        self.on_batch = options.on_batch or _ignore

    @property
    def tiled(self) -> bool:
        return self.job.options.tiling is not None

    def scenes(self, items: Iterable) -> Iterator:
        """What ``windows.read_shard`` gave, with large TIFFs as their chips (read as they
        are encoded)."""
        tiling = self.job.options.tiling
        if tiling is None:
            return iter(items)
        return tile_scenes(items, tiling, self.job.options.bands,
                           self.job.reader.storage_options)

    def stream(self, tasks: Sequence[ShardTask], pool: DecodePool,
               on_error: Callable[[dict], None] = _ignore,
               on_batch: Callable[[int], None] = _ignore
               ) -> Iterator[tuple[ShardTask, StagedResult | str]]:
        """Index ``tasks`` as one stream (``shard_stream``), decoding in ``pool`` -> (task, its
        staged result, or the one-line reason the storage failed on it), in task order.
        Raises BrokenProcessPool when a decode process dies (see ``LocalRunner``)."""

        def batch_done(n: int) -> None:
            self.on_batch(n)
            on_batch(n)

        for task, result in stream_shards(
                tasks, lambda task: self.scenes(read_shard(self.job.reader, task.shard,
                                                           self.tiled)),
                self.decode_one, pool, self.encoder, self.batch_size, on_error, batch_done,
                self.in_line):
            yield task, result if isinstance(result, str) else self.stage(task, result)

    def index(self, task: ShardTask, items: Iterable) -> tuple[StagedResult, list[dict]] | str:
        """Index one shard already read (``windows.read_shard``), decoding in line -> (its staged
        result, its scene errors), or the one-line reason the storage failed."""
        try:
            result = index_shard(self.scenes(items), self.decode_one, self.encoder,
                                 self.batch_size, on_batch=self.on_batch)
        except ShardReadError as err:
            return str(err)
        return self.stage(task, result), result.errors

    def stage(self, task: ShardTask, result: ShardResult) -> StagedResult:
        """Put one shard's result into the index's staging area, tagged with the model and
        the shard's identity, for the committer to adopt."""
        shard = task.shard
        labels = self.job.options.labels or SceneLabels("none")
        reader = self.job.reader
        for row in result.rows:
            row["label"] = labels.label(row["url"], row.get("member"), row.get("label"),
                                        reader.base)
            row.update(reader.scene_fields(row["url"]))
        return write_result(self.job.staging, self.job.checkpoint.identity, shard.name,
                            shard.url, task.fingerprint, result.codes, result.rows,
                            result.errors, result.chips_skipped, result.precision,
                            result.vectors)

