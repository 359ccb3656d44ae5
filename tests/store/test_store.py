"""Tests for dahash_index/store/: commits and read-back, row ids, finalize (flat, IVF), crash
safety (simulated crash points and one real SIGKILL), damaged files, refusals; replacing and
dropping shards, check and repair, reopening, format-1 manifests, the writer lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import full_row, identity, rewrite_manifest, shard_codes, shard_errors, shard_rows

from dahash_index import files
from dahash_index.indexes import (
    add_codes,
    hamming_topk,
    is_mapped,
    new_index,
    nlist_of,
    write_index,
)
from dahash_index.indexes.binary import as_ivf
from dahash_index.model.backbones import sha256_file
from dahash_index.store import (
    ERRORS_SCHEMA,
    FORMAT,
    METADATA_SCHEMA,
    IndexReader,
    IndexStoreError,
    IndexWriter,
    ModelMismatchError,
    check_index,
    faiss_file,
    metadata_schema,
    quick_check,
    repair_index,
)
from dahash_index.store.blocks import BLOCK_BYTES
from dahash_index.store.manifest import ShardEntry


def url(shard: str) -> str:
    """The URL that identifies a shard in these tests."""
    return f"s3://bucket/{shard}"


def _commit(writer: IndexWriter, shard: str, n: int, n_errors: int = 0) -> range:
    first = writer.manifest.next_row_id
    return writer.commit_shard(
        shard,
        f"s3://bucket/{shard}",
        shard_codes(first, n),
        shard_rows(shard, n),
        shard_errors(shard, n_errors),
    )


def _files(directory: Path) -> set[str]:
    """The index's files, less the manifest history (manifests/), tested on its own."""
    found = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    return {name for name in found if not name.startswith("manifests/")}


def _referenced(manifest: dict) -> set[str]:
    names = {"manifest.json", "model.pt"}
    names |= {rel for e in manifest.shards.values() for _, rel in e.files()}
    names |= {segment.file for segment in manifest.index_segments}
    return names


@pytest.fixture
def index_dir(tmp_path) -> Path:
    return tmp_path / "index"


def test_schemas():
    schema = metadata_schema(64)
    assert schema.names[:2] == ["row_id", "code"]
    assert schema.field("code").type == pa.binary(8)
    assert schema.names[2:] == METADATA_SCHEMA.names
    assert ERRORS_SCHEMA.names == ["url", "shard", "member", "reason"]
    with pytest.raises(ValueError):
        metadata_schema(12)


