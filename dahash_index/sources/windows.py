"""Read large GeoTIFFs window by window: the chips of a build, the window of a query.

A large scene is opened once (its header and tile index only) and read one chip at a time,
so memory is bounded by a chip, never by the scene. Remote files are read through an fsspec
file object with a small read-ahead (``READ_BLOCK``): GDAL asks for the byte ranges of the
header and the internal tiles it needs, and little more travels (``ReadStats`` counts the
bytes fetched). GDAL's own block cache is
held to ``GDAL_CACHE_MB`` for the same reason.

Each chip is decoded as a scene of its own: the bands the build uses, a 2-98 % stretch over
its own valid pixels for data other than uint8, invalid pixels 0 (``tiff.read_rgb``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import rasterio
from fsspec.implementations.local import LocalFileSystem
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

from dahash_index.scenes.chips import Tiling, Window
from dahash_index.scenes.geotiff import geo_bounds, read_rgb, tiff_info
from dahash_index.scenes.scene import SceneDecodeError, SceneInfo, is_tiff
from dahash_index.sources.remote import (
    RemoteError,
    describe,
    is_transient,
    read_url,
    url_filesystem,
)
from dahash_index.sources.shards import (
    SceneBytes,
    SceneError,
    SceneFile,
    Shard,
    ShardReader,
    ShardReadError,
)

GDAL_CACHE_MB = 64  # decoded blocks GDAL may keep: a row of chips of a 20,000 px scene
# fsspec's read-ahead per request. Its default (5 MB for S3) fetches far more than the tiles a
# window needs; none at all makes GDAL's small header reads one request each (186 requests
# for a 256-px window of an 8192-px COG, against 5 with 64 kB, for 1.3 x the bytes).
READ_BLOCK = 1 << 16


@dataclass(frozen=True)
class SceneChip:
    """One chip of a large scene, decoded: image (tile, tile, 3) uint8, padded with zeros
    where the window is cut by the scene's edge; info is the scene's, with the chip's bounds."""

    url: str
    shard: str
    member: str | None
    label: str | None
    window: Window
    image: np.ndarray
    info: SceneInfo


@dataclass(frozen=True)
class SkippedChip:
    """A chip not indexed because under ``Tiling.min_valid`` of its pixels are valid."""

    url: str
    window: Window


class CannotOpenTiff(SceneDecodeError):
    """GDAL cannot open the file as a TIFF (one line)."""


@dataclass
class ReadStats:
    """Bytes read from remote files, and their sizes (for ``benchmarks/large_scene.py``)."""

    bytes_read: int = 0
    file_bytes: int = 0
    requests: int = 0
    files: list[str] = field(default_factory=list)


class _CountedFile:
    """A file object that counts what is read from it, for files without an fsspec cache
    whose fetches can be counted (GDAL's Python opener calls read, seek and tell)."""

    def __init__(self, f: Any, stats: ReadStats) -> None:
        self._f, self._stats = f, stats

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._stats.bytes_read += len(data)
        self._stats.requests += 1
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _CountedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def _counted(f: Any, stats: ReadStats) -> Any:
    """``f`` with what it fetches from its store added to ``stats``."""
    cache = getattr(f, "cache", None)
    fetch = getattr(cache, "fetcher", None)
    if fetch is None:
        return _CountedFile(f, stats)

    def counted(start: int, end: int) -> bytes:
        data = fetch(start, end)
        stats.bytes_read += len(data)
        stats.requests += 1
        return data

    cache.fetcher = counted
    return f


@contextmanager
def open_scene(source: bytes | str, storage_options: dict | None = None,
               stats: ReadStats | None = None) -> Iterator[rasterio.io.DatasetReader]:
    """A TIFF as an open rasterio dataset: from its bytes, a local path, or any fsspec URL
    (read by byte ranges). Raises SceneDecodeError for data GDAL cannot open, OSError (from
    fsspec) for a file that cannot be read."""
    with warnings.catch_warnings(), rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        if isinstance(source, bytes):
            with MemoryFile(source) as mem, _opened(lambda: mem.open(driver="GTiff")) as ds:
                yield ds
            return
        fs, path = url_filesystem(source, storage_options)
        if isinstance(fs, LocalFileSystem):
            with _opened(lambda: rasterio.open(path, driver="GTiff")) as ds:
                yield ds
            return
        stats = stats if stats is not None else ReadStats()
        stats.files.append(source)
        stats.file_bytes += fs.size(path)

        def opener(name: str, mode: str = "rb") -> Any:
            try:
                return _counted(fs.open(name, "rb", cache_type="readahead",
                                        block_size=READ_BLOCK), stats)
            except Exception as err:  # rasterio probes openers with a made-up name, and only
                # FileNotFoundError means "no such file" to it; the whole-file read that
                # follows a failed open reports the real error
                raise FileNotFoundError(name) from err

        with _opened(lambda: rasterio.open(path, driver="GTiff", opener=opener)) as ds:
            yield ds


