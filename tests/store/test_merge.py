"""Tests for dahash_index/merge.py and the ``merge`` command: indexes built from disjoint halves
merge into the index of the whole (same hits, distances, row ids and ties), duplicate scenes and
shards kept once, refusals in one line, re-running and resuming after a crash; one real-data
test on UC Merced halves built with ``dahash-index build``."""

from __future__ import annotations

import functools
import re
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from helpers import UCMERCED, identity, link_ucmerced

from dahash_index import store
from dahash_index.cli.merge import merge
from dahash_index.indexes import hamming_topk
from dahash_index.query.scene_index import SceneIndex
from dahash_index.store import (
    IndexReader,
    IndexStoreError,
    IndexWriter,
    ModelMismatchError,
)
from dahash_index.store.merge import MergeReport, SceneKeys, merge_indexes, scene_digests

# Interleaved between the halves: a merge in URL order would not reproduce the whole.
NAMES = {"agricultural": 7, "airplane": 5, "baseball": 0, "beach": 9, "buildings": 6,
         "chaparral": 4}


# --- helpers ---------------------------------------------------------------------------------



@functools.cache
def shard_codes(name: str, n: int) -> np.ndarray:
    """n 16-bit codes of a shard, the same wherever it is indexed. Only 6 bits vary, so codes
    repeat and most distances tie."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return rng.integers(0, 8, (n, 2), dtype=np.uint8)


def shard_rows(root: str, name: str, n: int, first: int = 0) -> list[dict]:
    return [
        {"url": f"{root}/{name}/{i}.jpg", "shard": name, "width": 256, "height": 256,
         "bands": 3, "dtype": "uint8", "label": name}
        for i in range(first, first + n)
    ]


def shard_errors(root: str, name: str, n: int) -> list[dict]:
    return [{"url": f"{root}/{name}/bad{i}.jpg", "shard": name, "reason": "truncated JPEG"}
            for i in range(n)]


def build(index: Path, ckpt: Path, root: str, names: dict[str, int], extra=None) -> Path:
    """What a build over ``root`` holding ``names`` commits: shards sorted by name, URL
    root/name, fingerprint from the name and size."""
    with IndexWriter.open(index, identity(ckpt), extra=extra) as w:
        for name in sorted(names):
            n = names[name]
            w.commit_shard(name, f"{root}/{name}", shard_codes(name, n), shard_rows(root, name, n),
                           shard_errors(root, name, n % 3), fingerprint=f"{name}-{n}")
        w.finalize()
    return index


@pytest.fixture
def halves(tmp_path, ckpts) -> dict[str, Path]:
    """Two indexes of disjoint halves of NAMES (other roots), and the index of all of it."""
    names = sorted(NAMES)
    return {
        "a": build(tmp_path / "a", ckpts["a"], "s3://a", {n: NAMES[n] for n in names[0::2]}),
        "b": build(tmp_path / "b", ckpts["a"], "s3://b", {n: NAMES[n] for n in names[1::2]}),
        "all": build(tmp_path / "all", ckpts["a"], "s3://all", NAMES),
    }


def answers(index: Path, queries: np.ndarray, top: int) -> list[tuple]:
    """Every hit as (query, rank, distance, row id, shard, scene path below its root)."""
    table = SceneIndex.open(index).query_codes(queries, top=top)
    rel = [u.split("/", 3)[3] for u in table["url"].to_pylist()]
    cols = [table[c].to_pylist() for c in ("query", "rank", "distance", "row_id", "shard")]
    return list(zip(*cols, rel, strict=True))


def contents(index: Path) -> tuple:
    """What a reader sees: shard entries (less file names and times), metadata, codes, errors."""
    r = IndexReader.open(index)
    m = r.manifest
    entries = [(url, {k: getattr(e, k) for k in ("name", "fingerprint", "first_row", "rows",
                                         "error_count")}) for url, e in m.shards.items()]
    return (entries, m.row_count, r.metadata().to_pylist(), r.codes().tolist(),
            r.errors().to_pylist())


ALL_CODES = np.array([[a, b] for a in range(8) for b in range(8)], dtype=np.uint8)


# --- merging halves --------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["ab", "ba"])
def test_merged_halves_answer_as_the_whole(tmp_path, halves, order):
    out = tmp_path / "out"
    report = merge_indexes(out, [halves[k] for k in order], progress=False)
    total = sum(NAMES.values())
    assert isinstance(report, MergeReport)
    assert (report.shards_adopted, report.shards_skipped, report.scenes_dropped) == (6, 0, 0)
    assert report.rows == report.row_count == total and not report.warnings

    # Every row ranked for every query: many ties, broken by row id; then a cut inside ties.
    for top in (total, 5, 1):
        assert answers(out, ALL_CODES, top) == answers(halves["all"], ALL_CODES, top)
    full, merged = IndexReader.open(halves["all"]), IndexReader.open(out)
    for k in (total, 3):
        d1, i1 = hamming_topk(merged.faiss_index(), ALL_CODES, k)
        d2, i2 = hamming_topk(full.faiss_index(), ALL_CODES, k)
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(merged.row_ids(), full.row_ids())
    np.testing.assert_array_equal(merged.codes(), full.codes())
    assert merged.manifest.index_file is not None  # finalized
    m = merged.manifest
    assert [e.name for e in m.shards.values()] == sorted(NAMES)
    assert m.model_sha256 == full.model_sha256
    assert merged.errors().num_rows == full.errors().num_rows
    assert store.check_index(out).ok


def test_rerunning_a_merge_changes_nothing(tmp_path, halves):
    out = tmp_path / "out"
    merge_indexes(out, [halves["a"], halves["b"]], progress=False)
    before = IndexReader.open(out).manifest
    report = merge_indexes(out, [halves["a"], halves["b"]], progress=False)
    assert (report.shards_adopted, report.shards_skipped, report.rows) == (0, 6, 0)
    assert report.row_count == sum(NAMES.values())
    assert IndexReader.open(out).manifest == before


def test_merge_adds_to_an_index(tmp_path, halves):
    """Merging one half, then the other, into OUT gives the whole."""
    out = tmp_path / "out"
    merge_indexes(out, [halves["a"]], progress=False)
    report = merge_indexes(out, [halves["b"], halves["a"]], progress=False)
    assert (report.shards_adopted, report.shards_skipped) == (3, 3)
    # Shards come in a different order than a single build's, so row ids differ; the hits
    # do not, once the row ids are renumbered in (shard, scene) order.
    merged, full = answers(out, ALL_CODES, 100), answers(halves["all"], ALL_CODES, 100)
    assert merged != full
    assert _renumbered(merged) == full


def _renumbered(hits: list[tuple]) -> list[tuple]:
    """Every hit of every query (all rows ranked), its row id renumbered in the order of a
    single build (shard name, then scene number), ties re-ranked by the new ids."""

    def scene(hit: tuple) -> tuple[str, int]:
        return hit[4], int(Path(hit[5]).stem)

    new = {s: i for i, s in enumerate(sorted({scene(h) for h in hits}))}
    ordered = sorted(hits, key=lambda h: (h[0], h[2], new[scene(h)]))
    ranks: dict[int, int] = {}
    result = []
    for q, _, d, _, s, p in ordered:
        ranks[q] = ranks.get(q, 0) + 1
        result.append((q, ranks[q], d, new[(s, int(Path(p).stem))], s, p))
    return result


# --- duplicates ------------------------------------------------------------------------------


def test_a_scene_in_two_inputs_is_kept_once(tmp_path, ckpts):
    """One input indexed s3://x as a root (shard 'region1'), the other s3://x/region1 (shard
    'airplane'): their scenes have the same URLs."""
    a, b = tmp_path / "a", tmp_path / "b"
    with IndexWriter.open(a, identity(ckpts["a"])) as w:
        rows = shard_rows("s3://x/region1", "airplane", 4)
        for row in rows:
            row["shard"] = "region1"
        errs = [{"url": "s3://x/region1/airplane/bad.jpg", "shard": "region1", "reason": "x"}]
        w.commit_shard("region1", "s3://x/region1", shard_codes("airplane", 4), rows, errs)
    with IndexWriter.open(b, identity(ckpts["a"])) as w:
        errs = [{"url": "s3://x/region1/airplane/bad.jpg", "shard": "airplane", "reason": "x"}]
        w.commit_shard("airplane", "s3://x/region1/airplane", shard_codes("airplane", 6),
                       shard_rows("s3://x/region1", "airplane", 6), errs)
    out = tmp_path / "out"
    report = merge_indexes(out, [a, b], progress=False)
    # 'airplane' sorts first: its 6 rows are kept, the 4 of 'region1' are the same scenes.
    assert (report.shards_adopted, report.scenes_dropped, report.row_count) == (2, 4, 6)
    r = IndexReader.open(out)
    meta = r.metadata()
    assert meta["url"].to_pylist() == [f"s3://x/region1/airplane/{i}.jpg" for i in range(6)]
    assert set(meta["shard"].to_pylist()) == {"airplane"}
    assert r.errors().num_rows == 1
    assert [e.rows for e in r.manifest.shards.values()] == [6, 0]
    # Scenes already in OUT are dropped too (and a rerun finds nothing to do).
    assert merge_indexes(out, [a, b], progress=False).scenes_dropped == 0


def test_scenes_repeated_within_a_shard_are_kept_once(tmp_path, ckpts):
    a = tmp_path / "a"
    rows = shard_rows("s3://x", "forest", 3)
    rows.append(dict(rows[1]))
    rows.append({**rows[1], "member": "1.jpg"})  # another scene: a tar member of that URL
    with IndexWriter.open(a, identity(ckpts["a"])) as w:
        w.commit_shard("forest", "s3://x/forest", shard_codes("forest", 5), rows, [])
    report = merge_indexes(tmp_path / "out", [a], progress=False)
    assert (report.rows, report.scenes_dropped) == (4, 1)
    meta = IndexReader.open(tmp_path / "out").metadata()
    assert meta["member"].to_pylist() == [None, None, None, "1.jpg"]


def test_a_shard_in_two_inputs_is_taken_once(tmp_path, ckpts, capsys):
    a = build(tmp_path / "a", ckpts["a"], "s3://x", {"forest": 3, "beach": 2})
    same = build(tmp_path / "same", ckpts["a"], "s3://x", {"forest": 3})
    report = merge_indexes(tmp_path / "out1", [a, same], progress=False)
    assert (report.shards_adopted, report.shards_skipped, report.scenes_dropped) == (2, 1, 0)
    assert report.row_count == 5 and not report.warnings

    # Another version of s3://x/forest (another fingerprint): the first input's is kept.
    other = build(tmp_path / "other", ckpts["a"], "s3://x", {"forest": 4})
    report = merge_indexes(tmp_path / "out2", [other, a], progress=False)
    assert report.row_count == 6 and len(report.warnings) == 1
    line = report.warnings[0]
    assert "s3://x/forest" in line and str(a) in line and "\n" not in line
    assert f"Warning: {line}" in capsys.readouterr().err
    entry = IndexReader.open(tmp_path / "out2").manifest.shards["s3://x/forest"]
    assert (entry.rows, entry.fingerprint) == (4, "forest-4")

    # OUT's version is kept too: nothing OUT holds is lost.
    report = merge_indexes(tmp_path / "out2", [a], progress=False)
    assert (report.shards_adopted, report.row_count, len(report.warnings)) == (0, 6, 1)
    assert str(tmp_path / "out2") in report.warnings[0]


# --- refusals --------------------------------------------------------------------------------


def test_refuses_another_model(tmp_path, ckpts):
    a = build(tmp_path / "a", ckpts["a"], "s3://a", {"forest": 2})
    b = build(tmp_path / "b", ckpts["b"], "s3://b", {"beach": 2})
    with pytest.raises(ModelMismatchError) as err:
        merge_indexes(tmp_path / "out", [a, b], progress=False)
    line = str(err.value)
    sha_a, sha_b = (IndexReader.open(p).model_sha256[:12] for p in (a, b))
    assert "\n" not in line and str(b) in line and sha_a in line and sha_b in line
    assert not (tmp_path / "out").exists()  # refused before anything was made


def test_refuses_another_code_length(tmp_path, ckpts):
    a = build(tmp_path / "a", ckpts["a"], "s3://a", {"forest": 2})
    wide = tmp_path / "wide"
    with IndexWriter.open(wide, identity(ckpts["wide"])) as w:
        w.commit_shard("beach", "s3://b/beach", np.zeros((1, 8), np.uint8),
                       shard_rows("s3://b", "beach", 1), [])
    with pytest.raises(ModelMismatchError, match="16 bits.*64 bits|64 bits.*16 bits") as err:
        merge_indexes(tmp_path / "out", [a, wide], progress=False)
    assert "\n" not in str(err.value) and str(wide) in str(err.value)

    result = CliRunner().invoke(merge, [str(tmp_path / "out"), str(a), str(wide)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "64 bits" in lines[0]


def test_refuses_an_output_of_another_model(tmp_path, ckpts):
    a = build(tmp_path / "a", ckpts["a"], "s3://a", {"forest": 2})
    out = build(tmp_path / "out", ckpts["b"], "s3://b", {"beach": 2})
    with pytest.raises(ModelMismatchError, match=str(out)):
        merge_indexes(out, [a], progress=False)
    assert IndexReader.open(out).row_count == 2


def test_refuses_out_as_an_input_and_an_input_twice(tmp_path, ckpts):
    a = build(tmp_path / "a", ckpts["a"], "s3://a", {"forest": 2})
    with pytest.raises(IndexStoreError, match="output index"):
        merge_indexes(a, [a], progress=False)
    with pytest.raises(IndexStoreError, match="output index"):
        merge_indexes(tmp_path / "x" / ".." / "a", [a], progress=False)
    (tmp_path / "link").symlink_to(a)
    with pytest.raises(IndexStoreError, match="given twice"):
        merge_indexes(tmp_path / "out", [a, tmp_path / "link"], progress=False)
    with pytest.raises(ValueError, match="at least one"):
        merge_indexes(tmp_path / "out", [], progress=False)
    with pytest.raises(IndexStoreError, match="not a dahash index"):
        merge_indexes(tmp_path / "out", [tmp_path / "missing"], progress=False)
    assert not (tmp_path / "out").exists()

    result = CliRunner().invoke(merge, [str(a), str(a)])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "output index" in result.output


def test_refuses_other_bands(tmp_path, ckpts):
    a = build(tmp_path / "a", ckpts["a"], "s3://a", {"forest": 2}, extra={"bands": [3, 2, 1]})
    b = build(tmp_path / "b", ckpts["a"], "s3://b", {"beach": 2}, extra={"bands": None})
    with pytest.raises(IndexStoreError, match="same options") as err:
        merge_indexes(tmp_path / "out", [a, b], progress=False)
    assert "\n" not in str(err.value)
    merge_indexes(tmp_path / "out", [a], progress=False)
    assert IndexReader.open(tmp_path / "out").manifest.extra == {"bands": [3, 2, 1]}


def test_refuses_a_damaged_part(tmp_path, ckpts):
    a = build(tmp_path / "a", ckpts["a"], "s3://a", {"forest": 2, "beach": 3})
    part = a / IndexReader.open(a).manifest.shards["s3://a/forest"].part
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(IndexStoreError, match="checksum"):
        merge_indexes(tmp_path / "out", [a], progress=False)
    # 'beach' sorts first and was committed; the merge can go on once the input is repaired.
    assert IndexReader.open(tmp_path / "out").row_count == 3


# --- crashes ---------------------------------------------------------------------------------


def test_a_killed_merge_resumes_to_the_same_index(tmp_path, halves, monkeypatch):
    inputs = [halves["a"], halves["b"]]
    merge_indexes(tmp_path / "straight", inputs, progress=False)

    commit = IndexWriter.commit_shard
    calls = []

    def dies_at_the_third(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise RuntimeError("killed")  # nothing of this shard is committed
        return commit(self, *args, **kwargs)

    out = tmp_path / "out"
    monkeypatch.setattr(IndexWriter, "commit_shard", dies_at_the_third)
    with pytest.raises(RuntimeError, match="killed"):
        merge_indexes(out, inputs, progress=False)
    assert IndexReader.open(out).row_count == NAMES["agricultural"] + NAMES["airplane"]
    monkeypatch.setattr(IndexWriter, "commit_shard", commit)

    report = merge_indexes(out, inputs, progress=False)
    assert (report.shards_adopted, report.shards_skipped) == (4, 2)
    assert contents(out) == contents(tmp_path / "straight")
    assert answers(out, ALL_CODES, 50) == answers(halves["all"], ALL_CODES, 50)


def test_a_merge_killed_before_its_first_commit_leaves_no_index(tmp_path, halves, monkeypatch):
    def dies(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(IndexWriter, "commit_shard", dies)
    with pytest.raises(OSError, match="disk full"):
        merge_indexes(tmp_path / "out", [halves["a"]], progress=False)
    assert not (tmp_path / "out").exists()


# --- options and the command -----------------------------------------------------------------


def test_kind_and_nlist(tmp_path, halves):
    out = tmp_path / "out"
    merge_indexes(out, [halves["a"], halves["b"]], kind="ivf", nlist=2, progress=False)
    m = IndexReader.open(out).manifest
    assert (m.kind, m.nlist) == ("ivf", 2)
    # Too few codes to train an IVF: searched exactly, so the answers are the whole's.
    assert answers(out, ALL_CODES, 8) == answers(halves["all"], ALL_CODES, 8)
    # OUT's kind is kept when none is given.
    assert merge_indexes(out, [halves["a"]], progress=False).shards_adopted == 0
    with pytest.raises(ValueError, match="nlist"):
        merge_indexes(tmp_path / "flat", [halves["a"]], nlist=4, progress=False)


def test_the_merge_command(tmp_path, halves):
    out = tmp_path / "out"
    args = [str(out), str(halves["a"]), str(halves["b"])]
    result = CliRunner().invoke(merge, args)
    assert result.exit_code == 0, result.output
    total = sum(NAMES.values())
    assert re.fullmatch(
        rf"merged {total} rows from 6 shard\(s\) of 2 index\(es\) \(0 shard\(s\) already "
        rf"merged or repeated, 0 duplicate scene\(s\) dropped\) in [0-9.]+s; "
        rf"{re.escape(str(out))} holds {total} rows\n",
        result.output,
    ), result.output
    again = CliRunner().invoke(merge, args)
    assert again.exit_code == 0 and again.output.startswith("merged 0 rows from 0 shard(s)")
    assert "6 shard(s) already merged" in again.output

    result = CliRunner().invoke(merge, [str(out)])
    assert result.exit_code == 2 and "Missing argument" in result.output
    help_text = CliRunner().invoke(merge, ["--help"]).output
    assert "Resumable" in help_text and "flat" in help_text and "ivf" in help_text


def test_scene_keys_is_a_set():
    rng = np.random.default_rng(0)
    keys, seen = SceneKeys(), set()
    for _ in range(40):
        urls = [f"s3://x/{i}.jpg" for i in rng.integers(0, 300, rng.integers(0, 30))]
        table = pa.table({"url": urls, "member": [None] * len(urls)})
        new = keys.add_new(scene_digests(table))
        expected = []
        for u in urls:
            expected.append(u not in seen)
            seen.add(u)
        assert new.tolist() == expected
    assert len(keys) == len(seen)
    both = pa.table({"url": ["a", "a", "a"], "member": [None, "", "m"]})
    assert SceneKeys().add_new(scene_digests(both)).all()


# --- real data -------------------------------------------------------------------------------


@pytest.mark.realdata
def test_ucmerced_halves_merge_into_the_whole(tmp_path, quick_checkpoint, run_cli):
    classes = sorted(p.name for p in UCMERCED.iterdir() if p.is_dir())[:4]
    halves = [classes[0::2], classes[1::2]]  # interleaved by name
    indexes = []
    for name, part in [("a", halves[0]), ("b", halves[1]), ("all", classes)]:
        shards = link_ucmerced(tmp_path / f"shards-{name}", 10, part)
        index = tmp_path / f"index-{name}"
        run_cli("build", "--shards", shards, "--index", index, "--model", quick_checkpoint,
                "--workers", 0, "--label-from", "folder", check=True)
        indexes.append(index)
    out = tmp_path / "merged"
    report = merge_indexes(out, indexes[:2], progress=False)
    assert (report.rows, report.scenes_dropped) == (40, 0)

    full, merged = IndexReader.open(indexes[2]), IndexReader.open(out)

    def scenes(reader: IndexReader) -> list[tuple]:
        meta = reader.metadata(columns=["row_id", "shard", "url", "label"])
        return [(r["row_id"], r["shard"], Path(r["url"]).name, r["label"])
                for r in meta.to_pylist()]

    # Same scenes under the same row ids (no renumbering needed), and the same codes.
    assert scenes(merged) == scenes(full)
    np.testing.assert_array_equal(merged.codes(), full.codes())
    queries = full.codes()[::7]
    for top in (40, 10):
        hits = [answers_real(p, queries, top) for p in (out, indexes[2])]
        assert hits[0] == hits[1]
        assert len(hits[0]) == len(queries) * top


def answers_real(index: Path, queries: np.ndarray, top: int) -> list[tuple]:
    table = SceneIndex.open(index).query_codes(queries, top=top)
    names = [Path(u).name for u in table["url"].to_pylist()]
    cols = [table[c].to_pylist() for c in ("query", "rank", "distance", "row_id", "shard")]
    return list(zip(*cols, names, strict=True))
