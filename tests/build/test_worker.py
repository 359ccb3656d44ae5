"""The build's stages without processes, and adoption of staged shard results by the committer."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import full_row, identity, shard_codes, shard_errors, shard_rows
from PIL import Image

from dahash_index.build.decode_pool import DecodePool, decode_for_index
from dahash_index.build.engines import get_runner
from dahash_index.build.indexer import BuildReport, _adopt_leftovers
from dahash_index.build.job import BuildEvents, BuildJob, BuildOptions
from dahash_index.build.shard_stream import index_shard, stream_shards
from dahash_index.build.stages import (
    ShardResult,
    ShardTask,
    plan_shards,
)
from dahash_index.build.worker import skipped_line
from dahash_index.model.network_input import network_input, upload
from dahash_index.sources.shards import SceneBytes, SceneError, Shard, ShardReadError
from dahash_index.sources.windows import SkippedChip
from dahash_index.store import IndexReader, IndexWriter, ModelMismatchError, ShardEntry
from dahash_index.store.staging import list_results, read_rows, write_result


class FakeEncoder:
    """Codes a scene by the mean value of its network input, so that tests can predict them."""

    bits = 16
    device = torch.device("cpu")
    precision = "fp32"
    rerank_dim = None  # a model without re-rank vectors

    def __init__(self) -> None:
        self.batches: list[int] = []

    def encode(self, images: list) -> np.ndarray:
        self.batches.append(len(images))
        inputs = network_input(upload(images, self.device))
        level = (inputs.mean(dim=(1, 2, 3)) * 1000).round().to(torch.int64).numpy()
        return np.stack([level % 256, level // 256 % 256], axis=1).astype(np.uint8)

    def encode_batches(self, batches):  # as SceneEncoder's: a batch of no images is a marker
        for tag, images in batches:
            yield tag, self.encode(images) if images else np.zeros((0, 2), np.uint8), None


def _png(value: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 12), (value, value, value)).save(out, format="PNG")
    return out.getvalue()


def _scene(name: str, data: bytes) -> SceneBytes:
    return SceneBytes(url=f"/s/a/{name}", shard="a", member=None, data=data, label="a")


DECODE = partial(decode_for_index, bands=None, max_pixels=10**8)


# --- stages -----------------------------------------------------------------------------------


def test_index_shard_encodes_in_batches_and_keeps_every_error_in_order():
    scenes = [_scene(f"{i}.png", _png(10 * i)) for i in range(5)]
    scenes.insert(2, SceneError(url="/s/a/gone.png", shard="a", member=None, reason="EOF"))
    scenes.insert(4, _scene("bad.png", b"not an image"))
    encoder = FakeEncoder()
    seen: list[dict] = []
    batches: list[int] = []
    result = index_shard(scenes, DECODE, encoder, 2, seen.append, batches.append)

    assert encoder.batches == [2, 2, 1] == batches
    assert [r["url"] for r in result.rows] == [f"/s/a/{i}.png" for i in range(5)]
    assert (result.rows[0]["width"], result.rows[0]["height"], result.rows[0]["bands"]) == (
        16, 12, 3)
    expected = FakeEncoder().encode([
        decode_for_index(s, None, 10**8)[1] for s in scenes if isinstance(s, SceneBytes)
        and s.member is None and s.url != "/s/a/bad.png"])
    np.testing.assert_array_equal(result.codes, expected)
    assert [e["url"] for e in result.errors] == ["/s/a/gone.png", "/s/a/bad.png"]
    assert result.errors[0] == {"url": "/s/a/gone.png", "shard": "a", "member": None,
                                "reason": "EOF"}
    assert set(result.errors[1]) == {"url", "shard", "member", "reason"}
    assert seen == result.errors
    assert skipped_line(result.errors[0]) == "skipped /s/a/gone.png: EOF"


def test_a_shard_of_errors_only_has_no_codes():
    result = index_shard([_scene("bad.png", b"x")], DECODE, FakeEncoder(), 4)
    assert result.codes.shape == (0, 2) and result.codes.dtype == np.uint8
    assert result.rows == [] and len(result.errors) == 1


def test_a_shard_of_nothing_has_no_codes():
    result = index_shard([], DECODE, FakeEncoder(), 3)
    assert result.codes.shape == (0, 2) and result.rows == [] and result.errors == []


def _task(name: str) -> ShardTask:
    return ShardTask(Shard(name, f"/s/{name}", "dir"), "fp", False)


def _shard_scenes(name: str, values: list[int], fail_after: int | None = None):
    """The scenes of shard ``name`` (PNGs of those grey values); the storage fails after
    ``fail_after`` of them."""
    for i, v in enumerate(values):
        if i == fail_after:
            raise ShardReadError(f"shard /s/{name}: connection lost")
        yield SceneBytes(url=f"/s/{name}/{v}.png", shard=name, member=None, data=_png(v),
                         label=name)


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_shards_gives_each_shard_alone_in_order(workers):
    """Batches never mix shards; a shard the storage fails on part way gives its reason and
    the stream goes on; errors, skipped chips and empty shards each land in their shard."""
    tasks = [_task(n) for n in "abcdef"]
    reads = {
        "a": lambda: _shard_scenes("a", [10, 20, 30]),
        "b": lambda: iter([SceneError("/s/b/x.tar", "b", "m", "bad member"),
                           *_shard_scenes("b", [40]),
                           SceneBytes(url="/s/b/bad.png", shard="b", member=None, data=b"nope",
                                      label="b"),
                           SkippedChip("/s/b/big.tif", (0, 0, 8, 8))]),
        "c": lambda: _shard_scenes("c", [50, 60, 70], fail_after=2),
        "d": lambda: iter([]),
        "e": lambda: _shard_scenes("e", [80], fail_after=0),
        "f": lambda: _shard_scenes("f", [90, 100, 110, 120, 130]),
    }
    encoder, errors, encoded = FakeEncoder(), [], []
    pool = DecodePool(workers)
    try:
        out = list(stream_shards(tasks, lambda t: reads[t.shard.name](), DECODE, pool, encoder,
                                 2, errors.append, encoded.append))
    finally:
        pool.shutdown()
    assert [task.shard.name for task, _ in out] == list("abcdef")
    results = {task.shard.name: result for task, result in out}
    assert results["c"] == "shard /s/c: connection lost"
    assert results["e"] == "shard /s/e: connection lost"
    for name, values in (("a", [10, 20, 30]), ("b", [40]), ("d", []),
                         ("f", [90, 100, 110, 120, 130])):
        result = results[name]
        assert [r["url"] for r in result.rows] == [f"/s/{name}/{v}.png" for v in values]
        expected = FakeEncoder().encode([np.full((12, 16, 3), v, np.uint8) for v in values]
                                        ) if values else np.zeros((0, 2), np.uint8)
        np.testing.assert_array_equal(result.codes, expected)
    assert [e["url"] for e in results["b"].errors] == ["/s/b/x.tar", "/s/b/bad.png"]
    assert results["b"].chips_skipped == 1 and results["a"].errors == []
    assert errors == results["b"].errors
    # a: 2 + 1, b: 1, c: 2 (encoded, then dropped with the shard), f: 2 + 2 + 1
    assert encoder.batches == [2, 1, 1, 2, 2, 2, 1] == encoded


def test_index_shard_raises_when_the_storage_fails():
    with pytest.raises(ShardReadError, match="connection lost"):
        index_shard(_shard_scenes("c", [1, 2], fail_after=1), DECODE, FakeEncoder(), 4)


class FakeReader:
    def __init__(self, prints: dict[str, str]) -> None:
        self.prints = prints

    def fingerprint(self, shard: Shard) -> str:
        from dahash_index.sources.shards import ShardReadError

        if self.prints[shard.name] == "unreachable":
            raise ShardReadError(f"shard {shard.url}: endpoint unreachable")
        return self.prints[shard.name]


class FakeWriter:
    def __init__(self, entries: dict[str, dict]) -> None:
        self.entries = {url: ShardEntry(url, part="p", errors="e", first_row=0, **e)
                        for url, e in entries.items()}

    def entry(self, url: str) -> ShardEntry | None:
        return self.entries.get(url)


def test_plan_shards_decides_what_to_index():
    shards = [Shard(name, f"/s/{name}", "dir") for name in "abcdef"]
    committed = {"fingerprint": "f1", "rows": 3, "error_count": 0}
    writer = FakeWriter({
        "/s/b": committed,                                   # unchanged: skipped
        "/s/c": {**committed, "fingerprint": "old"},         # changed: again
        "/s/d": {**committed, "rows": 0, "error_count": 2},  # nothing but errors: again
        "/s/e": {**committed, "error_count": 1},             # some errors: only when asked
    })
    reader = FakeReader({"a": "f1", "b": "f1", "c": "f1", "d": "f1", "e": "f1",
                         "f": "unreachable"})
    warnings: list[str] = []
    tasks, skipped, failed = plan_shards(reader, writer, shards, False, warnings.append)
    assert [(t.shard.name, t.replace) for t in tasks] == [("a", False), ("c", True),
                                                          ("d", True)]
    assert skipped == 2 and failed == ["shard /s/f: endpoint unreachable"]
    assert len(warnings) == 2 and "changed since it was indexed" in warnings[0]
    tasks, skipped, _ = plan_shards(reader, writer, shards, True, warnings.append)
    assert [t.shard.name for t in tasks] == ["a", "c", "d", "e"] and skipped == 1


def test_get_runner_names_the_engines():
    assert type(get_runner("local")).__name__ == "LocalRunner"
    with pytest.raises(ValueError, match="engine must be one of local, ray"):
        get_runner("spark")


# --- staging and adoption ---------------------------------------------------------------------


def _stage(writer: IndexWriter, shard: str, n: int, model=None, fingerprint: str = "fp"):
    first = 1000  # staged results carry no row ids: any codes will do
    task = ShardTask(Shard(shard, f"s3://bucket/{shard}", "dir"), fingerprint, False)
    result = ShardResult(shard_codes(first, n), shard_rows(shard, n), shard_errors(shard, 1))
    return write_result(writer.staging, model or writer_model(writer), task.shard.name,
                        task.shard.url, task.fingerprint, result.codes, result.rows,
                        result.errors)


def writer_model(writer: IndexWriter):
    from dahash_index.model.identity import ModelIdentity

    return ModelIdentity.of_manifest(writer.manifest)


def test_adoption_assigns_row_ids_and_removes_the_result(tmp_path, ckpts):
    with IndexWriter.open(tmp_path / "I", identity(ckpts["a"])) as writer:
        staged = [_stage(writer, "s0", 3), _stage(writer, "s1", 2)]
        assert [r.shard_url for r in list_results(writer.staging)] == [
            "s3://bucket/s0", "s3://bucket/s1"]
        # adopted in another order than staged: row ids follow adoption
        assert writer.adopt(staged[1]) == range(0, 2)
        assert writer.adopt(staged[0]) == range(2, 5)
        assert list_results(writer.staging) == []
        assert not any(writer.staging.iterdir())
        writer.finalize()
    reader = IndexReader.open(tmp_path / "I")
    assert reader.row_ids().tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(reader.codes(), np.concatenate(
        [shard_codes(1000, 2), shard_codes(1000, 3)]))
    assert reader.metadata().to_pylist()[2] | {"row_id": None} == (
        {"row_id": None} | full_row(shard_rows("s0", 3)[0]))
    assert reader.errors().num_rows == 2
    assert reader.manifest.shards["s3://bucket/s0"].fingerprint == "fp"


def test_adopting_a_changed_shard_replaces_its_rows(tmp_path, ckpts):
    with IndexWriter.open(tmp_path / "I", identity(ckpts["a"])) as writer:
        writer.adopt(_stage(writer, "s0", 3))
        writer.adopt(_stage(writer, "s0", 2, fingerprint="fp2"))
        m = writer.manifest
    assert m.row_count == 2 and m.shards["s3://bucket/s0"].first_row == 3


def test_a_result_of_another_model_is_refused(tmp_path, ckpts):
    with IndexWriter.open(tmp_path / "I", identity(ckpts["a"])) as writer:
        other = _stage(writer, "s0", 3, model=identity(ckpts["b"]))
        with pytest.raises(ModelMismatchError, match="was encoded with model .* not adopted"):
            writer.adopt(other)
        wide = write_result(writer.staging, identity(ckpts["wide"]), "s1", "s3://bucket/s1",
                            None, np.zeros((1, 8), np.uint8), shard_rows("s1", 1), [])
        with pytest.raises(ModelMismatchError, match=r"\(64 bits\)"):
            writer.adopt(wide)
        assert writer.manifest.row_count == 0
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        write_result(tmp_path, identity(ckpts["a"]), "s", "u", None,
                     np.zeros((1, 8), np.uint8), shard_rows("s", 1), [])


def test_leftovers_of_an_interrupted_build_are_adopted_or_dropped(tmp_path, ckpts):
    ident = identity(ckpts["a"])
    with IndexWriter.open(tmp_path / "I", ident) as writer:
        _stage(writer, "s0", 3)                               # still wanted: adopted
        _stage(writer, "s1", 2, fingerprint="old")            # its shard changed: dropped
        _stage(writer, "s2", 2, model=identity(ckpts["b"]))   # another model: refused
        tasks = [ShardTask(Shard(s, f"s3://bucket/{s}", "dir"), "fp", False)
                 for s in ("s0", "s1", "s2", "s3")]
        warnings: list[str] = []
        report = BuildReport()
        left = _adopt_leftovers(writer, tasks, report, warnings.append)
        assert [t.shard.name for t in left] == ["s1", "s2", "s3"]
        assert (report.shards_indexed, report.scenes, report.errors) == (1, 3, 1)
        assert len(warnings) == 1 and "not adopted" in warnings[0]
        assert list_results(writer.staging) == []
        assert list(writer.manifest.shards) == ["s3://bucket/s0"]


_KILLED_WORKER = """
import os, signal, sys
sys.path[:0] = [{tests!r}, {here!r}]
from helpers import identity
from test_worker import _stage
from dahash_index.store import IndexWriter

