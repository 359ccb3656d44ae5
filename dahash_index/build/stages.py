"""The stages of a build, as plain callables with plain inputs and outputs.

    list shards -> plan -> read scene bytes -> decode -> encode -> write a shard result -> commit

``ShardReader.list_shards`` lists, ``plan_shards`` decides what to index (``check_bands``
first refuses bands that do not fit), ``worker.read_shard`` reads a shard's scene bytes,
``decode_pool.decode_for_index`` decodes one scene, ``shard_stream.stream_shards`` turns the
scenes of shards into codes, metadata rows and error rows, ``ShardWorker.stage`` puts each
shard's result in the index's staging area, and ``IndexWriter.adopt`` commits them. The
worker (``worker.ShardWorker``) strings them together, whichever engine runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from dahash_index.build.decode_pool import scene_name
from dahash_index.errors import is_utf8, printable
from dahash_index.scenes.chips import Tiling
from dahash_index.scenes.decode import decode_scene
from dahash_index.scenes.scene import SceneDecodeError, is_tiff
from dahash_index.sources.shards import (
    SceneBytes,
    SceneError,
    SceneFile,
    Shard,
    ShardReader,
    ShardReadError,
)
from dahash_index.sources.windows import (
    open_scene,
    read_window,
)
from dahash_index.store import IndexWriter

ERROR_KEYS = ("url", "shard", "member", "reason")


@dataclass(frozen=True)
class ShardTask:
    """A shard to index: what it holds now, and whether it replaces a committed version."""

    shard: Shard
    fingerprint: str
    replace: bool


@dataclass
class ShardResult:
    """One shard, encoded: codes uint8 (n, K/8), n metadata rows (dicts of METADATA_SCHEMA
    columns, row i with code i), the scenes that could not be indexed (ERRORS_SCHEMA), and
    the rows' re-rank vectors (n, D) float16 (None for a model without them)."""

    codes: np.ndarray
    rows: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    chips_skipped: int = 0  # chips of large scenes left out as mostly invalid (nodata)
    precision: str = "fp32"  # the arithmetic the backbone ran in (``precision``)
    vectors: np.ndarray | None = None


def gone_shards(committed: Iterable[str], base: str, listed: Iterable[str]) -> list[str]:
    """The committed shard URLs under ``base`` (the root shard ``base`` and its children
    ``base/<name>``) that are not among the ``listed`` URLs: moved or deleted since."""
    listed = set(listed)
    prefix = base.rstrip("/") + "/"
    under = [url for url in committed
             if url == base or (url.startswith(prefix) and "/" not in url[len(prefix):])]
    return [url for url in under if url not in listed]


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
        if not is_utf8(shard.url):
            failed.append(f"shard {printable(shard.url)}: its name is not valid UTF-8; rename "
                          "it to index it")
            continue
        try:
            fingerprint = reader.fingerprint(shard)
        except ShardReadError as err:
            failed.append(str(err))
            continue
        entry = writer.entry(shard.url)
        if entry is None:
            tasks.append(ShardTask(shard, fingerprint, False))
        elif entry.fingerprint != fingerprint:
            warn(f"Warning: shard {shard.url} changed since it was indexed; indexing it again "
                 f"(its {entry.rows} old rows are replaced)")
            tasks.append(ShardTask(shard, fingerprint, True))
        elif entry.error_count and (retry_errors or entry.rows == 0):
            why = "--retry-errors" if retry_errors else "it yielded no row last time"
            warn(f"Warning: shard {shard.url} had {entry.error_count} scene error(s); "
                 f"indexing it again ({why})")
            tasks.append(ShardTask(shard, fingerprint, True))
        else:
            skipped += 1
    return tasks, skipped, failed


def check_bands(
    reader: ShardReader, shard: Shard, bands: tuple[int, int, int] | None, max_pixels: int,
    tiling: Tiling | None = None,
) -> None:
    """Refuse ``bands`` before anything is committed when the shard's first readable scene
    decodes without them but not with them (the bands, not the scene, are wrong). With
    ``tiling``, TIFFs are tried on a small window, never read whole."""
    if bands is None:
        return
    for item in islice(reader.iter_scenes(shard, is_tiff if tiling else None), 16):
        if isinstance(item, SceneError):
            continue
        name = scene_name(item.url, item.member)
        try:
            _try_bands(item, bands, max_pixels, reader.storage_options)
            return
        except SceneDecodeError as err:
            try:
                _try_bands(item, None, max_pixels, reader.storage_options)
            except (SceneDecodeError, OSError):
                continue  # a bad scene: it says nothing about the bands
            raise ValueError(f"--bands {','.join(map(str, bands))} does not fit {name}: "
                             f"{err}") from None
        except OSError:
            continue


def _try_bands(item: SceneBytes | SceneFile, bands: tuple[int, int, int] | None,
               max_pixels: int, storage_options: dict | None) -> None:
    """Decode ``item`` (a SceneFile: a 64-px window of it) with ``bands``; raises
    SceneDecodeError when it cannot, or when the scene has fewer bands than ``bands`` names
    (a JPEG or PNG ignores ``bands``, but 5,6,7 cannot be what its 3 bands are meant as)."""
    if isinstance(item, SceneBytes):
        _, info = decode_scene(item.data, item.member or item.url, bands, max_pixels)
        if bands is not None and max(bands) > info.bands:
            raise SceneDecodeError(f"it has {info.bands} band(s)")
        return
    with open_scene(item.url, storage_options) as ds:
        read_window(ds, (0, 0, min(64, ds.width), min(64, ds.height)), None, bands)