def test_commit_shards_and_read_back(index_dir, ckpts):
    with IndexWriter.open(index_dir, identity(ckpts["a"]), extra={"bands": (3, 2, 1)}) as w:
        assert _commit(w, "s0", 3) == range(0, 3)
        # A shard whose every scene failed still commits, with its errors.
        assert _commit(w, "s1", 0, n_errors=2) == range(3, 3)
        table = pa.Table.from_pylist(shard_rows("s2", 5), schema=METADATA_SCHEMA)
        ids = w.commit_shard("s2", "s3://bucket/s2", shard_codes(3, 5), table, [])
        assert ids == range(3, 8)
        assert w.is_committed(url("s1")) and not w.is_committed(url("s3"))
        assert not w.is_committed("s1")  # a shard is known by its URL, not its name

    r = IndexReader.open(index_dir)
    m = r.manifest
    assert (m.format, m.bits, m.kind, m.nlist) == (FORMAT, 16, "flat", None)
    assert m.row_count == m.next_row_id == r.row_count == 8
    assert m.generation == 3 and list(m.shards) == [url("s0"), url("s1"), url("s2")]
    errors_file = index_dir / "errors/000002.parquet"
    assert m.shards[url("s1")] == ShardEntry(
        name="s1",
        fingerprint=None,
        part="parts/000002.parquet",
        errors="errors/000002.parquet",
        part_sha256=sha256_file(index_dir / "parts/000002.parquet"),
        errors_sha256=sha256_file(errors_file),
        lookup="lookup/000002.arrow",
        lookup_sha256=sha256_file(index_dir / "lookup/000002.arrow"),
        lookup_batches=[],  # no rows: no batch
        block_bytes=BLOCK_BYTES,
        digests="digests/000002.bin",
        digests_sha256=sha256_file(index_dir / "digests/000002.bin"),
        first_row=3,
        rows=0,
        error_count=2,
    )
    assert m.extra == {"bands": [3, 2, 1]}
    assert m.backbone == "tf2015" and m.backbone_sha256 == "0" * 64
    assert r.model_sha256 == sha256_file(ckpts["a"]) == sha256_file(r.model_path)
    r.check_model(ckpts["a"])

    meta = r.metadata()
    assert "code" not in meta.column_names
    assert meta["row_id"].to_pylist() == list(range(8))
    expected = [full_row(row) for row in shard_rows("s0", 3) + shard_rows("s2", 5)]
    assert meta.drop_columns(["row_id"]).to_pylist() == expected
    np.testing.assert_array_equal(r.codes(), shard_codes(0, 8))
    assert r.codes().dtype == np.uint8 and r.codes().shape == (8, 2)

    # Lookups in the order asked, -1 giving a null row, codes only when asked.
    some = r.metadata(np.array([5, -1, 0, 5]), columns=["row_id", "url", "code"])
    assert some["row_id"].to_pylist() == [5, None, 0, 5]
    assert some["url"].to_pylist() == ["s3://bucket/s2/2.tif", None, "s3://bucket/s0/0.tif"] + [
        "s3://bucket/s2/2.tif"
    ]
    assert some["code"].to_pylist()[0] == shard_codes(5, 1).tobytes()
    assert r.metadata(np.array([-1, -1]))["url"].to_pylist() == [None, None]
    assert r.metadata(np.array([], dtype=np.int64)).num_rows == 0
    with pytest.raises(ValueError, match="row id 8 is not in this index"):
        r.metadata(np.array([8]))

    errors = r.errors()
    assert errors.schema.equals(ERRORS_SCHEMA)
    assert errors["url"].to_pylist() == ["s3://bucket/s1/bad0.tif", "s3://bucket/s1/bad1.tif"]
    assert errors["member"].to_pylist() == [None, None]


def test_reader_sees_only_its_committed_state(index_dir, ckpts):
    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    _commit(w, "s0", 4)
    r = IndexReader.open(index_dir)
    _commit(w, "s1", 3)
    assert r.row_count == 4 and len(r.metadata()) == 4 and r.faiss_index().ntotal == 4
    assert IndexReader.open(index_dir).row_count == 7


def test_finalize_flat_then_commit_more(index_dir, ckpts):
    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    _commit(w, "s0", 6)
    _commit(w, "s1", 4)
    w.finalize()
    m = w.manifest
    assert m.index_file == "index.faiss" and m.index_shards == [url("s0"), url("s1")]
    (segment,) = m.index_segments
    assert (segment.file, segment.ranges) == ("index.faiss/000003-0000.faiss", [[0, 6], [6, 4]])
    assert segment.sha256 == files.sha256_file(index_dir / segment.file)
    assert (index_dir / "index.faiss/000003-0000.faiss").is_file()
    w.finalize()  # nothing new: no new generation
    assert w.manifest.generation == 3

    index = IndexReader.open(index_dir).faiss_index()
    assert index.ntotal == 10
    d, ids = hamming_topk(index, shard_codes(0, 10), 1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(10))
    np.testing.assert_array_equal(d[:, 0], 0)

    # The new shard is not in the FAISS file: readers add it in memory, mmap or not.
    _commit(w, "s2", 5)
    for mmap in (False, True):
        index = IndexReader.open(index_dir, mmap=mmap).faiss_index()
        assert index.ntotal == 15
        d, ids = hamming_topk(index, shard_codes(0, 15), 1)
        np.testing.assert_array_equal(ids[:, 0], np.arange(15))

    w.finalize()  # the small last segment is rewritten with the new shard
    assert [s.file for s in w.manifest.index_segments] == ["index.faiss/000005-0000.faiss"]
    assert not (index_dir / "index.faiss/000003-0000.faiss").exists()
    index = IndexReader.open(index_dir, mmap=True).faiss_index()
    assert index.ntotal == 15 and is_mapped(index)