@contextmanager
def _opened(open_it) -> Iterator[rasterio.io.DatasetReader]:
    try:
        ds = open_it()
    except rasterio.errors.RasterioIOError as err:
        raise CannotOpenTiff(f"cannot open TIFF: {str(err).splitlines()[0][:160]}") from None
    with ds:
        yield ds


def iter_chips(ds: rasterio.io.DatasetReader, tiling: Tiling,
               bands: tuple[int, int, int] | None, url: str, shard: str, member: str | None,
               label: str | None) -> Iterator[SceneChip | SkippedChip]:
    """Every chip of the open scene ``ds`` in ``tiling``'s grid, or a SkippedChip for one
    that is mostly invalid. Raises SceneDecodeError when the scene cannot be read."""
    scene = tiff_info(ds)
    for window in tiling.windows(ds.width, ds.height):
        image, valid = read_window(ds, window, tiling.tile, bands)
        if valid < tiling.min_valid:
            yield SkippedChip(url, window)
            continue
        yield SceneChip(url, shard, member, label, window, image, _chip_info(ds, scene, window))


def read_window(ds: rasterio.io.DatasetReader, window: Window, tile: int | None,
                bands: tuple[int, int, int] | None) -> tuple[np.ndarray, float]:
    """``window`` of ``ds`` as (H, W, 3) uint8 (padded with zeros to ``tile`` x ``tile`` when
    given and the window is smaller) and the fraction of the padded chip that is valid.
    The window must lie inside the scene (SceneDecodeError otherwise)."""
    col, row, width, height = window
    if col + width > ds.width or row + height > ds.height:
        raise SceneDecodeError(f"window {col},{row},{width},{height} is not inside the "
                               f"{ds.width} x {ds.height} scene")
    try:
        rgb, valid = read_rgb(ds, bands, window)
    except SceneDecodeError:
        raise
    except Exception as err:  # GDAL reports bad data through many exception types
        raise SceneDecodeError(f"cannot read window {window}: {str(err).splitlines()[0]}"
                               ) from None
    count = int(valid.sum()) if valid is not None else width * height
    if tile is None or (width, height) == (tile, tile):
        return rgb, count / (width * height)
    padded = np.zeros((tile, tile, 3), np.uint8)
    padded[:height, :width] = rgb
    return padded, count / (tile * tile)


def _chip_info(ds: rasterio.io.DatasetReader, scene: SceneInfo, window: Window) -> SceneInfo:
    bounds, wgs84 = geo_bounds(ds, window)
    return replace(scene, bounds=bounds, bounds_wgs84=wgs84)


def read_shard(reader: ShardReader, shard: Shard, tiled: bool = False
               ) -> Iterator[SceneBytes | SceneFile | SceneError]:
    """A shard's scenes as bytes, or as errors for those that cannot be read. tiled: TIFFs
    stay unread (SceneFile), for ``tile_scenes`` to read large ones chip by chip. Raises
    ShardReadError when the storage fails. Reads no pixel: a Ray read task runs it."""
    return reader.iter_scenes(shard, is_tiff if tiled else None)


def tile_scenes(items: Iterable[SceneBytes | SceneFile | SceneError], tiling: Tiling,
                bands: tuple[int, int, int] | None, storage_options: dict | None = None
                ) -> Iterator[SceneBytes | SceneChip | SkippedChip | SceneError]:
    """A shard's items with every large TIFF (``tiling.applies``) replaced by its chips.

    items: ``ShardReader.iter_scenes(shard, defer=is_tiff)``. A SceneFile is opened (header
    only): a large scene is read chip by chip; a smaller one, or one GDAL cannot open, is read
    whole and passed on as SceneBytes for the usual decode (which reports a bad file). A
    TIFF tar member (already bytes) is chipped from memory. A scene that fails
    part-way becomes a SceneError after the chips read so far. Raises ShardReadError when the
    storage fails (the shard is retried by the next build)."""
    for item in items:
        if isinstance(item, SceneError) or not is_tiff(item.member or item.url):
            yield item
            continue
        source = item.data if isinstance(item, SceneBytes) else item.url
        try:
            with open_scene(source, storage_options) as ds:
                if tiling.applies(ds.width, ds.height):
                    yield from iter_chips(ds, tiling, bands, item.url, item.shard, item.member,
                                          item.label)
                    continue
        except CannotOpenTiff:
            pass  # read whole below: the usual decode names what is wrong with the file
        except SceneDecodeError as err:
            yield SceneError(item.url, item.shard, item.member, str(err))
            continue
        except Exception as err:  # fsspec and object-store clients raise their own types
            if is_transient(err):
                raise ShardReadError(f"shard {item.shard}: {describe(item.url, err)}") from err
            yield SceneError(item.url, item.shard, item.member, f"cannot read file: {err}")
            continue
        if isinstance(item, SceneBytes):
            yield item
            continue
        try:
            data = read_url(item.url, storage_options)
        except RemoteError as err:
            if err.transient:
                raise ShardReadError(f"shard {item.shard}: {err}") from err
            yield SceneError(item.url, item.shard, None, f"cannot read file: {err}")
            continue
        yield SceneBytes(item.url, item.shard, None, item.label, data)
