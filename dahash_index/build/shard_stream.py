"""Many shards through one encoder as one stream: the device never waits at a shard's end.

Indexed one after another, each shard would drain the pipeline at its end (its last batch
read back, its result written) and fill it again at the next one's start (scenes read and
decoded before the first batch can go). On a GPU that costs a few batches' time per shard.
``stream_shards`` instead reads, decodes and encodes the scenes of all its shards as one
stream: while one shard's last batch computes, the next one's scenes are read and decoded,
and its first batch is launched before the last one's codes are read back. A batch never
mixes two shards, and each shard's result comes out as soon as its last codes are back.

The stream carries markers in scene order: ``_ShardEnd`` after a shard's last scene, and
``_ShardFailed`` when the storage fails part way through one (its scenes so far are dropped,
the stream goes on with the next shard). Markers never go to a decode process (they take
their place among its results, ``DecodePool.map``'s in_line) and pass through the encoder
as batches of no images (``SceneEncoder.encode_batches``), so each keeps its place.

``index_shard`` is the stream of one shard, decoded in line: what a Ray actor runs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from dahash_index.build.decode_pool import Decoded, DecodePool, prefetch
from dahash_index.build.stages import ERROR_KEYS, ShardResult, ShardTask
from dahash_index.model.encoder import SceneEncoder
from dahash_index.scenes.device_jpeg import decode_batch
from dahash_index.sources.shards import SceneError, ShardReadError
from dahash_index.sources.windows import SkippedChip


class _Marker:
    """Not a scene: news of the shard it is tagged with, in its place among the scenes."""


@dataclass(frozen=True)
class _ShardEnd(_Marker):
    """Every scene of the shard came before this."""


@dataclass(frozen=True)
class _ShardFailed(_Marker):
    """The storage failed while the shard was read: ``reason``, one line."""

    reason: str


def _ignore(*args: object) -> None:
    pass


@dataclass
class _Shard:
    """What one shard has gathered so far."""

    codes: list[np.ndarray] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    chips_skipped: int = 0


def stream_shards(
    tasks: Sequence[ShardTask],
    read: Callable[[ShardTask], Iterator],
    decode_one: Callable,
    pool: DecodePool,
    encoder: SceneEncoder,
    batch_size: int,
    on_error: Callable[[dict], None],
    on_batch: Callable[[int], None],
    in_line: Callable | None = None,
) -> Iterator[tuple[ShardTask, ShardResult | str]]:
    """Index ``tasks`` as one stream -> (task, its ShardResult, or the one-line reason the
    storage failed on it), in task order, each as soon as it is done.

    read(task): the task's scenes (``ShardWorker.scenes``; raises ShardReadError when the
    storage fails). decode_one: ``streaming.decode_for_index`` with the job's options, run in
    ``pool``'s processes (raises BrokenProcessPool from here when one dies: the caller
    starts again from the first task whose result it has not had). on_error: each scene that
    cannot be indexed (an ERRORS_SCHEMA dict); on_batch(n): n scenes encoded. in_line:
    what this process decodes itself rather than hand to ``pool`` (``DecodePool.map``).
    """
    shards = [_Shard() for _ in tasks]

    def tagged() -> Iterator[tuple[int, object]]:  # in the reader thread (``prefetch``)
        for n, task in enumerate(tasks):
            try:
                for item in read(task):
                    yield n, item
            except ShardReadError as err:
                yield n, _ShardFailed(str(err))
                continue
            yield n, _ShardEnd()

    def indexable(items: Iterator[tuple[int, object]]) -> Iterator[tuple[int, object]]:
        for n, item in items:  # in this thread, as the decoders take scenes
            if isinstance(item, SceneError):
                error(n, {"url": item.url, "shard": item.shard, "member": item.member,
                          "reason": item.reason})
            elif isinstance(item, SkippedChip):
                shards[n].chips_skipped += 1
            else:
                yield n, item

    def error(n: int, row: dict) -> None:
        shards[n].errors.append({k: row.get(k) for k in ERROR_KEYS})
        on_error(shards[n].errors[-1])

    window = max(2, pool.workers) * batch_size
    decoded = _decoded_in_order(pool, decode_one, in_line,
                                indexable(prefetch(tagged(), 2 * batch_size)), window)
    for (n, marker, rows), codes, vectors in encoder.encode_batches(
            _batches(decoded, batch_size, encoder, error)):
        shard = shards[n]
        if rows:
            shard.codes.append(codes)
            if vectors is not None:
                shard.vectors.append(vectors)
            shard.rows.extend(rows)
            on_batch(len(rows))
        if isinstance(marker, _ShardFailed):
            shards[n] = _Shard()
            yield tasks[n], marker.reason
        elif isinstance(marker, _ShardEnd):
            codes = np.concatenate([np.zeros((0, encoder.bits // 8), np.uint8), *shard.codes])
            vectors = None
            if encoder.rerank_dim is not None:
                vectors = np.concatenate([np.zeros((0, encoder.rerank_dim), np.float16),
                                          *shard.vectors])
            shards[n] = _Shard()
            yield tasks[n], ShardResult(codes, shard.rows, shard.errors, shard.chips_skipped,
                                        encoder.precision, vectors)


def index_shard(
    scenes: Iterable,
    decode_one: Callable,
    encoder: SceneEncoder,
    batch_size: int,
    on_error: Callable[[dict], None] = _ignore,
    on_batch: Callable[[int], None] = _ignore,
) -> ShardResult:
    """read -> decode (in line) -> encode for one shard: its ShardResult.

    scenes: what ``ShardWorker.scenes`` yields for it; its read errors and undecodable
    scenes become error rows. Raises ShardReadError when the storage fails part way.
    """
    ((_, result),) = stream_shards([None], lambda _: scenes, decode_one, DecodePool(0),
                                   encoder, batch_size, on_error, on_batch)
    if isinstance(result, str):
        raise ShardReadError(result)
    return result


def _decoded_in_order(pool: DecodePool, decode_one: Callable, in_line: Callable | None,
                      entries: Iterator[tuple[int, object]], window: int
                      ) -> Iterator[tuple[int, Decoded | _Marker]]:
    """(n, scene or marker) -> (n, decode_one(scene) or the marker), in order. Markers, like
    what ``in_line`` takes, stay in this process (``DecodePool.map``'s in_line)."""
    tags: deque[int] = deque()

    def items() -> Iterator:
        for n, item in entries:
            tags.append(n)
            yield item

    def here(item: object) -> object:
        if isinstance(item, _Marker):
            return item
        return in_line(item) if in_line else None

    for decoded in pool.map(decode_one, items(), window, here):
        yield tags.popleft(), decoded


def _batches(decoded: Iterator[tuple[int, object]], size: int, encoder: SceneEncoder,
             error: Callable[[int, dict], None]) -> Iterator[tuple[tuple, list]]:
    """Decoded scenes -> ((n, marker or None, rows), images) batches of at most ``size``
    scenes of one shard, deferred JPEGs decoded on the encoder's device; a marker ends its
    shard's last batch (which may hold no image)."""
    rows: list[dict] = []
    images: list = []
    for n, item in decoded:  # a shard's scenes, then its marker, then the next shard's
        if isinstance(item, _Marker):
            yield _device_decoded(n, item, rows, images, encoder, error)
            rows, images = [], []
            continue
        row, image, reason = item
        if image is None:
            error(n, row | {"reason": reason})
            continue
        rows.append(row)
        images.append(image)
        if len(rows) == size:
            yield _device_decoded(n, None, rows, images, encoder, error)
            rows, images = [], []


def _device_decoded(n: int, marker, rows: list[dict], images: list, encoder: SceneEncoder,
                    error: Callable[[int, dict], None]) -> tuple[tuple, list]:
    rows, images = decode_batch(rows, images, encoder.device, partial(error, n))
    return (n, marker, rows), images