def test_segments_kept_added_and_rewritten(index_dir, ckpts, monkeypatch):
    # Segments of at most 8 rows of 2 bytes: finalize writes several, keeps full ones, and
    # rewrites only a segment that lost rows (a replaced shard) or a small last one.
    monkeypatch.setattr(faiss_file, "SEGMENT_BYTES", 16)
    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    for i in range(4):
        _commit(w, f"s{i}", 4)  # rows 0..15
    w.finalize()
    first = w.manifest.index_segments
    assert [s.ranges for s in first] == [[[0, 4], [4, 4]], [[8, 4], [12, 4]]]
    _commit(w, "s4", 3)  # rows 16..18
    w.finalize()
    second = w.manifest.index_segments
    assert second[:2] == first and second[2].ranges == [[16, 3]]
    w.commit_shard("s1", url("s1"), shard_codes(19, 2), shard_rows("s1", 2), [], replace=True)
    r = IndexReader.open(index_dir, mmap=True)  # the segment holding s1 drops its rows
    d, ids = hamming_topk(r.faiss_index(), shard_codes(0, 21), 1)
    np.testing.assert_array_equal(ids[:, 0][np.r_[0:4, 8:21]], np.r_[0:4, 8:21])
    assert not set(ids[4:8, 0]) & {4, 5, 6, 7}
    w.finalize()
    third = w.manifest.index_segments
    assert third[0] == first[1]  # intact: kept
    assert [s.ranges for s in third[1:]] == [[[0, 4], [16, 3]], [[19, 2]]]
    files = {p.name for p in (index_dir / "index.faiss").iterdir()}
    assert files == {Path(s.file).name for s in third}
    assert check_index(index_dir).ok
    index = IndexReader.open(index_dir, mmap=True).faiss_index()
    assert len(index.parts) == 3 and is_mapped(index)
    d, ids = hamming_topk(index, shard_codes(0, 21), 1)
    live = np.r_[0:4, 8:21]
    np.testing.assert_array_equal(ids[live, 0], live)


def test_index_file_from_before_segments_is_read_then_replaced(index_dir, ckpts):
    # A format-2 manifest of the one-file store: index_file names one IDMap file of every row.
    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    _commit(w, "s0", 3)
    _commit(w, "s1", 2)
    w.close()
    old = new_index(16)
    add_codes(old, shard_codes(0, 5), np.arange(5))
    files.atomic_write(index_dir / "index-3.faiss", lambda f: write_index(old, f))
    def before_segments(m: dict) -> None:
        del m["index_segments"]
        m.update(index_file="index-3.faiss", index_shards=[url("s0"), url("s1")], generation=3)

    rewrite_manifest(index_dir, before_segments, sealed=False)
    for mmap in (False, True):
        r = IndexReader.open(index_dir, mmap=mmap)
        (segment,) = r.manifest.index_segments
        assert (segment.file, segment.ranges) == ("index-3.faiss", [[0, 3], [3, 2]])
        index = r.faiss_index()
        assert is_mapped(index) == mmap
        np.testing.assert_array_equal(hamming_topk(index, shard_codes(0, 5), 1)[1][:, 0],
                                      np.arange(5))
    assert check_index(index_dir).ok
    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    w.finalize()  # rewritten as a segment; the old file deleted once committed
    assert [s.file for s in w.manifest.index_segments] == ["index.faiss/000004-0000.faiss"]
    assert not (index_dir / "index-3.faiss").exists()
    assert IndexReader.open(index_dir).faiss_index().ntotal == 5


