"""Integrity end to end (issue 22): the twelve reproductions of the probe, each as a user runs
it, and a fault injection that flips bytes in every kind of index file in turn.

The index is built from synthetic scenes with an untrained 64-bit network on the real tf2015
backbone that carries a re-rank projection (so the index has vectors files too): valid codes
are all integrity needs. The CLI runs in-process (click's CliRunner) except where the bug was
in what a process prints (non-UTF-8 and newline names): there it runs as the console script.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_failure, messages, save_scene

from dahash_index.store import IndexReader

SCENES = {"a/a0.jpg": 10, "a/a1.png": 11, "a/a2.jpg": 12, "b/b0.jpg": 13, "b/b1.tif": 14}
QUERIES = ("a/a1.png", "b/b0.jpg")


@pytest.fixture(scope="module")
def model(tmp_path_factory, tf2015_spec) -> Path:
    """An untrained network with a re-rank projection (PCA of random 2048-d features)."""
    import torch

    from dahash_index.model.checkpoint import save_checkpoint
    from dahash_index.model.network import dahash_net
    from dahash_index.model.rerank import fit_pca

    torch.manual_seed(0)
    features = np.random.default_rng(0).normal(size=(200, 2048)).astype(np.float32)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(path, dahash_net(64), tf2015_spec, ["a", "b"], 0, {},
                    rerank=fit_pca(features))
    return path


@pytest.fixture(scope="module")
def clean(tmp_path_factory, model, run_cli) -> dict:
    """The clean index, built once, and what its queries answer."""
    root = tmp_path_factory.mktemp("clean")
    for rel, seed in SCENES.items():
        save_scene(root / "shards" / rel, seed)
    run_cli("build", "--shards", root / "shards", "--index", root / "index", "--model", model,
            check=True)
    assert IndexReader.open(root / "index").has_vectors
    return {"root": root, "index": root / "index", "hits": hits(run_cli, root / "index", root)}


def hits(run_cli, index: Path, root: Path) -> list[tuple[str, int]]:
    """(scene file name, distance) of every hit of the QUERIES, in rank order."""
    result = run_cli("query", *[root / "shards" / q for q in QUERIES], "--index", index,
                     "--top", "5", "--json", check=True)
    return [(Path(h["url"]).name, h["distance"]) for h in map(json.loads,
                                                               result.stdout.splitlines())]


def copy_index(clean: dict, to: Path) -> Path:
    shutil.copytree(clean["index"], to)
    return to


def flip(path: Path, at: int | None = None, n: int = 16) -> None:
    """XOR ``n`` bytes of ``path`` from offset ``at`` (default: the middle) with 0xFF."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    for i in range(at, min(at + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def files_of_each_kind(index: Path) -> dict[str, str]:
    """One file of each kind of the index, relative to it."""
    m = IndexReader.open(index).manifest
    entry = m.shards[next(k for k in m.shards if k.endswith("/b"))]
    return {"part": entry.part, "errors": entry.errors, "lookup": entry.lookup,
            "vectors": entry.vectors, "faiss": m.segments[0].file, "model": "model.pt",
            "manifest": "manifest.json"}


# --- fault injection ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["part", "errors", "lookup", "vectors", "faiss", "model",
                                  "manifest"])
def test_flipped_bytes_are_named_never_answered_and_repaired(kind, clean, model, run_cli,
                                                            tmp_path):
    index = copy_index(clean, tmp_path / "index")
    rel = files_of_each_kind(index)[kind]
    flip(index / rel)

    checked = run_cli("check", index)
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert f"damaged: {rel}:" in checked.stderr, checked.stderr

    queried = run_cli("query", *[clean["root"] / "shards" / q for q in QUERIES], "--index",
                      index, "--top", "5", "--json")
    if queried.returncode == 0:  # the damaged file is not one a query reads
        assert [(Path(h["url"]).name, h["distance"])
                for h in map(json.loads, queried.stdout.splitlines())] == clean["hits"]
    else:
        assert_one_line_failure(queried, rel)

    repair = ["--model", model] if kind == "model" else []
    run_cli("check", index, "--repair", *repair, check=True)
    run_cli("build", "--shards", clean["root"] / "shards", "--index", index, "--model", model,
            check=True)
    assert "ok: " in run_cli("check", index, check=True).stdout
    assert hits(run_cli, index, clean["root"]) == clean["hits"]


# --- the twelve reproductions ---------------------------------------------------------------


