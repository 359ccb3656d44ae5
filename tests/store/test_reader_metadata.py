"""Tests for the lazy metadata reads of IndexReader (dahash_index/store/reader.py, parts.py).

``metadata(row_ids)`` reads only the lookup-file batches (or, in an index written before
lookup files, the Parquet row groups) that hold the rows asked for, yet returns exactly what
a read of the whole parts gives: the reference below is that full read
(``parts.read_part`` of every part, then a take), the reader's behaviour before it was lazy.
Parts are written with small row groups (``parts.ROW_GROUP_ROWS`` monkeypatched) so that a
few dozen rows span many of them; some parts keep one row group.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import rewrite_manifest

from dahash_index.files import sha256_file
from dahash_index.model.backbones import BackboneSpec
from dahash_index.model.checkpoint import load_checkpoint, save_checkpoint
from dahash_index.model.network import dahash_net
from dahash_index.store import IndexReader, IndexStoreError, IndexWriter, metadata_schema, parts
from dahash_index.store import reader as reader_module

# (shard, rows, row group size): several row groups, one row group, an empty shard, a shard
# whose size is a multiple of its row group size, a shard of one row.
SHARDS = [("s0", 23, 5), ("s1", 17, None), ("s2", 0, 4), ("s3", 12, 4), ("s4", 1, 3),
          ("s5", 30, 7)]
ALL_COLUMNS = metadata_schema(16).names


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    spec = BackboneSpec("tf2015", "0" * 64, (0.5,) * 3, (0.5,) * 3)
    save_checkpoint(path, dahash_net(bits=16), spec, ["a", "b"], 0, {})
    return path


def rows_of(shard: str, n: int) -> list[dict]:
    """n metadata rows with nulls in some nullable columns and a low-cardinality label."""
    return [
        {
            "url": f"s3://bucket/{shard}/scene-{i:04d}.tif",
            "shard": shard,
            "member": f"{i}.tif" if i % 3 == 0 else None,
            "width": 256 + i,
            "height": 200,
            "bands": 3,
            "dtype": "uint8",
            "label": None if i % 4 == 1 else f"class{i % 3}",
            "crs": "EPSG:32633" if i % 2 == 0 else None,
            "left": 500000.0 + i if i % 2 == 0 else None,
        }
        for i in range(n)
    ]


def commit(writer: IndexWriter, shard: str, n: int, group_rows: int | None,
           monkeypatch: pytest.MonkeyPatch) -> None:
    first = writer.manifest.next_row_id
    codes = (np.arange(first, first + n, dtype=">u2").view(np.uint8).reshape(n, 2))
    with monkeypatch.context() as m:
        if group_rows is not None:
            m.setattr(parts, "ROW_GROUP_ROWS", group_rows)
        writer.commit_shard(shard, f"s3://bucket/{shard}", codes, rows_of(shard, n), [])


def build(path: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    with IndexWriter.open(path, load_checkpoint(model).identity) as writer:
        for shard, n, group_rows in SHARDS:
            commit(writer, shard, n, group_rows, monkeypatch)
    return path


def drop_lookups(path: Path, every: int = 1) -> None:
    """Make the index one written before lookup files: its hits are read from the parts (of
    every ``every``-th shard, from the second on, when ``every`` > 1: shards of both kinds)."""
    def drop(manifest: dict) -> None:
        for i, entry in enumerate(manifest["shards"].values()):
            if every == 1 or i % every == 1:
                (path / entry.pop("lookup")).unlink()
                del entry["lookup_sha256"]

    rewrite_manifest(path, drop, sealed=False)


def reseal(index: Path, shard: str) -> None:
    """Record the part's present checksum in the manifest, as another writer committing it
    would: then only the reader's own checks on the part can tell."""
    rewrite_manifest(index, lambda m: m["shards"][shard].update(
        part_sha256=sha256_file(index / m["shards"][shard]["part"])))


@pytest.fixture(params=["lookup files", "parts only", "both"])
def index(request, tmp_path, model, monkeypatch) -> Path:
    """The index, read through its lookup files or (as one written before them) its parts, or
    some shards through each."""
    path = build(tmp_path / "index", model, monkeypatch)
    if request.param == "parts only":
        drop_lookups(path)
    if request.param == "both":
        drop_lookups(path, every=2)
    return path


