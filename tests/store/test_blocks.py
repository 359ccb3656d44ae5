"""Checksums by block (dahash_index/store/blocks.py): recorded at commit for the lookup and
vectors files, verified by readers for just the bytes a query reads."""

from __future__ import annotations

import hashlib
import json
import mmap

import numpy as np
import pyarrow as pa
import pytest
from helpers import identity

from dahash_index.files import sha256_file
from dahash_index.store import METADATA_SCHEMA, IndexReader, IndexStoreError, IndexWriter
from dahash_index.store import blocks as blocks_module
from dahash_index.store import reader as reader_module
from dahash_index.store.blocks import BlockChecks, file_digests, read_digests, write_digests
from dahash_index.store.check import check_index, repair_index
from dahash_index.store.manifest import Manifest, write_manifest
from dahash_index.store.vectors import decode_vectors, quantize_vectors

BLOCK = 64  # small blocks, so that a small index spans many


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(blocks_module, "BLOCK_BYTES", BLOCK)


def flip(path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_digests_of_each_block_and_of_the_whole(tmp_path, small_blocks):
    data = bytes(range(160))  # two blocks and a half
    (tmp_path / "f").write_bytes(data)
    whole, digests = file_digests(tmp_path / "f")
    assert whole == sha256_file(tmp_path / "f")
    assert digests == b"".join(hashlib.sha256(data[i:i + BLOCK]).digest()[:16]
                               for i in (0, 64, 128))


def test_only_the_blocks_read_are_verified(tmp_path, small_blocks):
    (tmp_path / "f").write_bytes(bytes(range(160)))
    _, digests = file_digests(tmp_path / "f")
    flip(tmp_path / "f", 70)  # block 1
    checks = BlockChecks(tmp_path, "f", digests, BLOCK)
    checks.verify_range(0, 64)
    checks.verify_bytes(np.array([130]), np.array([159]))
    with pytest.raises(IndexStoreError, match=r"f: checksum differs from the one recorded at "
                                              r"commit; `dahash-index check --repair"):
        checks.verify_bytes(np.array([60]), np.array([66]))  # a span over blocks 0 and 1
    with pytest.raises(IndexStoreError, match="checksum differs"):
        checks.verify(np.array([3]))  # past the end: a damaged structure pointed there
    (tmp_path / "g").write_bytes(bytes(100))
    with pytest.raises(IndexStoreError, match="g: checksum differs"):
        BlockChecks(tmp_path, "g", digests, BLOCK)  # a file of another length


def test_the_blocks_to_verify_are_read_ahead_together(tmp_path):
    page = mmap.PAGESIZE
    (tmp_path / "f").write_bytes(bytes(8 * page + 10))  # 9 blocks of a page, the last short
    _, digests = file_digests(tmp_path / "f", page)
    checks = BlockChecks(tmp_path, "f", digests, page)
    asked = []

    class Mapping:  # records madvise; the hashing still reads the real mapping
        def madvise(self, option, start, length):
            asked.append((option, start, length))

    real, checks._data._mmap = checks._data._mmap, Mapping()
    checks.verify(np.array([8, 0, 2, 1, 5, 2, 7]))
    checks._data._mmap = real
    # one request per run of adjacent blocks, the last clipped to the file's end
    assert asked == [(mmap.MADV_WILLNEED, 0, 3 * page), (mmap.MADV_WILLNEED, 5 * page, page),
                     (mmap.MADV_WILLNEED, 7 * page, page + 10)]
    asked.clear()
    checks._data._mmap = Mapping()
    checks.verify(np.array([0, 3]))  # block 0 is verified: one block left, nothing to ask
    assert asked == [] and checks._verified[[0, 1, 2, 3, 5, 7, 8]].all()


def test_many_blocks_are_hashed_on_several_threads_and_a_bad_one_found(tmp_path, small_blocks,
                                                                       monkeypatch):
    monkeypatch.setattr(blocks_module, "HASH_THREADS", 3)
    (tmp_path / "f").write_bytes(bytes(range(256)) * 10)  # 40 blocks
    _, digests = file_digests(tmp_path / "f")
    checks = BlockChecks(tmp_path, "f", digests, BLOCK)
    checks.verify(np.arange(0, 40, 2))  # 20 blocks: 3 threads
    assert checks._verified.sum() == 20
    flip(tmp_path / "f", 37 * BLOCK + 5)
    checks = BlockChecks(tmp_path, "f", digests, BLOCK)
    with pytest.raises(IndexStoreError, match="f: checksum differs"):
        checks.verify(np.arange(40))
    assert not checks._verified.any()  # nothing of a failed read counts as verified


VECTORS = np.arange(40 * 4, dtype=np.float32).reshape(40, 4)


def read_back(row: int) -> list[list[float]]:
    """Row ``row`` of VECTORS as a reader gives it: stored as int8, back at unit length."""
    return decode_vectors(quantize_vectors(VECTORS[row:row + 1])).tolist()


@pytest.fixture
def index(tmp_path, ckpts, small_blocks):
    path = tmp_path / "index"
    rows = pa.Table.from_pylist(
        [{"url": f"s3://b/{i:04d}.tif", "shard": "s", "width": i, "height": 2, "bands": 3,
          "dtype": "uint8"} for i in range(40)], schema=METADATA_SCHEMA)
    with IndexWriter.open(path, identity(ckpts["a"])) as writer:
        writer.commit_shard("s", "s3://b/s", np.zeros((40, 2), np.uint8), rows, [],
                            vectors=VECTORS)
    return path


def test_digests_without_a_block_size_are_of_1_mib_blocks(tmp_path):
    # entries committed before block_bytes was recorded digested 1 MiB blocks, kept as hex in
    # the manifest
    data = np.random.default_rng(0).integers(0, 256, 3 << 19, dtype=np.uint8).tobytes()
    (tmp_path / "f").write_bytes(data)  # 1.5 MiB
    legacy = file_digests(tmp_path / "f", 1 << 20)[1].hex()
    assert len(legacy) == 2 * 32
    BlockChecks(tmp_path, "f", legacy).verify(np.array([0, 1]))
    _, digests = file_digests(tmp_path / "f")  # the writer's blocks: smaller
    assert len(digests) == 16 * -(-len(data) // blocks_module.BLOCK_BYTES) > len(legacy) // 2
    with pytest.raises(IndexStoreError, match="checksum differs"):
        BlockChecks(tmp_path, "f", digests)  # read as 1 MiB blocks: the count differs
    with pytest.raises(IndexStoreError, match="f: checksum differs"):
        BlockChecks(tmp_path, "f", "not hex" * 9, 1 << 20)


def test_the_block_digests_are_in_the_shards_digests_file(index):
    entry = IndexReader.open(index).manifest.shards["s3://b/s"]
    assert entry.block_bytes == BLOCK and entry.lookup_blocks is entry.vectors_blocks is None
    assert entry.digests == "digests/000001.bin"
    assert entry.digests_sha256 == sha256_file(index / entry.digests)
    lookup, vectors = read_digests(index, entry.digests, entry.digests_sha256)
    assert lookup == file_digests(index / entry.lookup, BLOCK)[1]
    assert vectors == file_digests(index / entry.vectors, BLOCK)[1]


def test_a_digests_file_is_checked_whole_and_for_its_structure(tmp_path):
    with open(tmp_path / "d.bin", "wb") as f:
        write_digests(f, b"a" * 32, b"b" * 16)
    sha = sha256_file(tmp_path / "d.bin")
    assert read_digests(tmp_path, "d.bin", sha) == (b"a" * 32, b"b" * 16)
    flip(tmp_path / "d.bin", 30)
    with pytest.raises(IndexStoreError, match=r"d.bin: checksum differs"):
        read_digests(tmp_path, "d.bin", sha)
    (tmp_path / "d.bin").write_bytes(b"DHDIGES1" + bytes(16) + b"x")  # one byte too many
    with pytest.raises(IndexStoreError, match=r"d.bin is not a digests file of this format"):
        read_digests(tmp_path, "d.bin", None)
    with pytest.raises(IndexStoreError, match=r"e.bin is missing"):
        read_digests(tmp_path, "e.bin", None)


def test_an_entry_with_its_digests_in_the_manifest_still_reads(index):
    # entries committed before digests files kept their block digests in the manifest, as hex
    manifest = json.loads((index / "manifest.json").read_text())
    entry = manifest["shards"]["s3://b/s"]
    lookup, vectors = read_digests(index, entry.pop("digests"), entry.pop("digests_sha256"))
    entry["lookup_blocks"], entry["vectors_blocks"] = lookup.hex(), vectors.hex()
    write_manifest(index, Manifest.from_json(manifest))
    (index / "digests/000001.bin").unlink()
    reader = IndexReader.open(index)
    assert reader.metadata(np.array([3]), ["url"])["url"].to_pylist() == ["s3://b/0003.tif"]
    assert reader.vectors(np.array([2])).tolist() == read_back(2)
    flip(index / entry["lookup"], (index / entry["lookup"]).read_bytes().index(b"0030.tif"))
    with pytest.raises(IndexStoreError, match="checksum differs"):
        IndexReader.open(index).metadata(np.array([30]), ["url"])


def test_a_reader_verifies_blocks_not_whole_files(index, monkeypatch):
    def whole(*args):
        raise AssertionError("a whole file was hashed")

    monkeypatch.setattr(reader_module, "verify_checksum", whole)
    reader = IndexReader.open(index)
    assert reader.metadata(np.array([39, 3]), ["url", "width"]).to_pylist() == [
        {"url": "s3://b/0039.tif", "width": 39}, {"url": "s3://b/0003.tif", "width": 3}]
    assert reader.vectors(np.array([2])).tolist() == read_back(2)


def test_a_flipped_byte_is_refused_where_it_is_read_and_only_there(index):
    entry = IndexReader.open(index).manifest.shards["s3://b/s"]
    lookup = index / entry.lookup
    at = lookup.read_bytes().index(b"s3://b/0030.tif")
    flip(lookup, at + 8)
    vectors = index / entry.vectors
    flip(vectors, 128 + 30 * 4)  # row 30's first int8
    reader = IndexReader.open(index)
    assert reader.metadata(np.array([1]), ["url"])["url"].to_pylist() == ["s3://b/0001.tif"]
    assert reader.vectors(np.array([1])).tolist() == read_back(1)
    with pytest.raises(IndexStoreError, match=f"{entry.lookup}: checksum differs"):
        reader.metadata(np.array([30]), ["url"])
    with pytest.raises(IndexStoreError, match=f"{entry.vectors}: checksum differs"):
        reader.vectors(np.array([30]))


def test_check_finds_a_damaged_digests_file_and_repair_drops_its_shard(index, ckpts):
    entry = IndexReader.open(index).manifest.shards["s3://b/s"]
    flip(index / entry.digests, 40)
    with pytest.raises(IndexStoreError, match=f"{entry.digests}: checksum differs"):
        IndexReader.open(index).metadata(np.array([3]), ["url"])
    report = check_index(index)
    assert [(d.file, d.shard) for d in report.damage] == [(entry.digests, "s3://b/s")]
    assert repair_index(report, ckpts["a"]) == ["s3://b/s"]
    assert check_index(index).ok and IndexReader.open(index).row_count == 0


def test_a_row_read_again_is_not_verified_again(index, monkeypatch):
    reader = IndexReader.open(index)
    reader.metadata(np.array([5, 7]), ["url"])
    checked = []
    real = BlockChecks.verify_bytes
    monkeypatch.setattr(BlockChecks, "verify_bytes",
                        lambda self, first, last: checked.append(len(first)) or real(self, first,
                                                                                     last))
    assert reader.metadata(np.array([7, 5]), ["url"])["url"].to_pylist() == [
        "s3://b/0007.tif", "s3://b/0005.tif"]
    assert sum(checked) == 0
    reader.metadata(np.array([5, 9]), ["url"])  # row 9 is new: only its spans are checked
    assert 0 < sum(checked) <= 2 * len(METADATA_SCHEMA)