def test_faiss_file_replaced_under_an_open_reader(index_dir, ckpts):
    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    _commit(w, "s0", 5)
    w.finalize()
    r = IndexReader.open(index_dir)
    _commit(w, "s1", 2)
    w.finalize()  # deletes the file r's manifest names: r rebuilds from the parts
    d, ids = hamming_topk(r.faiss_index(), shard_codes(0, 5), 1)
    assert r.faiss_index().ntotal == 5
    np.testing.assert_array_equal(ids[:, 0], np.arange(5))


def _ivf_commit(writer: IndexWriter, shard: str, n: int, seed: int) -> np.ndarray:
    codes = np.random.default_rng(seed).integers(0, 256, (n, 8), dtype=np.uint8)
    writer.commit_shard(shard, url(shard), codes, shard_rows(shard, n), [])
    return codes


def _centroids(index) -> np.ndarray:
    """The IVF centroids of a reader's index (every IVF segment shares them)."""
    found = {faiss.vector_to_array(faiss.downcast_IndexBinary(as_ivf(p.index).quantizer).xb)
             .tobytes() for p in index.parts}
    assert len(found) == 1
    return np.frombuffer(found.pop(), dtype=np.uint8)


def test_finalize_ivf_matches_flat(index_dir, ckpts):
    w = IndexWriter.open(index_dir, identity(ckpts["wide"]), kind="ivf", nlist=8)
    codes = np.vstack([_ivf_commit(w, "s0", 1200, 0), _ivf_commit(w, "s1", 800, 1)])
    w.finalize(ivf_train_sample=1000)
    ivf = IndexReader.open(index_dir).faiss_index()
    assert nlist_of(ivf) == 8 and ivf.ntotal == 2000

    flat = new_index(64)
    add_codes(flat, codes, np.arange(2000))
    queries = np.random.default_rng(9).integers(0, 256, (10, 8), dtype=np.uint8)
    queries[:3] = codes[[0, 1500, 1999]]
    got = hamming_topk(ivf, queries, 1, nprobe=8)
    want = hamming_topk(flat, queries, 1)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[1][:3, 0], [0, 1500, 1999])

    # A later finalize reuses the trained index and only adds the new shard.
    _ivf_commit(w, "s2", 50, 2)
    w.finalize()
    again = IndexReader.open(index_dir, mmap=True).faiss_index()
    assert again.ntotal == 2050
    np.testing.assert_array_equal(_centroids(again), _centroids(ivf))
    assert w.manifest.nlist == 8


def test_ivf_with_too_few_codes(index_dir, ckpts):
    w = IndexWriter.open(index_dir, identity(ckpts["wide"]), kind="ivf", nlist=8)
    codes = _ivf_commit(w, "s0", 100, 0)  # an IVF of 8 lists trains on 39 * 8 = 312 codes
    w.finalize()  # writes nothing: until there are enough codes, they are searched exactly
    assert w.manifest.index_file is None and not list(index_dir.glob("index-*"))
    index = IndexReader.open(index_dir).faiss_index()
    assert nlist_of(index) is None and index.ntotal == 100
    np.testing.assert_array_equal(hamming_topk(index, codes[:5], 1)[1][:, 0], np.arange(5))

    _ivf_commit(w, "s1", 300, 1)  # 400 codes: enough to train
    w.finalize()
    index = IndexReader.open(index_dir).faiss_index()
    assert nlist_of(index) == 8 and index.ntotal == 400


class Crash(Exception):
    """Stands for the process dying at this point."""


@pytest.mark.parametrize("crash_at", ["parts/", "errors/", "lookup/", "manifest.json"])
def test_crash_mid_commit_leaves_last_commit(index_dir, ckpts, monkeypatch, crash_at):
    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    _commit(w, "s0", 3)
    _commit(w, "s1", 2, n_errors=1)
    before = w.manifest

    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).relative_to(index_dir).as_posix().startswith(crash_at):
            raise Crash
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(Crash):
        _commit(w, "s2", 4, n_errors=1)
    monkeypatch.undo()
    w.close()
    if crash_at != "parts/":  # a failed write removes its .tmp; earlier renames stay behind
        assert _files(index_dir) - _referenced(before)

    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    assert w.manifest == before and not w.is_committed(url("s2"))
    assert _files(index_dir) == _referenced(before)  # leftovers cleaned
    assert _commit(w, "s2", 4, n_errors=1) == range(5, 9)
    _commit(w, "s3", 1)
    r = IndexReader.open(index_dir)
    assert r.metadata()["row_id"].to_pylist() == list(range(10))
    np.testing.assert_array_equal(r.codes(), shard_codes(0, 10))
    assert len(r.errors()) == 2