@pytest.fixture
def parquet_index(tmp_path, model, monkeypatch) -> Path:
    """The index without lookup files: for the tests of the parts' row-group reads."""
    path = build(tmp_path / "index", model, monkeypatch)
    drop_lookups(path)
    return path


def full_read(reader: IndexReader, ids: np.ndarray, columns: list[str]) -> pa.Table:
    """The reference: every part read whole, the rows taken (the reader before it was lazy)."""
    manifest = reader.manifest
    tables = [parts.read_part(reader.path, manifest, key) for key in manifest.shards]
    table = pa.concat_tables(tables).select(columns)
    all_ids = table["row_id"].to_numpy() if "row_id" in columns else reader.row_ids()
    position = np.searchsorted(all_ids, np.maximum(ids, 0))
    relaxed = pa.schema([f.with_nullable(True) for f in table.schema])
    return table.cast(relaxed).take(pa.array(position, mask=ids < 0))


def assert_same(got: pa.Table, expected: pa.Table) -> None:
    assert got.schema.equals(expected.schema), (got.schema, expected.schema)
    assert got.equals(expected)


class ReadLog:
    """Records the row groups and columns the reader reads (wraps parts.read_row_groups)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, tuple[int, ...], tuple[str, ...]]] = []
        self.footers: list[str] = []
        real_read, real_footer = reader_module.read_row_groups, reader_module.read_footer

        def read_row_groups(footer, groups, columns, *args, **kwargs):
            self.calls.append((footer.rel, tuple(groups), tuple(columns)))
            return real_read(footer, groups, columns, *args, **kwargs)

        def read_footer(directory, manifest, shard):
            self.footers.append(shard)
            return real_footer(directory, manifest, shard)

        monkeypatch.setattr(reader_module, "read_row_groups", read_row_groups)
        monkeypatch.setattr(reader_module, "read_footer", read_footer)

    def groups(self) -> set[tuple[str, int]]:
        return {(rel, g) for rel, groups, _ in self.calls for g in groups}


def expected_groups(reader: IndexReader, ids: np.ndarray) -> set[tuple[str, int]]:
    """The (part, row group) pairs that hold ``ids``, from the files' own footers."""
    out = set()
    for entry in reader.manifest.shards.values():
        sizes = [g.num_rows for g in _row_groups(reader.path / entry.part)]
        starts = entry.first_row + np.concatenate([[0], np.cumsum(sizes)])
        for row in ids[(ids >= starts[0]) & (ids < starts[-1])]:
            out.add((entry.part, int(np.searchsorted(starts, row, side="right") - 1)))
    return out


def _row_groups(path: Path) -> list:
    metadata = pq.read_metadata(path)
    return [metadata.row_group(g) for g in range(metadata.num_row_groups)]


def test_parts_have_the_row_groups_asked_for(index):
    reader = IndexReader.open(index)
    counts = [len(_row_groups(index / e.part)) for e in reader.manifest.shards.values()]
    assert counts[0] == 5 and counts[1] == 1 and counts[3] == 3 and counts[5] == 5


@pytest.mark.parametrize("mmap", [False, True])
def test_random_lookups_equal_a_full_read(index, mmap):
    reader = IndexReader.open(index, mmap=mmap)
    live = reader.row_ids()
    rng = np.random.default_rng(0)
    subsets = [None, ["url"], ["row_id", "code", "label"], ["label", "url", "width"],
               ALL_COLUMNS]
    for trial in range(40):
        m = int(rng.integers(0, 30))
        ids = rng.choice(np.append(live, -1), size=m)  # duplicates and -1s included
        columns = subsets[trial % len(subsets)]
        expected_columns = columns or [c for c in ALL_COLUMNS if c != "code"]
        assert_same(reader.metadata(ids, columns), full_read(reader, ids, expected_columns))


def test_edge_inputs_equal_a_full_read(index):
    reader = IndexReader.open(index)
    columns = [c for c in ALL_COLUMNS if c != "code"]
    first, last = 0, reader.row_count - 1
    for ids in ([], [-1], [-1, -1], [first], [last], [last, first, last, -1, first],
                [4, 5, 5, 4], list(range(reader.row_count))[::-1]):
        ids = np.array(ids, dtype=np.int64)
        assert_same(reader.metadata(ids), full_read(reader, ids, columns))
    # Other integer dtypes are accepted as before.
    assert_same(reader.metadata(np.array([3, -1], dtype=np.int32)),
                full_read(reader, np.array([3, -1]), columns))


