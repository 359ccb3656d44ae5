"""Large scenes as chips: the grid, the footprints, reading windows, and builds and queries
with --tile (issue: large scenes)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine
from conftest import running_service
from helpers import UCMERCED, assert_one_line_failure, link_ucmerced, save_scene
from mosaic import ORIGIN, scene_pixels, write_mosaic
from rasterio.transform import from_origin

from dahash_index.columns import WINDOW_COLUMNS
from dahash_index.files import sha256_file
from dahash_index.model.orientations import DEFAULT_QUERY_ORIENTATIONS
from dahash_index.query.scene_index import SceneIndex
from dahash_index.scenes.chips import Tiling, parse_window, window_bounds
from dahash_index.scenes.scene import is_tiff
from dahash_index.sources.shards import ShardReader
from dahash_index.sources.windows import (
    ReadStats,
    SceneChip,
    SkippedChip,
    open_scene,
    read_window,
    tile_scenes,
)
from dahash_index.store.lookup import LZ4_BATCH_ROWS

# --- the grid and the footprints (hand-computed) -----------------------------------------------


def test_windows_cover_the_scene_and_edge_chips_follow_one_rule():
    # 600 px: chips at 0 and 256; the one at 512 would hold 88 px (34 %): dropped.
    # 700 px: the one at 512 holds 188 px (73 %): kept, its window cut to 188.
    assert Tiling(256).windows(600, 300) == [(0, 0, 256, 256), (256, 0, 256, 256)]
    assert Tiling(256).windows(700, 256) == [(0, 0, 256, 256), (256, 0, 256, 256),
                                             (512, 0, 188, 256)]
    # overlapping chips; one exactly half inside (128 of 256 px) is kept
    across = [(0, 256), (128, 256), (256, 256), (384, 128)]
    assert Tiling(256, 128).windows(512, 256) == [(c, r, w, h) for r, h in ((0, 256), (128, 128))
                                                  for c, w in across]


def test_stride_larger_than_tile_leaves_gaps():
    assert Tiling(256, 512).windows(1024, 1024) == [(0, 0, 256, 256), (512, 0, 256, 256),
                                                    (0, 512, 256, 256), (512, 512, 256, 256)]


def test_which_scenes_are_cut():
    tiling = Tiling(256)  # min side 512 by default
    assert not tiling.applies(200, 200)  # smaller than one tile
    assert not tiling.applies(512, 4096)  # one side not above the minimum
    assert tiling.applies(513, 513)
    assert Tiling(256, min_side=256).applies(300, 300)


@pytest.mark.parametrize("bad", [0, -256, 2.5, True, "256"])
def test_tile_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="--tile must be an integer >= 1"):
        Tiling(bad)
    with pytest.raises(ValueError, match="--stride must be an integer >= 1"):
        Tiling(256, stride=bad)


def test_window_bounds_north_up_and_rotated():
    # x = 2 col + 100, y = -2 row + 500
    assert window_bounds((2, 0, 100, 0, -2, 500), (10, 20, 5, 5)) == (120, 450, 130, 460)
    # x = row, y = col (a transposing, i.e. rotated and flipped, transform): the envelope
    assert window_bounds((0, 1, 0, 1, 0, 0), (1, 2, 3, 4)) == (2, 1, 6, 4)
    # 30 degrees: corners (0,0), (0,10), (10,0), (10,10) of the window through it
    rotation = Affine.rotation(30)
    left, bottom, right, top = window_bounds(tuple(rotation), (0, 0, 10, 10))
    xs = [rotation @ c for c in ((0, 0), (0, 10), (10, 0), (10, 10))]
    assert (left, right) == pytest.approx((min(x for x, _ in xs), max(x for x, _ in xs)))
    assert (bottom, top) == pytest.approx((min(y for _, y in xs), max(y for _, y in xs)))


@pytest.mark.parametrize("text, needle", [("1,2,3", "COL,ROW,WIDTH,HEIGHT"),
                                          ("a,b,c,d", "COL,ROW,WIDTH,HEIGHT"),
                                          ("-1,0,5,5", "COL,ROW,WIDTH,HEIGHT"),
                                          ("0,0,0,5", "must be positive")])
def test_parse_window_errors(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_window(text)
    assert parse_window(" 1, 2,3,4") == (1, 2, 3, 4)


# --- reading windows ---------------------------------------------------------------------------


def _random_tiff(path, size, nodata=None, crs="EPSG:32616", transform=None, fill=None):
    rng = np.random.default_rng(0)
    data = rng.integers(1, 255, (3, size[1], size[0]), dtype=np.uint8)
    if fill is not None:
        data[(slice(None), *fill)] = 0
    profile = {"driver": "GTiff", "width": size[0], "height": size[1], "count": 3,
               "dtype": "uint8", "tiled": True, "blockxsize": 256, "blockysize": 256,
               "compress": "deflate"}
    if crs is not None:
        profile |= {"crs": crs, "transform": transform or from_origin(*ORIGIN, 1.0, 1.0)}
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return data


def test_read_window_pads_edge_chips_and_counts_valid(tmp_path):
    data = _random_tiff(tmp_path / "s.tif", (700, 600))
    with open_scene(str(tmp_path / "s.tif")) as ds:
        image, valid = read_window(ds, (512, 0, 188, 256), 256, None)
        assert image.shape == (256, 256, 3) and valid == pytest.approx(188 / 256)
        assert np.array_equal(image[:, :188], data[:, :256, 512:700].transpose(1, 2, 0))
        assert not image[:, 188:].any()
        with pytest.raises(ValueError, match="not inside"):
            read_window(ds, (600, 0, 256, 256), 256, None)


def test_tile_scenes_skips_nodata_chips_and_keeps_small_scenes_whole(tmp_path):
    shards = tmp_path / "shards" / "a"
    shards.mkdir(parents=True)
    # 1024 x 1024 with nodata 0 on the left 600 columns: chips at col 0 and 256 are empty
    # (skipped), the one at 512 is 168/256 valid (66 %): kept, as is 768.
    _random_tiff(shards / "big.tif", (1024, 1024), nodata=0, fill=np.s_[:, :600])
    _random_tiff(shards / "small.tif", (200, 200))
    save_scene(shards / "plain.jpg", 1)
    reader = ShardReader(str(tmp_path / "shards"))
    shard = reader.list_shards()[0]
    items = list(tile_scenes(reader.iter_scenes(shard, defer=is_tiff), Tiling(256),
                             None))
    chips = [i for i in items if isinstance(i, SceneChip)]
    skipped = [i for i in items if isinstance(i, SkippedChip)]
    whole = [i.url.rsplit("/", 1)[1] for i in items if not isinstance(i, (SceneChip,
                                                                          SkippedChip))]
    assert [c.window for c in chips] == [(c, r, 256, 256) for r in (0, 256, 512, 768)
                                         for c in (512, 768)]
    assert len(skipped) == 8
    assert sorted(whole) == ["plain.jpg", "small.tif"]
    chip = chips[1]
    assert chip.info.bounds == (ORIGIN[0] + 768, ORIGIN[1] - 256, ORIGIN[0] + 1024, ORIGIN[1])
    assert (chip.info.width, chip.info.height) == (1024, 1024)


# --- builds and queries with --tile -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiled(tmp_path_factory, quick_checkpoint, run_cli):
    root = tmp_path_factory.mktemp("tiled")
    shards = root / "shards"
    (shards / "scenes").mkdir(parents=True)
    _random_tiff(shards / "scenes" / "geo.tif", (600, 600))
    _random_tiff(shards / "scenes" / "nogeo.tif", (600, 600), crs=None)
    rotated = Affine.translation(*ORIGIN) * Affine.rotation(30)
    _random_tiff(shards / "scenes" / "rotated.tif", (600, 600), transform=rotated)
    _random_tiff(shards / "scenes" / "small.tif", (200, 200))
    _random_tiff(shards / "scenes" / "border.tif", (600, 600), nodata=0, fill=np.s_[:, :300])
    built = run_cli("build", "--shards", shards, "--index", root / "index", "--model",
                    quick_checkpoint, "--tile", "256", check=True)
    return {"root": root, "shards": shards, "stdout": built.stdout, "model": quick_checkpoint}


def _rows(index_dir) -> dict:
    table = SceneIndex.open(index_dir).reader.metadata()
    out: dict = {}
    for row in table.to_pylist():
        out.setdefault(row["url"].rsplit("/", 1)[1], []).append(row)
    return out


def test_tiled_build_rows_windows_and_bounds(tiled):
    rows = _rows(tiled["root"] / "index")
    # 600 px at 256: chips at 0 and 256 on each axis (the one at 512 holds 88 px: dropped)
    windows = [(0, 0), (256, 0), (0, 256), (256, 256)]
    assert [(r["col_off"], r["row_off"]) for r in rows["geo.tif"]] == windows
    for r in rows["geo.tif"]:
        assert (r["window_width"], r["window_height"], r["width"], r["height"]) == (
            256, 256, 600, 600)
        assert (r["left"], r["top"]) == (ORIGIN[0] + r["col_off"], ORIGIN[1] - r["row_off"])
        assert (r["right"], r["bottom"]) == (r["left"] + 256, r["top"] - 256)
        assert r["west"] < r["east"] and r["south"] < r["north"]
    # without georeferencing: windows only
    assert [(r["col_off"], r["row_off"]) for r in rows["nogeo.tif"]] == windows
    assert all(r["crs"] is None and r["left"] is None and r["west"] is None
               for r in rows["nogeo.tif"])
    # a rotated transform: handled, bounds are the envelope of the window's corners
    rotated = Affine.translation(*ORIGIN) * Affine.rotation(30)
    for r in rows["rotated.tif"]:
        expected = window_bounds(tuple(rotated), (r["col_off"], r["row_off"], 256, 256))
        assert (r["left"], r["bottom"], r["right"], r["top"]) == pytest.approx(expected)
    # smaller than the threshold: one row, the whole scene, no window
    (small,) = rows["small.tif"]
    assert small["col_off"] is None and small["width"] == 200
    # nodata on the left half: the chips at col 0 skipped (counted), col 256 kept
    assert [(r["col_off"], r["row_off"]) for r in rows["border.tif"]] == [(256, 0), (256, 256)]
    assert "2 chip(s) skipped as mostly nodata" in tiled["stdout"]


def test_query_with_a_window_and_grouped_by_scene(tiled, run_cli):
    geo = tiled["shards"] / "scenes" / "geo.tif"
    out = run_cli("query", geo, "--index", tiled["root"] / "index", "--window",
                  "256,0,256,256", "--top", "3", "--json", check=True)
    hits = [json.loads(line) for line in out.stdout.splitlines()]
    first = hits[0]
    assert first["distance"] == 0 and first["url"] == str(geo)
    assert (first["col_off"], first["row_off"]) == (256, 0)
    grouped = run_cli("query", geo, "--index", tiled["root"] / "index", "--group-by", "scene",
                      "--json", check=True)
    urls = [json.loads(line)["url"] for line in grouped.stdout.splitlines()]
    assert len(urls) == len(set(urls)) == 5  # one row per scene
    # the whole 600 px query is cut as the index was: its own 4 chips are at distance 0
    whole = SceneIndex.open(tiled["root"] / "index").query([str(geo)], top=4)
    assert whole["distance"].to_pylist() == [0, 0, 0, 0]
    assert set(whole["url"].to_pylist()) == {str(geo)}
    outside = run_cli("query", geo, "--index", tiled["root"] / "index", "--window",
                      "500,0,256,256")
    assert_one_line_failure(outside, "not inside")


def test_bad_tiling_flags_are_one_line(tiled, run_cli, tmp_path):
    for flags, needle in ((["--tile", "0"], "--tile must be an integer >= 1, got 0"),
                          (["--tile", "-5"], "--tile must be an integer >= 1, got -5"),
                          (["--tile", "256", "--stride", "0"], "--stride must be"),
                          (["--stride", "64"], "only with --tile"),
                          # tried on a window of the first TIFF, never read whole
                          (["--tile", "256", "--bands", "4,3,2"], "--bands 4,3,2 does not fit")):
        got = run_cli("build", "--shards", tiled["shards"], "--index", tmp_path / "x",
                      "--model", tiled["model"], *flags)
        assert_one_line_failure(got, needle)
        assert not (tmp_path / "x").exists()


def test_index_from_before_chips_opens_and_answers(tiled, tmp_path, run_cli):
    """A format-2 index (no window columns in its parts or lookup files) is read with null
    windows; ``check`` passes."""
    old = tmp_path / "old"
    shutil.copytree(tiled["root"] / "index", old)
    manifest = json.loads((old / "manifest.json").read_text())
    for entry in manifest["shards"].values():
        part = pq.read_table(old / entry["part"]).drop_columns(list(WINDOW_COLUMNS))
        pq.write_table(part, old / entry["part"], row_group_size=8192)
        entry["part_sha256"] = sha256_file(old / entry["part"])
        if entry.get("lookup"):  # as format 2 wrote them: LZ4 Arrow IPC, 256-row batches
            rows = part.drop_columns(["row_id", "code"])
            options = pa.ipc.IpcWriteOptions(compression="lz4")
            with pa.ipc.new_file(old / entry["lookup"], rows.schema, options=options) as w:
                for batch in rows.to_batches(max_chunksize=LZ4_BATCH_ROWS):
                    w.write_batch(batch)
            entry["lookup_sha256"] = sha256_file(old / entry["lookup"])
        for key in ("lookup_blocks", "lookup_batches", "vectors_blocks", "block_bytes",
                    "digests", "digests_sha256"):  # not in format 2
            entry.pop(key, None)
    manifest["format"] = "dahash-index/2"
    del manifest["checksum"]  # format 2 had none
    (old / "manifest.json").write_text(json.dumps(manifest))
    index = SceneIndex.open(old)
    hits = index.query([str(tiled["shards"] / "scenes" / "small.tif")], top=3)
    assert hits["rank"].to_pylist() == [1, 2, 3]
    assert hits["col_off"].null_count == 3
    checked = run_cli("check", old)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- the mosaic of UC Merced scenes (acceptance) ------------------------------------------------


@pytest.mark.realdata
def test_mosaic_chip_is_found_with_its_exact_window_and_bounds(tmp_path, quick_checkpoint,
                                                                run_cli):
    """An untrained hash head on the real backbone: codes of single scenes, not of their
    class (a trained model gives many scenes of a class the same code, and ties are ranked
    by row id), so rank 1 is the chip that holds the very pixels of the query."""
    classes = sorted(p for p in UCMERCED.iterdir() if p.is_dir())
    shards = tmp_path / "shards"
    link_ucmerced(shards, 5)  # the plain shards, distractors: scenes 00-04 of each class
    # the mosaic: 64 other scenes (50.. of each class in turn), 8 x 8, EPSG:32616, 1 m
    sources = [sorted(classes[i % len(classes)].iterdir())[50 + i // len(classes)]
               for i in range(64)]
    (shards / "mosaic").mkdir()
    mosaic = shards / "mosaic" / "mosaic.tif"
    write_mosaic(mosaic, sources, 8, (2048, 2048))
    run_cli("build", "--shards", shards, "--index", tmp_path / "index", "--model",
            quick_checkpoint, "--tile", "256", "--stride", "256", check=True, timeout=1800)
    index = SceneIndex.open(tmp_path / "index")
    with rasterio.open(mosaic) as ds:
        transform = ds.transform
    picks = [0, 9, 27, 63]
    hits = index.query([str(sources[i]) for i in picks], top=2)
    ranked = hits.to_pylist()
    for i, hit, second in zip(picks, ranked[::2], ranked[1::2], strict=True):
        col, row = 256 * (i % 8), 256 * (i // 8)
        assert hit["distance"] == 0 < second["distance"], (hit, second)
        assert hit["url"] == str(mosaic), (sources[i], hit["url"])
        assert (hit["col_off"], hit["row_off"], hit["window_width"], hit["window_height"]) == (
            col, row, 256, 256)
        left, top = transform * (col, row)
        right, bottom = transform * (col + 256, row + 256)
        got = (hit["left"], hit["bottom"], hit["right"], hit["top"])
        assert got == pytest.approx((left, bottom, right, top), abs=1e-6)
        assert np.array_equal(scene_pixels(sources[i]),
                              _window_pixels(mosaic, (col, row, 256, 256)))


def _window_pixels(path, window):
    with open_scene(str(path)) as ds:
        image, _ = read_window(ds, window, None, None)
    return image


def test_a_scene_on_s3_is_tiled_and_read_by_byte_ranges(tiled, tmp_path, s3_client,
                                                       s3_endpoint, run_cli):
    """A tiled build and a --window query over a scene on an S3 server: the chips and hits
    match the local build's, and a window read fetches a small part of the file."""
    s3_client.create_bucket(Bucket="large-scenes")
    local = tiled["shards"] / "scenes" / "geo.tif"
    s3_client.upload_file(str(local), "large-scenes", "shards/scenes/geo.tif")
    url = "s3://large-scenes/shards"
    run_cli("build", "--shards", url, "--index", tmp_path / "index", "--model",
            tiled["model"], "--tile", "256", "--endpoint-url", s3_endpoint, check=True)
    remote = SceneIndex.open(tmp_path / "index").reader.metadata().to_pylist()
    here = _rows(tiled["root"] / "index")["geo.tif"]
    assert [(r["col_off"], r["row_off"], r["left"], r["top"]) for r in remote] == [
        (r["col_off"], r["row_off"], r["left"], r["top"]) for r in here]
    assert remote[0]["url"] == f"{url}/scenes/geo.tif"
    got = run_cli("query", f"{url}/scenes/geo.tif", "--index", tmp_path / "index", "--window",
                  "256,256,256,256", "--top", "1", "--json", "--endpoint-url", s3_endpoint,
                  check=True)
    hit = json.loads(got.stdout)
    assert (hit["distance"], hit["col_off"], hit["row_off"]) == (0, 256, 256)
    stats = ReadStats()
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}, "key": "testing",
               "secret": "testing", "skip_instance_cache": True}
    with open_scene(f"{url}/scenes/geo.tif", options, stats) as ds:
        read_window(ds, (256, 256, 256, 256), None, None)
    assert stats.file_bytes == local.stat().st_size
    # one 256-px tile of random (incompressible) pixels is 196 kB of the 1 MB file
    assert stats.bytes_read < 0.4 * stats.file_bytes


def test_window_and_group_by_through_the_service(tiled, cli_env, run_cli):
    """``query --server`` with --window cuts the window here (the service never gets the
    whole file) and prints what a local query prints; --group-by is passed on."""
    geo = tiled["shards"] / "scenes" / "geo.tif"
    index = tiled["root"] / "index"
    with running_service(index, cli_env, "--orientations", str(DEFAULT_QUERY_ORIENTATIONS)) as url:
        for extra in (["--window", "256,0,256,256"], ["--group-by", "scene"],
                      ["--window", "0,256,300,200", "--group-by", "scene"]):
            local = run_cli("query", geo, "--index", index, "--top", "4", *extra, check=True)
            remote = run_cli("query", geo, "--server", url, "--top", "4", *extra, check=True)
            assert remote.stdout == local.stdout and local.stdout, extra
        outside = run_cli("query", geo, "--server", url, "--window", "500,0,256,256")
        assert_one_line_failure(outside, "not inside")
