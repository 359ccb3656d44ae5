"""The Python query API (``SceneIndex``) on the ``small`` index: the same hits as the CLI's
``query --json``, mmap or not, a bad query among good ones, codes and radius, threads."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from helpers import GOOD, json_lines, synthetic_scene
from PIL import Image

from dahash_index.query.scene_index import SceneIndex
from dahash_index.store import IndexReader


def test_api_query_matches_cli_json(small, run_cli):
    path = small["shards"] / "good" / "s1.jpg"
    cli = run_cli("query", path, "--index", small["index"], "--top", "5", "--json", check=True)
    cli_rows = json_lines(cli.stdout)
    assert len(cli_rows) == 5

    index = SceneIndex.open(small["index"])
    array = np.asarray(Image.open(path).convert("RGB"))
    table = index.query([str(path), array, path.read_bytes()], top=5)
    assert isinstance(table, pa.Table)
    assert table.num_rows == 15 and table["error"].null_count == 15
    rows = table.drop_columns(["error"]).to_pylist()
    assert rows[:5] == cli_rows  # every field, as the CLI prints it
    strip = [{k: v for k, v in r.items() if k not in ("query", "query_name")} for r in cli_rows]
    for q, name in ((1, "array 1"), (2, "bytes 2")):
        mine = [r for r in rows if r["query"] == q]
        assert {r["query_name"] for r in mine} == {name}
        assert [
            {k: v for k, v in r.items() if k not in ("query", "query_name")} for r in mine
        ] == strip
    own = [r for r in cli_rows if r["url"] == str(path)]
    assert own and own[0]["distance"] == 0
    assert [r["distance"] for r in cli_rows] == sorted(r["distance"] for r in cli_rows)

    df = table.to_pandas()
    assert len(df) == 15 and df.groupby("query").size().tolist() == [5, 5, 5]
    assert {"rank", "distance", "row_id", "url", "label", "crs", "datetime"} <= set(df.columns)
    assert df["row_id"].between(0, len(GOOD) - 1).all()


def test_a_turned_copy_finds_its_original_by_default(small, run_cli, tmp_path):
    # query searches an image in its 4 rotations unless told otherwise: a copy turned by 90°
    # is turned back by one of them, and that view's code is its original's.
    original = small["shards"] / "good" / "s2.png"
    turned = tmp_path / "turned.png"
    Image.fromarray(np.rot90(np.asarray(Image.open(original).convert("RGB")))).save(turned)
    hits = json_lines(run_cli("query", turned, "--index", small["index"], "--top", "3",
                              "--json", check=True).stdout)
    assert (hits[0]["url"], hits[0]["distance"]) == (str(original), 0)
    index = SceneIndex.open(small["index"])
    one_view = index.query([str(turned)], top=3, orientations=1).to_pylist()
    assert one_view != index.query([str(turned)], top=3).to_pylist()


def test_query_mmap_gives_the_same_hits(small, run_cli):
    path = small["shards"] / "more" / "m0.tif"
    args = ("query", path, "--index", small["index"], "--top", "4", "--json")
    loaded = run_cli(*args, check=True)
    mapped = run_cli(*args, "--mmap", check=True)
    assert len(json_lines(loaded.stdout)) == 4
    assert json_lines(mapped.stdout) == json_lines(loaded.stdout)


def test_api_bad_query_gets_an_error_row_and_the_others_go_on(small, run_cli, tmp_path):
    good = small["shards"] / "good" / "s0.jpg"
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + bytes(10))
    table = SceneIndex.open(small["index"]).query([str(bad), str(good)], top=2)
    err = table.filter(pc.equal(table["query"], 0)).to_pylist()
    assert len(err) == 1 and err[0]["row_id"] is None and "JPEG" in err[0]["error"]
    assert table.filter(pc.equal(table["query"], 1)).num_rows == 2

    result = run_cli("query", bad, good, "--index", small["index"], "--top", "2")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"Error: {bad}: {err[0]['error']}"
    ]
    assert str(good) in result.stdout


def test_api_query_codes_and_radius(small):
    index = SceneIndex.open(small["index"])
    codes = IndexReader.open(small["index"]).codes()
    n = len(codes)
    bits = np.unpackbits(codes, axis=1)
    hamming = (bits[:, None, :] != bits[None, :, :]).sum(-1)  # (n, n) brute force

    table = index.query_codes(codes, top=n, names=[f"row {i}" for i in range(n)])
    assert table.num_rows == n * n
    for q in range(n):
        hits = table.filter(pc.equal(table["query"], q)).to_pylist()
        assert hits[0]["query_name"] == f"row {q}"
        assert [h["distance"] for h in hits] == sorted(hamming[q])
        assert all(h["distance"] == hamming[q, h["row_id"]] for h in hits)
        assert sorted(h["row_id"] for h in hits) == list(range(n))

    for radius in (0, int(np.median(hamming[0])), 64):
        hits = index.query_codes(codes[:1], radius=radius).to_pylist()
        assert sorted(h["row_id"] for h in hits) == sorted(np.flatnonzero(hamming[0] <= radius))
        assert all(h["distance"] <= radius for h in hits)
    # radius= on an image query: every row within the radius, and only those.
    path = small["shards"] / "more" / "m1.jpg"
    own_code, _, _ = index.encode([str(path)])
    dist = (np.unpackbits(own_code, axis=1) != bits).sum(1)
    radius = int(np.sort(dist)[2])
    hits = index.query([str(path)], radius=radius).to_pylist()
    assert sorted(h["row_id"] for h in hits) == sorted(np.flatnonzero(dist <= radius))


def test_api_query_from_four_threads_equals_serial(small):
    scenes = [str(small["shards"] / rel) for rel in GOOD]
    arrays = [synthetic_scene(s) for s in (20, 21)]
    batches = [scenes[:2], scenes[2:], [scenes[4], arrays[0]], [arrays[1], *scenes[1:4]]]
    index = SceneIndex.open(small["index"])  # fresh: the encoder loads under contention
    start = threading.Barrier(len(batches))

    def run(batch):
        start.wait()
        return index.query(batch, top=4)

    with ThreadPoolExecutor(len(batches)) as pool:
        concurrent = list(pool.map(run, batches))
    serial = [index.query(batch, top=4) for batch in batches]
    for got, want in zip(concurrent, serial, strict=True):
        assert got.equals(want)
        assert got["error"].null_count == got.num_rows




def test_a_file_queried_comes_before_its_byte_identical_twin(tmp_path, quick_checkpoint,
                                                              run_cli):
    # Two files with the same bytes have the same code and vector: the search leaves them in
    # row-id order, and each queried by its own path must come back first.
    shards = tmp_path / "shards" / "good"
    shards.mkdir(parents=True)
    for name, seed in (("a.png", 1), ("b.png", 2)):
        Image.fromarray(synthetic_scene(seed)).save(shards / name)
    (shards / "twin.png").write_bytes((shards / "a.png").read_bytes())
    run_cli("build", "--shards", tmp_path / "shards", "--index", tmp_path / "index", "--model",
            quick_checkpoint, check=True)
    index = SceneIndex.open(tmp_path / "index")
    for name in ("a.png", "twin.png"):
        hits = index.query([str(shards / name)], top=3).to_pylist()
        assert hits[0]["url"] == str(shards / name)
        assert [h["rank"] for h in hits] == [1, 2, 3]
        assert hits[0]["distance"] == hits[1]["distance"] == 0
    # an array of the same image has no file: the search's order stands
    array = np.asarray(Image.open(shards / "a.png").convert("RGB"))
    first = index.query([array], top=2).to_pylist()
    assert {h["url"] for h in first} == {str(shards / "a.png"), str(shards / "twin.png")}