def test_all_rows_equal_a_full_read(index):
    reader = IndexReader.open(index)
    manifest = reader.manifest
    full = pa.concat_tables([parts.read_part(index, manifest, k) for k in manifest.shards])
    assert reader.metadata().equals(full.select([c for c in ALL_COLUMNS if c != "code"]))
    assert reader.metadata(columns=["code", "url"]).equals(full.select(["code", "url"]))
    np.testing.assert_array_equal(reader.row_ids(), full["row_id"].to_numpy())
    np.testing.assert_array_equal(reader.codes(), parts.codes_from_arrow(full["code"], 2))
    ids, codes = parts.read_codes(index, manifest, list(manifest.shards))
    np.testing.assert_array_equal(ids, reader.row_ids())
    np.testing.assert_array_equal(codes, reader.codes())


def test_refusals_are_unchanged(index, model, monkeypatch):
    reader = IndexReader.open(index)
    with pytest.raises(ValueError, match="row id 83 is not in this index"):
        reader.metadata(np.array([0, 83]))
    with pytest.raises(ValueError, match="row id -2 is not in this index"):
        reader.metadata(np.array([-2]))
    with pytest.raises(ValueError, match="integers of shape"):
        reader.metadata(np.array([0.5]))
    with pytest.raises(ValueError, match="unknown columns"):
        reader.metadata(np.array([0]), columns=["nope"])
    # Retired rows (their shard indexed again) are refused; the new ones are read.
    with IndexWriter.open(index, load_checkpoint(model).identity) as writer:
        with monkeypatch.context() as m:
            m.setattr(parts, "ROW_GROUP_ROWS", 2)
            codes = np.zeros((3, 2), dtype=np.uint8)
            writer.commit_shard("s0", "s3://bucket/s0", codes, rows_of("s0", 3), [],
                                replace=True)
    new = reader.reopen()
    with pytest.raises(ValueError, match="row id 0 is not in this index"):
        new.metadata(np.array([0]))
    got = new.metadata(np.array([84, 83, 85, 30]), ["row_id", "url"])
    assert got["row_id"].to_pylist() == [84, 83, 85, 30]
    assert got["url"].to_pylist()[:3] == [f"s3://bucket/s0/scene-{i:04d}.tif" for i in (1, 0, 2)]
    assert_same(got, full_read(new, np.array([84, 83, 85, 30]), ["row_id", "url"]))


def test_only_the_row_groups_holding_the_ids_are_read(parquet_index, monkeypatch):
    log = ReadLog(monkeypatch)
    reader = IndexReader.open(parquet_index)
    rng = np.random.default_rng(1)
    ids = rng.choice(reader.row_count, size=6, replace=False)
    ids = np.concatenate([ids, ids[:2], [-1]])
    reader.metadata(ids, ["url", "label"])
    assert log.groups() == expected_groups(reader, ids)
    assert len(log.calls) == len(log.groups())  # each group read once, duplicates or not
    assert {columns for _, _, columns in log.calls} == {("url", "label")}
    # Only the footers of the parts that hold the ids were read.
    holding = {rel for rel, _ in expected_groups(reader, ids)}
    keys = {e.part: k for k, e in reader.manifest.shards.items()}
    assert set(log.footers) == {keys[rel] for rel in holding}


def test_a_repeated_lookup_reads_nothing_and_reopen_keeps_footers(parquet_index, model,
                                                                  monkeypatch):
    log = ReadLog(monkeypatch)
    reader = IndexReader.open(parquet_index)
    ids = np.array([2, 30, 61, 62])
    first = reader.metadata(ids)
    calls, footers = len(log.calls), len(log.footers)
    assert reader.metadata(ids).equals(first)
    assert (len(log.calls), len(log.footers)) == (calls, footers)

    with IndexWriter.open(parquet_index, load_checkpoint(model).identity) as writer:
        commit(writer, "s6", 9, 4, monkeypatch)
    new = reader.reopen()
    assert new.metadata(ids).equals(first)
    assert len(log.calls) == calls  # the cached row groups are reused
    read_before, read_since = log.footers[:footers], log.footers[footers:]
    assert "s3://bucket/s6" in read_since  # the new shard's footer is read (at reopen or use)
    assert not set(read_before) & set(read_since)  # footers read already are reused
    assert new.metadata(np.array([83 + 8]))["url"].to_pylist() == [
        "s3://bucket/s6/scene-0008.tif"]
    assert len(log.footers) == len(set(log.footers))