def test_crash_mid_finalize(index_dir, ckpts, monkeypatch):
    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    _commit(w, "s0", 3)
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == "manifest.json":
            raise Crash
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(Crash):
        w.finalize()
    monkeypatch.undo()
    w.close()
    segment = index_dir / "index.faiss" / "000002-0000.faiss"
    assert segment.is_file()  # written, never committed

    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    assert w.manifest.index_file is None and w.manifest.index_segments == []
    assert IndexReader.open(index_dir).faiss_index().ntotal == 3
    (index_dir / "index.faiss" / "000001-0000.faiss").write_bytes(b"left over")
    w.finalize()  # deletes what no manifest references
    m = IndexReader.open(index_dir).manifest
    assert [s.file for s in m.index_segments] == ["index.faiss/000002-0000.faiss"]
    assert _files(index_dir) == _referenced(m)


_CHILD = """
import os, signal, sys
sys.path[:0] = [{tests!r}, {here!r}]
from helpers import identity
from test_store import _commit
from dahash_index.store import IndexWriter

real_replace = os.replace

def replace(src, dst):
    real_replace(src, dst)
    if os.fspath(dst).endswith("parts/000003.parquet"):  # the third shard's part is in place
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
writer = IndexWriter.open({index!r}, identity({ckpt!r}))
for i in range(6):
    _commit(writer, f"s{{i}}", 2 + i, n_errors=i % 2)
"""


def test_real_sigkill_mid_commit(index_dir, ckpts):
    code = _CHILD.format(
        tests=str(Path(__file__).parents[1]),
        here=str(Path(__file__).parent), index=str(index_dir), ckpt=str(ckpts["a"])
    )
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    assert (index_dir / "parts" / "000003.parquet").is_file()  # renamed, never committed

    r = IndexReader.open(index_dir)
    assert list(r.manifest.shards) == [url("s0"), url("s1")]
    assert len(r.metadata()) == r.row_count == 2 + 3

    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    assert _files(index_dir) == _referenced(w.manifest)
    for i in range(6):
        if not w.is_committed(url(f"s{i}")):
            _commit(w, f"s{i}", 2 + i, n_errors=i % 2)
    w.finalize()

    r = IndexReader.open(index_dir)
    meta = r.metadata()
    total = sum(2 + i for i in range(6))
    assert r.row_count == total and meta["row_id"].to_pylist() == list(range(total))
    assert len(set(meta["url"].to_pylist())) == total  # no scene twice
    np.testing.assert_array_equal(r.codes(), shard_codes(0, total))
    assert r.faiss_index().ntotal == total and len(r.errors()) == 3


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_part_is_named(index_dir, ckpts, damage):
    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    _commit(w, "s0", 3)
    _commit(w, "s1", 3)
    w.close()
    part = index_dir / "parts" / "000002.parquet"
    if damage == "truncate":
        part.write_bytes(part.read_bytes()[:100])
        r = IndexReader.open(index_dir)
        for read in (r.metadata, r.codes, r.faiss_index):
            with pytest.raises(IndexStoreError, match="parts/000002.parquet"):
                read()
    else:
        part.unlink()
        with pytest.raises(IndexStoreError, match="parts/000002.parquet is missing"):
            IndexReader.open(index_dir)
        with pytest.raises(IndexStoreError, match="parts/000002.parquet is missing"):
            IndexWriter.open(index_dir, identity(ckpts["a"]))


