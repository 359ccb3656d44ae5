"""STAC catalogs and item collections as shards of scenes (sources.stac), on small JPEGs."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from helpers import save_scene

from dahash_index.sources.shards import SceneBytes, SceneError
from dahash_index.sources.stac import StacReader

pystac = pytest.importorskip("pystac")
WHEN = datetime(2024, 5, 1, tzinfo=timezone.utc)


def _item(item_id: str, assets: dict, collection: str | None = None, **properties):
    item = pystac.Item(item_id, None, None, WHEN, {"gsd": 0.3, **properties},
                       collection=collection)
    for key, (href, media) in assets.items():
        item.add_asset(key, pystac.Asset(href, media_type=media))
    return item


def _collection_file(tmp_path, items) -> str:
    path = tmp_path / "items.json"
    path.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    return str(path)


def test_items_become_scenes_grouped_by_collection(tmp_path):
    for name in ("a", "b", "c"):
        save_scene(tmp_path / "img" / f"{name}.jpg", ord(name))
    jpeg = pystac.MediaType.JPEG
    url = _collection_file(tmp_path, [
        _item("A", {"thumb": ("img/a.jpg", "text/plain"), "visual": ("img/a.jpg", jpeg)}, "x"),
        _item("B", {"visual": (str(tmp_path / "img/b.jpg"), jpeg)}, "y"),
        _item("C", {"visual": ("img/c.jpg", None)}),  # an image by its suffix
        _item("D", {"meta": ("d.xml", "application/xml")}),
        _item("E", {"visual": ("img/missing.jpg", jpeg)}, "x"),
    ])
    reader = StacReader(url)
    shards = reader.list_shards()
    assert [(s.name, s.url, s.kind) for s in shards] == [
        (".", url, "stac"), ("x", f"{url}/x", "stac"), ("y", f"{url}/y", "stac")]
    root, x, y = shards
    loose = list(reader.iter_scenes(root))
    assert isinstance(loose[0], SceneBytes) and loose[0].url == str(tmp_path / "img/c.jpg")
    assert loose[0].label == "img"  # the folder, for --label-from folder
    assert isinstance(loose[1], SceneError) and loose[1].url == "D"
    assert loose[1].reason == "STAC item D: no image asset (assets: meta)"
    first, missing = reader.iter_scenes(x)
    assert first.url == str(tmp_path / "img/a.jpg") and first.data[:2] == b"\xff\xd8"
    assert isinstance(missing, SceneError) and "missing.jpg" in missing.reason
    assert reader.count_scenes(x) == 2
    fields = reader.scene_fields(str(tmp_path / "img/b.jpg"))
    assert fields == {"item_id": "B", "datetime": "2024-05-01T00:00:00+00:00",
                      "properties": json.dumps({"datetime": "2024-05-01T00:00:00Z",
                                                "gsd": 0.3})}
    assert reader.scene_fields("/elsewhere.jpg") == {}


def test_the_fingerprint_follows_the_items(tmp_path):
    save_scene(tmp_path / "a.jpg", 1)
    jpeg = pystac.MediaType.JPEG
    before = StacReader(_collection_file(tmp_path, [_item("A", {"v": ("a.jpg", jpeg)})]))
    same = StacReader(_collection_file(tmp_path, [_item("A", {"v": ("a.jpg", jpeg)})]))
    changed = StacReader(_collection_file(tmp_path, [_item("A", {"v": ("a.jpg", jpeg)},
                                                           updated="2024-06-01")]))
    shard = before.list_shards()[0]
    assert before.fingerprint(shard) == same.fingerprint(shard) != changed.fingerprint(shard)


def test_the_asset_by_key(tmp_path):
    save_scene(tmp_path / "a.jpg", 1)
    save_scene(tmp_path / "b.jpg", 2)
    jpeg = pystac.MediaType.JPEG
    url = _collection_file(tmp_path, [_item("A", {"v": ("a.jpg", jpeg), "n": ("b.jpg", jpeg)})])
    (scene,) = StacReader(url, asset="n").iter_scenes(StacReader(url).list_shards()[0])
    assert scene.url == str(tmp_path / "b.jpg")
    (error,) = StacReader(url, asset="red").iter_scenes(StacReader(url).list_shards()[0])
    assert error.reason == "STAC item A: no asset 'red' (assets: v, n)"


def test_not_a_catalog_is_one_line(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"type": "Nonsense"}')
    with pytest.raises(ValueError, match=f"^{path}: not a STAC catalog, collection, item or "
                                         r"item collection \("):
        StacReader(str(path))
    with pytest.raises(OSError, match="no.json"):
        StacReader(str(tmp_path / "no.json"))