def test_codes_and_row_ids_read_only_their_column(index, monkeypatch):
    log = ReadLog(monkeypatch)
    reader = IndexReader.open(index)
    reader.codes()
    reader.row_ids()
    assert {columns for _, _, columns in log.calls} == {("code",), ("row_id",)}


def test_cache_is_bounded(parquet_index, monkeypatch):
    monkeypatch.setattr(reader_module, "ROW_GROUP_CACHE_BYTES", 1)
    log = ReadLog(monkeypatch)
    reader = IndexReader.open(parquet_index)
    reader.metadata(np.array([2]))
    reader.metadata(np.array([2]))
    assert len(log.calls) == 2  # a budget smaller than a row group keeps nothing
    assert reader._cache.bytes == 0


def test_part_without_statistics_checks_ids_when_read(parquet_index, monkeypatch, tmp_path):
    """A part written without statistics (another writer) has its row ids checked on read, so
    a part swapped for another of the same size is still refused."""
    reader = IndexReader.open(parquet_index)
    manifest = reader.manifest
    entries = list(manifest.shards.values())
    s0, s5 = entries[0], entries[5]
    s0_url = next(iter(manifest.shards))
    table = pq.read_table(parquet_index / s0.part)
    pq.write_table(table, parquet_index / s0.part, row_group_size=5, write_statistics=False)
    reseal(parquet_index, s0_url)
    fresh = IndexReader.open(parquet_index)
    assert_same(fresh.metadata(np.array([7, 1, -1])),
                full_read(fresh, np.array([7, 1, -1]), [c for c in ALL_COLUMNS if c != "code"]))
    # Now a part of another shard's ids, same size, no statistics.
    swapped = table.set_column(0, table.schema.field("row_id"),
                               pa.array(np.arange(100, 123, dtype=np.int64)))
    pq.write_table(swapped, parquet_index / s0.part, row_group_size=5, write_statistics=False)
    reseal(parquet_index, s0_url)
    with pytest.raises(IndexStoreError, match="row ids are not 0..22"):
        IndexReader.open(parquet_index).metadata(np.array([7]))
    # With statistics, the footer alone shows it, when the part is first needed.
    pq.write_table(swapped, parquet_index / s0.part, row_group_size=5)
    reseal(parquet_index, s0_url)
    fresh = IndexReader.open(parquet_index)
    assert fresh.metadata(np.array([s5.first_row]), ["url"]).num_rows == 1
    with pytest.raises(IndexStoreError, match="row ids are not 0..22"):
        fresh.metadata(np.array([7]))


def test_damaged_footer_is_named(parquet_index):
    reader = IndexReader.open(parquet_index)
    rel = reader.manifest.shards["s3://bucket/s3"].part
    data = (parquet_index / rel).read_bytes()
    (parquet_index / rel).write_bytes(data[:-20])
    reseal(parquet_index, "s3://bucket/s3")
    fresh = IndexReader.open(parquet_index)
    fresh.metadata(np.array([0]))  # another part: still answered
    with pytest.raises(IndexStoreError, match=f"{rel} is unreadable"):
        fresh.metadata(np.array([41]))


def test_low_cardinality_strings_read_as_dictionaries_give_plain_strings(tmp_path, model,
                                                                          monkeypatch):
    with IndexWriter.open(tmp_path / "big", load_checkpoint(model).identity) as writer:
        commit(writer, "big", 3000, 1000, monkeypatch)
    drop_lookups(tmp_path / "big")
    reader = IndexReader.open(tmp_path / "big")
    ids = np.array([2999, 5, -1, 1500, 5])
    got = reader.metadata(ids)
    footer = reader._footer("s3://bucket/big")
    assert {"shard", "dtype", "label"} <= footer.compact_strings
    assert "url" not in footer.compact_strings
    assert got.schema.field("label").type == pa.string()
    assert_same(got, full_read(reader, ids, [c for c in ALL_COLUMNS if c != "code"]))
