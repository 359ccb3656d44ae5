"""Tests for the shards' lookup files (dahash_index/store/lookup.py) and their use by the store:
written in each commit, read for hits, verified by check_index, cleaned up as leftovers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from helpers import identity, rewrite_manifest

from dahash_index.files import atomic_write, sha256_file
from dahash_index.store import (
    METADATA_SCHEMA,
    IndexReader,
    IndexStoreError,
    IndexWriter,
    check_index,
    quick_check,
    repair_index,
)
from dahash_index.store import lookup as lookup_module
from dahash_index.store import reader as reader_module
from dahash_index.store.lookup import LOOKUP_BATCH_ROWS, LZ4_BATCH_ROWS, LookupFile, write_lookup


def rows(n: int, shard: str = "s") -> pa.Table:
    return pa.Table.from_pylist(
        [{"url": f"s3://b/{shard}/{i}.tif", "shard": shard, "member": None if i % 2 else f"m{i}",
          "width": i, "height": 2, "bands": 3, "dtype": "uint8",
          "left": float(i) if i % 3 else None} for i in range(n)],
        schema=METADATA_SCHEMA,
    )


def write(path: Path, table: pa.Table, batch_rows: int = LOOKUP_BATCH_ROWS) -> None:
    atomic_write(path, lambda f: write_lookup(table, f, batch_rows))


@pytest.mark.parametrize("take_rows", [1 << 16, 8])  # 8: one batch a take, as a file's large
def test_rows_at_batch_edges_round_trip(tmp_path, monkeypatch, take_rows):
    monkeypatch.setattr(lookup_module, "_TAKE_ROWS", take_rows)
    size = 8
    n = 2 * size + 3
    table = rows(n)
    write(tmp_path / "x.arrow", table, batch_rows=size)
    lookup = LookupFile(tmp_path, "x.arrow", n)
    assert lookup.batch_rows == size
    wanted = np.array([0, 1, size - 1, size, size, 2 * size, n - 1])
    assert lookup.take(wanted).equals(table.take(pa.array(wanted)))
    assert lookup.take(np.array([n - 1])).equals(table.slice(n - 1))  # the short last batch
    assert lookup.read_all().equals(table)
    assert lookup.take(np.empty(0, np.int64)).num_rows == 0


def test_a_file_is_one_uncompressed_batch_per_million_rows(tmp_path):
    write(tmp_path / "x.arrow", rows(10))
    reader = pa.ipc.open_file(tmp_path / "x.arrow")
    assert reader.num_record_batches == 1
    assert reader.schema.metadata == {b"dahash_index:batch_rows": b"1048576"}
    assert LookupFile(tmp_path, "x.arrow", 10).take(np.array([3]))["width"].to_pylist() == [3]


def test_empty_shard(tmp_path):
    write(tmp_path / "x.arrow", rows(0))
    assert LookupFile(tmp_path, "x.arrow", 0).read_all().num_rows == 0


def test_refusals_name_the_file(tmp_path):
    write(tmp_path / "x.arrow", rows(10))
    with pytest.raises(IndexStoreError, match=r"x.arrow holds 1 batches, manifest.json says "
                                              rf"{LOOKUP_BATCH_ROWS + 1} rows"):
        LookupFile(tmp_path, "x.arrow", LOOKUP_BATCH_ROWS + 1)
    with pytest.raises(IndexStoreError, match="x.arrow batch 0 holds 10 rows, not 9"):
        LookupFile(tmp_path, "x.arrow", 9).take(np.array([0]))
    with pytest.raises(IndexStoreError, match="gone.arrow is missing"):
        LookupFile(tmp_path, "gone.arrow", 1)
    (tmp_path / "bad.arrow").write_bytes(b"not arrow")
    with pytest.raises(IndexStoreError, match="bad.arrow is unreadable"):
        LookupFile(tmp_path, "bad.arrow", 1)
    other = pa.table({"url": ["a"]})
    atomic_write(tmp_path / "other.arrow", lambda f: pa.ipc.new_file(f, other.schema).close())
    with pytest.raises(IndexStoreError, match="other.arrow does not have the expected columns"):
        LookupFile(tmp_path, "other.arrow", 0)


@pytest.fixture
def index(tmp_path, ckpts) -> Path:
    path = tmp_path / "index"
    with IndexWriter.open(path, identity(ckpts["a"])) as writer:
        for s, n in (("s0", 300), ("s1", 0), ("s2", 40)):
            codes = np.zeros((n, 2), dtype=np.uint8)
            writer.commit_shard(s, f"s3://b/{s}", codes, rows(n, s), [])
    return path


def test_hits_are_read_from_lookup_files_only(index, monkeypatch):
    def no_parquet(*args, **kwargs):
        raise AssertionError("a part was read")

    monkeypatch.setattr(reader_module, "read_row_groups", no_parquet)
    monkeypatch.setattr(reader_module, "read_footer", no_parquet)
    reader = IndexReader.open(index)
    got = reader.metadata(np.array([339, 0, -1, 299, 300, 0]), ["row_id", "url", "left"])
    assert got["row_id"].to_pylist() == [339, 0, None, 299, 300, 0]
    assert got["url"].to_pylist() == ["s3://b/s2/39.tif", "s3://b/s0/0.tif", None,
                                      "s3://b/s0/299.tif", "s3://b/s2/0.tif", "s3://b/s0/0.tif"]
    assert got["left"].to_pylist() == [None, None, None, 299.0, None, None]


def test_a_replaced_shard_is_read_from_its_new_lookup_file(index, ckpts):
    reader = IndexReader.open(index)
    assert reader.metadata(np.array([300]), ["url"])["url"].to_pylist() == ["s3://b/s2/0.tif"]
    with IndexWriter.open(index, identity(ckpts["a"])) as writer:
        table = rows(2, "s2").set_column(0, "url", pa.array(["new0", "new1"]))
        writer.commit_shard("s2", "s3://b/s2", np.ones((2, 2), np.uint8), table, [],
                            replace=True)
    new = reader.reopen()
    assert new.metadata(np.array([341, 0]), ["url"])["url"].to_pylist() == [
        "new1", "s3://b/s0/0.tif"]


def _entry(index: Path, shard: str) -> dict:
    return json.loads((index / "manifest.json").read_text())["shards"][f"s3://b/{shard}"]


def test_check_finds_a_damaged_or_wrong_lookup_file_and_repair_drops_its_shard(index):
    assert check_index(index).ok
    rel = _entry(index, "s2")["lookup"]
    data = (index / rel).read_bytes()
    (index / rel).write_bytes(data[:-30])  # a truncated footer
    assert [d.file for d in quick_check(index).damage] == [rel]
    report = check_index(index)
    assert [(d.file, d.shard) for d in report.damage] == [(rel, "s3://b/s2")]
    assert "checksum differs" in report.damage[0].reason

    # Intact, checksum recorded, but not the part's rows: only the comparison sees it.
    write(index / rel, rows(40, "s2").set_column(0, "url", pa.array(["x"] * 40)))
    rewrite_manifest(index, lambda m: m["shards"]["s3://b/s2"].update(
        lookup_sha256=sha256_file(index / rel)))
    report = check_index(index)
    assert [str(d) for d in report.damage] == [f"{rel}: differs from the shard's part "
                                               "(shard s3://b/s2)"]
    assert repair_index(report) == ["s3://b/s2"]
    assert check_index(index).ok


def test_leftover_lookup_files_are_removed(index, ckpts):
    stray = index / "lookup" / "999999.arrow"
    write(stray, rows(1))
    (index / "lookup" / "000009.arrow.tmp").write_bytes(b"half")
    IndexWriter.open(index, identity(ckpts["a"])).close()
    assert sorted(p.name for p in (index / "lookup").iterdir()) == [
        "000001.arrow", "000002.arrow", "000003.arrow"]


def test_batch_size_is_what_the_file_says(tmp_path):
    """A file says its batch size; one that says none is an LZ4 file of 256-row batches (as
    lookup files were written before), read all the same."""
    write(tmp_path / "x.arrow", rows(10), batch_rows=4)
    assert LookupFile(tmp_path, "x.arrow", 10).take(np.array([9]))["width"].to_pylist() == [9]
    n = LZ4_BATCH_ROWS + 5
    table = rows(n)
    options = pa.ipc.IpcWriteOptions(compression="lz4")
    with pa.ipc.new_file(tmp_path / "old.arrow", METADATA_SCHEMA, options=options) as writer:
        for batch in table.to_batches(max_chunksize=LZ4_BATCH_ROWS):
            writer.write_batch(batch)
    old = LookupFile(tmp_path, "old.arrow", n)
    assert old.batch_rows == LZ4_BATCH_ROWS
    wanted = np.array([2, LZ4_BATCH_ROWS, n - 1])
    assert old.take(wanted).equals(table.take(pa.array(wanted)))
    with pytest.raises(IndexStoreError, match="holds 2 batches"):
        LookupFile(tmp_path, "old.arrow", n + LZ4_BATCH_ROWS)