def test_1_flipped_faiss_bytes_at_offset_77(clean, run_cli, tmp_path):
    index = copy_index(clean, tmp_path / "index")
    segment = files_of_each_kind(index)["faiss"]
    size = (index / segment).stat().st_size
    flip(index / segment, at=min(77, size - 16))  # the probe's offset, in this small file
    assert f"damaged: {segment}: checksum differs" in run_cli("check", index).stderr
    assert_one_line_failure(run_cli("query", clean["root"] / "shards/a/a0.jpg", "--index",
                                    index), segment, "checksum differs")


def test_2_a_name_that_is_not_utf8_is_one_scene_error(tmp_path, model, run_cli_process):
    shards = tmp_path / "r"
    save_scene(shards / "s/good.jpg", 1)
    save_scene(shards / "t/other.jpg", 2)
    bad = Path(os.fsdecode(os.fsencode(shards / "s") + b"/bad\xff.jpg"))
    shutil.copy(shards / "s/good.jpg", bad)
    odd_shard = Path(os.fsdecode(os.fsencode(shards) + b"/u\xfe"))
    odd_shard.mkdir()
    shutil.copy(shards / "s/good.jpg", odd_shard / "x.jpg")

    result = run_cli_process("build", "--shards", shards, "--index", tmp_path / "i",
                             "--model", model)
    assert result.returncode == 1 and "Traceback" not in result.stderr  # the odd shard
    said = messages(result.stderr)
    assert any("bad\\xff.jpg" in m and "not valid UTF-8" in m for m in said), said
    assert any("u\\xfe" in m and "not valid UTF-8" in m for m in said), said
    reader = IndexReader.open(tmp_path / "i")
    assert reader.row_count == 2  # good.jpg and other.jpg
    assert reader.errors()["url"].to_pylist() == [str(shards / "s") + "/bad\\xff.jpg"]
    again = run_cli_process("build", "--shards", shards, "--index", tmp_path / "i",
                            "--model", model)
    assert "indexed 0 scenes" in again.stdout  # the next build is not stopped either


def test_3_a_missing_part_is_repaired(clean, model, run_cli, tmp_path):
    index = copy_index(clean, tmp_path / "index")
    (index / files_of_each_kind(index)["part"]).unlink()
    assert_one_line_failure(run_cli("query", clean["root"] / "shards/a/a0.jpg", "--index",
                                    index, "--rerank", "none"), "is missing")
    repaired = run_cli("check", index, "--repair", check=True)
    assert "dropped 1 shard(s)" in repaired.stdout
    run_cli("build", "--shards", clean["root"] / "shards", "--index", index, "--model", model,
            check=True)
    assert hits(run_cli, index, clean["root"]) == clean["hits"]


def test_4_query_refuses_a_replaced_model_copy(clean, run_cli, tmp_path, other_checkpoint):
    index = copy_index(clean, tmp_path / "index")
    shutil.copy(other_checkpoint, index / "model.pt")
    assert_one_line_failure(run_cli("query", clean["root"] / "shards/a/a0.jpg", "--index",
                                    index), "model.pt")
    assert "damaged: model.pt" in run_cli("check", index).stderr
    assert_one_line_failure(run_cli("check", index, "--repair", "--model", other_checkpoint),
                            "not the model")


def test_5_and_8_the_service_caps_every_list_and_refuses_bad_row_ids(clean):
    from starlette.testclient import TestClient

    from dahash_index.query.scene_index import SceneIndex
    from dahash_index.serve.app import ServiceSettings, create_app

    index = SceneIndex.open(clean["index"])
    app = TestClient(create_app(index, ServiceSettings(max_images=4, max_answer_hits=10)))
    code = "00" * 8
    for body, status, needle in [
        ({"row_ids": [0] * 5}, 422, "above the limit of 4"),
        ({"codes": [code] * 5}, 422, "above the limit of 4"),
        ({"row_ids": [100000000000000000000]}, 422, "row id"),
        ({"row_ids": [-1]}, 422, "row id"),
        ({"row_ids": [2**63 - 1]}, 404, "not in this index"),
    ]:
        answer = app.post("/query", json=body)
        assert answer.status_code == status, (body, answer.text)
        assert needle in answer.json()["error"] and "\n" not in answer.json()["error"]
    answer = app.post("/query?top=5", json={"row_ids": [0, 1, 2]})
    assert answer.status_code == 413 and "10 hits" in answer.json()["error"]
    assert app.post("/query?top=3", json={"row_ids": [0, 1, 2]}).status_code == 200


