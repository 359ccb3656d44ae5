"""Scenes from a STAC catalog, collection or item collection (``build --stac``).

Each item is one scene: its chosen asset (``asset``: an asset key; default the item's first
image asset, by media type or file suffix). The catalog is read once, through fsspec (a local
file or any URL ``build --shards`` takes), with ``pystac``. Items are grouped into one shard
per collection (``.`` for items of none), so that a build commits, skips and resumes them as
it does folders: a shard's fingerprint is a digest of its items' ids, asset URLs, datetimes
and ``updated`` properties. A scene's row keeps its item's id, datetime and properties
(``scene_fields``).

``StacReader`` answers what a build asks of ``shards.ShardReader``: ``base``,
``list_shards``, ``iter_scenes``, ``fingerprint``, ``count_scenes``, ``scene_fields``.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from dahash_index.errors import one_line
from dahash_index.scenes.scene import SCENE_SUFFIXES
from dahash_index.sources.remote import RemoteError, read_url
from dahash_index.sources.shards import (
    ROOT_SHARD,
    SceneBytes,
    SceneError,
    SceneFile,
    Shard,
    ShardReadError,
)


@dataclass(frozen=True)
class StacScene:
    """One item's scene: where its asset is, and what its row keeps of the item."""

    url: str  # the asset's absolute href; or the item's id where it has no usable asset
    item_id: str
    datetime: str | None
    properties: str  # JSON
    problem: str | None = None  # why the item gives no scene (no such asset)


class StacReader:
    """The items of the STAC catalog at ``url`` as shards of scenes (see the module docstring).

    Raises ValueError (one line, naming the URL) when the URL holds no STAC catalog,
    collection, item or item collection, and RemoteError when it cannot be read."""

    def __init__(self, url: str, asset: str | None = None,
                 storage_options: dict | None = None) -> None:
        self.url = url
        self.asset = asset
        self.storage_options = storage_options
        self._base = url.rstrip("/")
        self._shards: dict[str, list[StacScene]] = {}
        for collection, scene in _read_scenes(url, asset, storage_options):
            self._shards.setdefault(collection, []).append(scene)
        self._fields = {s.url: {"item_id": s.item_id, "properties": s.properties,
                                "datetime": s.datetime}
                        for scenes in self._shards.values() for s in scenes}

    @property
    def base(self) -> str:
        """The URL its shards' URLs are formed under: the catalog's."""
        return self._base

    def list_shards(self) -> list[Shard]:
        """One shard per collection, sorted by name (items of no collection: '.')."""
        return [Shard(name, self._base if name == ROOT_SHARD else f"{self._base}/{name}",
                      "stac") for name in sorted(self._shards)]

    def iter_scenes(self, shard: Shard, defer: Callable[[str], bool] | None = None
                    ) -> Iterator[SceneBytes | SceneFile | SceneError]:
        """Each item's scene in catalog order, or a SceneError for an item without the asset
        or whose asset cannot be read. Raises ShardReadError when the storage fails."""
        for scene in self._shards[shard.name]:
            if scene.problem is not None:
                yield SceneError(scene.url, shard.name, None, scene.problem)
                continue
            if defer is not None and defer(scene.url):
                yield SceneFile(scene.url, shard.name, _folder(scene.url))
                continue
            try:
                data = read_url(scene.url, self.storage_options)
            except RemoteError as err:
                if err.transient:
                    raise ShardReadError(f"shard {shard.url}: {err}") from err
                yield SceneError(scene.url, shard.name, None, str(err))
                continue
            yield SceneBytes(scene.url, shard.name, None, _folder(scene.url), data)

    def fingerprint(self, shard: Shard) -> str:
        """A digest of the shard's items (ids, asset URLs, datetimes, properties)."""
        items = [(s.item_id, s.url, s.datetime, s.properties) for s in self._shards[shard.name]]
        return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:32]

    def count_scenes(self, shard: Shard) -> int:
        return len(self._shards[shard.name])

    def scene_fields(self, url: str) -> dict:
        """What the row of the scene at ``url`` keeps of its item: item_id, properties
        (JSON) and datetime (the item's, over any the file's tags give)."""
        return self._fields.get(url, {})


def _read_scenes(url: str, asset: str | None, storage_options: dict | None
                 ) -> Iterator[tuple[str, StacScene]]:
    import pystac
    from pystac.stac_io import DefaultStacIO

    class FsspecStacIO(DefaultStacIO):  # every href through fsspec, as scenes are read
        def read_text_from_href(self, href: str) -> str:
            return read_url(href, storage_options).decode("utf-8")

    io = FsspecStacIO()
    try:
        data = json.loads(io.read_text(url))
        if data.get("type") == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(data, preserve_dict=False))
        else:
            found = pystac.read_dict(data, href=url, stac_io=io)
            items = [found] if isinstance(found, pystac.Item) else list(
                found.get_items(recursive=True))
    except RemoteError:
        raise
    except (ValueError, KeyError, TypeError, pystac.STACError, pystac.STACTypeError) as err:
        raise ValueError(f"{url}: not a STAC catalog, collection, item or item collection "
                         f"({one_line(err)})") from None
    here = posixpath.dirname(url)
    for item in items:
        name = (item.collection_id or ROOT_SHARD).replace("/", "_")
        yield name, _scene(item, asset, here)


def _scene(item, asset: str | None, here: str) -> StacScene:
    """An item's StacScene; relative hrefs of items with no self link resolve against the
    directory of the file that lists them (``here``)."""
    start = item.properties.get("start_datetime")
    when = item.datetime.isoformat() if item.datetime is not None else start
    properties = json.dumps(item.properties, sort_keys=True, default=str)
    key = asset if asset is not None else next(
        (k for k, a in item.assets.items() if _is_image(a)), None)
    if key is None or key not in item.assets:
        wanted = f"no asset {asset!r}" if asset is not None else "no image asset"
        return StacScene(item.id, item.id, when, properties,
                         f"STAC item {item.id}: {wanted} (assets: "
                         f"{', '.join(item.assets) or 'none'})")
    href = item.assets[key].get_absolute_href() or item.assets[key].href
    if "://" not in href and not posixpath.isabs(href):
        href = posixpath.normpath(posixpath.join(here, href))
    return StacScene(href, item.id, when, properties)


def _is_image(asset) -> bool:
    media = (asset.media_type or "").lower()
    return media.startswith("image/") or asset.href.lower().endswith(SCENE_SUFFIXES)


def _folder(url: str) -> str | None:
    """The name of the folder that holds the asset (``--label-from folder``)."""
    parent = posixpath.basename(posixpath.dirname(url))
    return parent or None