def test_manifest_and_part_disagreeing(index_dir, ckpts):
    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    _commit(w, "s0", 3)
    _commit(w, "s1", 3)
    w.close()
    # A part swapped for another shard's: the right size, the wrong row ids.
    (index_dir / "parts" / "000002.parquet").write_bytes(
        (index_dir / "parts" / "000001.parquet").read_bytes()
    )
    with pytest.raises(IndexStoreError, match="parts/000002.parquet: checksum differs"):
        IndexReader.open(index_dir).metadata()
    # Recorded as the commit's own checksum, only the row-id comparison still sees it.
    rewrite_manifest(index_dir, lambda m: m["shards"][url("s1")].update(
        part_sha256=sha256_file(index_dir / "parts" / "000002.parquet")))
    with pytest.raises(IndexStoreError, match="row ids"):
        IndexReader.open(index_dir).metadata()

    rewrite_manifest(index_dir, lambda m: m.update(row_count=7))
    with pytest.raises(IndexStoreError, match="row_count"):
        IndexReader.open(index_dir)
    (index_dir / "manifest.json").write_text("{not json")
    with pytest.raises(IndexStoreError, match="manifest.json is unreadable"):
        IndexReader.open(index_dir)


def test_refusals(tmp_path, index_dir, ckpts):
    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    _commit(w, "s0", 2)
    with pytest.raises(IndexStoreError, match="another build is writing to this index; let it"):
        IndexWriter.open(index_dir, identity(ckpts["a"]))
    with pytest.raises(IndexStoreError, match="already committed"):
        _commit(w, "s0", 2)
    w.close()
    with pytest.raises(IndexStoreError, match="closed"):
        _commit(w, "s1", 2)

    with pytest.raises(ModelMismatchError) as info:
        IndexWriter.open(index_dir, identity(ckpts["b"]))
    a, b = sha256_file(ckpts["a"])[:12], sha256_file(ckpts["b"])[:12]
    assert str(info.value) == (
        f"index {index_dir} was built with model {a} (backbone tf2015); {ckpts['b']} is {b}"
    )
    with pytest.raises(ModelMismatchError, match=b):
        IndexReader.open(index_dir).check_model(ckpts["b"])
    with pytest.raises(IndexStoreError, match="kind is 'flat', not 'ivf'"):
        IndexWriter.open(index_dir, identity(ckpts["a"]), kind="ivf")
    with pytest.raises(IndexStoreError, match="built with"):
        IndexWriter.open(index_dir, identity(ckpts["a"]), extra={"bands": [1, 2, 3]})
    IndexWriter.open(index_dir, identity(ckpts["a"])).close()  # the refusals released the lock

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(IndexStoreError, match="not a dahash index"):
        IndexWriter.open(foreign, identity(ckpts["a"]))
    assert os.listdir(foreign) == ["holiday.jpg"]
    with pytest.raises(IndexStoreError, match=r"missing: not a dahash index \(no manifest.json\)"):
        IndexReader.open(tmp_path / "missing")

    empty = tmp_path / "empty"
    empty.mkdir()
    IndexWriter.open(empty, identity(ckpts["a"])).close()  # an empty directory is fine to create in
    assert sorted(os.listdir(empty)) == ["digests", "errors", "lookup", "manifest.json",
                                        "manifests", "model.pt", "parts", "vectors"]
    assert not [p for p in os.listdir(tmp_path) if ".creating-" in p]