def test_6_a_moved_archive_is_warned_about_and_pruned(clean, model, run_cli, tmp_path):
    arch1 = shutil.copytree(clean["root"] / "shards", tmp_path / "arch1")
    index = tmp_path / "i"
    run_cli("build", "--shards", arch1, "--index", index, "--model", model, check=True)
    arch2 = arch1.rename(tmp_path / "arch2")
    moved = run_cli("build", "--shards", arch2, "--index", index, "--model", model, check=True)
    assert IndexReader.open(index).row_count == 10  # the old rows still answer
    (arch2 / "b").rename(tmp_path / "b-elsewhere")
    thinned = run_cli("build", "--shards", arch2, "--index", index, "--model", model,
                      check=True)
    assert any(m.startswith("Warning: 1 shard(s) indexed from") and str(arch2 / "b") in m
               for m in messages(thinned.stderr)), thinned.stderr
    assert "no longer exist" not in moved.stderr  # nothing under arch2 was gone then
    pruned = run_cli("build", "--shards", arch2, "--index", index, "--model", model,
                     "--prune", check=True)
    assert "pruned 1 shard(s)" in pruned.stderr
    gone = run_cli("build", "--shards", arch1, "--index", index, "--model", model, "--prune",
                   check=True)  # arch1 no longer exists at all: all its shards go
    assert "pruned 2 shard(s)" in gone.stderr
    reader = IndexReader.open(index)
    assert sorted(reader.manifest.shards) == [str(arch2 / "a")] and reader.row_count == 3
    assert "ok: " in run_cli("check", index, check=True).stdout
    hit_names = [Path(u).name for u in reader.metadata(None, ["url"])["url"].to_pylist()]
    assert sorted(hit_names) == ["a0.jpg", "a1.png", "a2.jpg"]  # no doubled rows


def test_7_a_truncated_manifest_is_restored(clean, run_cli, tmp_path):
    index = copy_index(clean, tmp_path / "index")
    manifest = index / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:100])
    assert_one_line_failure(run_cli("info", index), "manifest.json", "check --repair")
    repaired = run_cli("check", index, "--repair", check=True)
    assert "restored manifest.json" in repaired.stdout
    assert hits(run_cli, index, clean["root"]) == clean["hits"]


def test_10_bands_beyond_a_jpegs_are_refused(tmp_path, model, run_cli):
    save_scene(tmp_path / "r/s/x.jpg", 1)
    failed = run_cli("build", "--shards", tmp_path / "r", "--index", tmp_path / "i", "--model",
                     model, "--bands", "5,6,7")
    assert_one_line_failure(failed, "x.jpg", "band")
    assert not (tmp_path / "i").exists()


def test_11_train_with_one_scene_a_class_names_the_reason(tmp_path, run_cli):
    for i, label in enumerate(("a", "b", "c")):
        save_scene(tmp_path / "data" / label / f"{label}0.jpg", i)
    failed = run_cli("train", "--data", tmp_path / "data", "--bits", "16", "--out",
                     tmp_path / "m.pt")
    assert_one_line_failure(failed, "1 scene file(s)", "at least 3")


def test_12_a_newline_in_a_name_stays_on_its_line(tmp_path, model, run_cli_process):
    save_scene(tmp_path / "r/s/two\nlines.jpg", 1)
    save_scene(tmp_path / "r/s/plain.jpg", 2)
    run_cli_process("build", "--shards", tmp_path / "r", "--index", tmp_path / "i", "--model",
                    model, "--label-from", "folder", check=True)
    out = run_cli_process("query", tmp_path / "r/s/plain.jpg", "--index", tmp_path / "i",
                          "--top", "2", check=True).stdout
    lines = [line for line in out.splitlines() if line.strip() and not line.startswith("#")]
    assert len([line for line in lines if "jpg" in line]) == 2, out
    assert any("/r/s/two\\nlines.jpg label=s" in line for line in lines), out


def test_gone_shards_are_the_missing_children_of_the_root():
    from dahash_index.build.stages import gone_shards

    committed = ["/a", "/a/s0", "/a/s1.tar", "/a/s1/deeper", "/ab/s0", "s3://b/a/s0"]
    assert gone_shards(committed, "/a", ["/a/s0"]) == ["/a", "/a/s1.tar"]
    assert gone_shards(committed, "s3://b/a", []) == ["s3://b/a/s0"]