real_rename = os.rename
results = []
def rename(src, dst):
    second = str(dst).endswith(".result") and len(results) == 1
    if {when!r} == "before-rename" and second:
        os.kill(os.getpid(), signal.SIGKILL)   # the result's files are written, not yet moved
    real_rename(src, dst)
    if {when!r} == "before-adopt" and second:
        os.kill(os.getpid(), signal.SIGKILL)   # staged whole, never adopted
    if str(dst).endswith(".result"):
        results.append(dst)
os.rename = rename
writer = IndexWriter.open({index!r}, identity({ckpt!r}))
writer.adopt(_stage(writer, "s0", 2))
_stage(writer, "s1", 3)
"""


@pytest.mark.parametrize("when", ["before-rename", "before-adopt"])
def test_a_kill_between_writing_and_adopting_leaves_nothing_visible(tmp_path, ckpts, when):
    index = tmp_path / "I"
    script = _KILLED_WORKER.format(tests=str(Path(__file__).parents[1]),
                                   here=str(Path(__file__).parent), when=when,
                                   index=str(index), ckpt=str(ckpts["a"]))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    reader = IndexReader.open(index)
    assert list(reader.manifest.shards) == ["s3://bucket/s0"] and reader.row_count == 2
    leftovers = sorted(p.name.split("-")[0] for p in (index / "staging").iterdir())
    with IndexWriter.open(index, identity(ckpts["a"])) as writer:
        results = list_results(writer.staging)
        if when == "before-rename":
            assert leftovers == [".tmp"] and results == []  # invisible, and now gone
            assert not any(writer.staging.iterdir())
        else:
            assert [r.shard_url for r in results] == ["s3://bucket/s1"]
            codes, rows, errors = read_rows(results[0])
            assert codes.shape == (3, 2) and rows.num_rows == 3 and errors.num_rows == 1
            assert writer.adopt(results[0]) == range(2, 5)
    assert os.path.isdir(index / "staging")


def test_the_local_runner_stages_every_shard(tmp_path, quick_checkpoint):
    """The local engine through the runner interface: scenes of two shards, one bad file."""
    from dahash_index.model.checkpoint import load_checkpoint
    from dahash_index.sources.shards import ShardReader

    root = tmp_path / "shards"
    for shard, values in (("a", (10, 200)), ("b", (90,))):
        (root / shard).mkdir(parents=True)
        for v in values:
            (root / shard / f"{v}.png").write_bytes(_png(v))
    (root / "b" / "broken.png").write_bytes(b"nope")
    checkpoint = load_checkpoint(quick_checkpoint)
    job = BuildJob(BuildOptions(workers=0, max_pixels=10**8), checkpoint, ShardReader(str(root)),
                   tmp_path / "staging")
    tasks = [ShardTask(Shard(s, str(root / s), "dir"), "fp", False) for s in ("a", "b")]
    staged, progress = [], []
    events = BuildEvents(lambda task, result: staged.append((task.shard.name, result)),
                         lambda task, line: pytest.fail(line),
                         lambda n, e: progress.append((n, e)))
    get_runner("local").run(job, tasks, events)
    assert [(name, r.rows, r.error_count) for name, r in staged] == [("a", 2, 0), ("b", 1, 1)]
    assert sum(n for n, _ in progress) == 3 and sum(e for _, e in progress) == 1
    codes, rows, _ = read_rows(staged[0][1])
    assert codes.shape == (2, 8) and rows["url"].to_pylist()[0].endswith("a/10.png")
    assert staged[0][1].model_sha256 == checkpoint.sha256