def test_bad_shard_input(index_dir, ckpts):
    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    rows = shard_rows("s0", 2)
    with pytest.raises(ValueError, match="uint8"):
        w.commit_shard("s0", url("s0"), shard_codes(0, 2).astype(np.int64), rows, [])
    with pytest.raises(ValueError, match="2 codes but 1 rows"):
        w.commit_shard("s0", url("s0"), shard_codes(0, 2), rows[:1], [])
    with pytest.raises(ValueError, match=r"unknown columns \['lable'\]"):
        w.commit_shard("s0", url("s0"), shard_codes(0, 2), [{**rows[0], "lable": "x"}, rows[1]], [])
    with pytest.raises(ValueError, match=r"missing required columns \['width', 'height'"):
        w.commit_shard(
            "s0", url("s0"), shard_codes(0, 1), pa.table({"url": ["u"], "shard": ["s0"]}), []
        )
    with pytest.raises(ValueError, match="another shard"):
        w.commit_shard("s0", url("s0"), shard_codes(0, 2), shard_rows("s9", 2), [])
    with pytest.raises(ValueError, match=r"required columns \['reason'\]"):
        w.commit_shard("s0", url("s0"), shard_codes(0, 2), rows, [{"url": "u", "shard": "s0"}])
    assert w.manifest.row_count == 0 and _files(index_dir) == _referenced(w.manifest)


def test_part_file_is_plain_parquet(index_dir, ckpts):
    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    _commit(w, "s0", 3)
    table = pq.read_table(index_dir / "parts" / "000001.parquet")
    # the part's columns, then its footprints for GIS tools (rows 0 and 2 are georeferenced)
    assert table.schema.remove_metadata().equals(
        metadata_schema(16).append(pa.field("geometry", pa.binary())))
    assert [g is None for g in table["geometry"].to_pylist()] == [False, True, False]
    assert table["code"].to_pylist() == [c.tobytes() for c in shard_codes(0, 3)]


def test_corrupt_faiss_file_is_named(index_dir, ckpts):
    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    _commit(w, "s0", 3)
    w.finalize()
    (index_dir / "index.faiss/000002-0000.faiss").write_bytes(b"IBxM" + b"\0" * 10)
    with pytest.raises(IndexStoreError, match="index.faiss/000002-0000.faiss: checksum differs"):
        IndexReader.open(index_dir).faiss_index()


# --- shard identity: replacing, dropping, checking, reopening ---------------------------------


def test_replacing_a_shard_retires_its_rows_in_the_same_commit(index_dir, ckpts):
    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    _commit(w, "s0", 3)
    _commit(w, "s1", 2)
    w.finalize()  # the FAISS file holds rows 0..4
    with pytest.raises(IndexStoreError, match="already committed"):
        _commit(w, "s0", 4)
    old = IndexReader.open(index_dir)
    ids = w.commit_shard("s0", url("s0"), shard_codes(5, 4), shard_rows("s0", 4), [],
                         fingerprint="v2", replace=True)
    assert ids == range(5, 9)
    m = w.manifest
    assert list(m.shards) == [url("s1"), url("s0")] and m.row_count == 6
    assert m.next_row_id == 9 and m.index_retired == [[0, 3]]
    assert m.shards[url("s0")].fingerprint == "v2"

    r = IndexReader.open(index_dir)
    np.testing.assert_array_equal(r.row_ids(), [3, 4, 5, 6, 7, 8])
    index = r.faiss_index()  # the file minus the retired rows, plus the new shard
    assert index.ntotal == 6
    d, found = hamming_topk(index, shard_codes(0, 9), 1)
    np.testing.assert_array_equal(found[3:, 0], np.arange(3, 9))
    assert not set(found[:3, 0]) & {0, 1, 2}
    with pytest.raises(ValueError, match="row id 1 is not in this index"):
        r.metadata(np.array([1]))
    assert r.metadata(np.array([6]))["url"].to_pylist() == ["s3://bucket/s0/1.tif"]
    assert old.row_count == 5 and old.metadata(np.array([1])).num_rows == 1  # its own state

    w.finalize()
    assert w.manifest.index_retired == []
    assert IndexReader.open(index_dir).faiss_index().ntotal == 6
    assert check_index(index_dir).ok


def test_drop_shards_and_repair(index_dir, ckpts):
    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    for i in range(3):
        _commit(w, f"s{i}", 2)
    w.finalize()
    w.close()
    report = check_index(index_dir)
    # each shard's part, errors, lookup and digests files; the model and the FAISS file
    assert report.ok and report.rows == 6 and report.files == 3 * 4 + 2

    m = IndexReader.open(index_dir).manifest
    part = index_dir / m.shards[url("s1")].part
    data = bytearray(part.read_bytes())
    data[8] ^= 0xFF  # one flipped byte in the first column chunk: the footer still reads
    part.write_bytes(bytes(data))
    assert quick_check(index_dir).ok  # only footers and row counts
    report = check_index(index_dir)
    assert [(d.file, d.shard) for d in report.damage] == [(m.shards[url("s1")].part,
                                                           url("s1"))]
    assert "checksum differs" in str(report.damage[0])
    segment = m.index_segments[0].file
    (index_dir / segment).write_bytes(b"garbage")
    report = check_index(index_dir)
    assert {d.file for d in report.damage} == {m.shards[url("s1")].part, segment}

    assert repair_index(report) == [url("s1")]
    r = IndexReader.open(index_dir)
    assert list(r.manifest.shards) == [url("s0"), url("s2")]  # segments rebuilt at once
    np.testing.assert_array_equal(r.row_ids(), [0, 1, 4, 5])
    assert r.faiss_index().ntotal == 4 and check_index(index_dir).ok


def test_reopen_adds_only_new_shards(index_dir, ckpts):
    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    _commit(w, "s0", 4)
    r = IndexReader.open(index_dir)
    first = r.faiss_index()
    assert r.reopen() is r  # nothing new
    _commit(w, "s1", 3)
    r2 = r.reopen()
    assert r2 is not r and r2.generation == r.generation + 1 and r2.row_count == 7
    index = r2.faiss_index()
    assert index is not first and first.ntotal == 4 and index.ntotal == 7  # old state intact
    d, found = hamming_topk(index, shard_codes(0, 7), 1)
    np.testing.assert_array_equal(found[:, 0], np.arange(7))


def test_format_1_manifest_is_read(index_dir, ckpts):
    w = IndexWriter.open(index_dir, identity(ckpts["a"]))
    _commit(w, "s0", 2)
    w.finalize()
    w.close()
    def format_1(m: dict) -> None:
        entry = m["shards"].pop(url("s0"))
        for key in ("name", "fingerprint", "part_sha256", "errors_sha256"):
            del entry[key]
        m["shards"]["s0"] = {**entry, "source": url("s0")}
        m["index_shards"] = ["s0"]
        m["format"] = "dahash-index/1"
        del m["index_retired"]

    rewrite_manifest(index_dir, format_1, sealed=False)
    r = IndexReader.open(index_dir)
    assert list(r.manifest.shards) == [url("s0")] and r.faiss_index().ntotal == 2
    assert r.manifest.shards[url("s0")].fingerprint is None  # indexed again when seen
    assert check_index(index_dir).ok


def test_lock_wait(index_dir, ckpts):
    import threading
    import time

    holder = IndexWriter.open(index_dir, identity(ckpts["a"]))
    start = time.monotonic()
    with pytest.raises(IndexStoreError, match=r"\(waited 0.5 s\)"):
        IndexWriter.open(index_dir, identity(ckpts["a"]), wait=0.5)
    assert time.monotonic() - start >= 0.5
    threading.Timer(0.3, holder.close).start()
    IndexWriter.open(index_dir, identity(ckpts["a"]), wait=10).close()


def test_parameters_bind_only_once_rows_are_committed(index_dir, ckpts):
    w = IndexWriter.open(index_dir, identity(ckpts["a"]), kind="ivf", nlist=4,
                         extra={"bands": [5, 6, 7]})
    _commit(w, "s0", 0, n_errors=2)  # every scene failed: no row
    w.close()
    # flat, other bands
    w = IndexWriter.open(index_dir, identity(ckpts["a"]), extra={"bands": None})
    _commit(w, "s1", 2)
    m = w.manifest
    assert (m.kind, m.nlist, m.extra) == ("flat", None, {"bands": None})
    w.close()
    with pytest.raises(IndexStoreError, match="kind is 'flat', not 'ivf'"):
        IndexWriter.open(index_dir, identity(ckpts["a"]), kind="ivf")
