"""indexes.sharded: several FAISS indexes searched as one give exactly the results of one flat
index over all rows (ties at equal distance by ascending id), top-k and radius, flat and IVF
parts, ids translated from row ranges, searched in threads or not."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from dahash_index import files
from dahash_index.indexes import (
    RowRanges,
    ShardedIndex,
    add_codes,
    faiss_threads,
    hamming_radius,
    hamming_topk,
    load_index,
    new_index,
    nlist_of,
    train_ivf,
    write_index,
)


@pytest.fixture(scope="module")
def tied():
    """900 16-bit codes drawn from 12 values (every distance is shared by dozens of rows, ties
    at every k), under ascending ids with gaps, as an index store's row ids are."""
    rng = np.random.default_rng(3)
    values = rng.integers(0, 256, (12, 2), dtype=np.uint8)
    codes = values[rng.integers(0, 12, 900)]
    gaps = rng.integers(1, 4, 900)
    ids = np.cumsum(gaps).astype(np.int64) + 100
    queries = np.vstack([values[:5], rng.integers(0, 256, (10, 2), dtype=np.uint8)])
    return codes, ids, queries


def _flat(codes: np.ndarray, ids: np.ndarray):
    index = new_index(8 * codes.shape[1])
    add_codes(index, codes, ids)
    return index


def _positional(codes: np.ndarray, ids: np.ndarray, cuts: list[int]) -> list:
    """Plain IndexBinaryFlat parts of consecutive slices, with RowRanges of runs of ids."""
    parts = []
    for lo, hi in zip([0, *cuts], [*cuts, len(codes)], strict=True):
        index = faiss.IndexBinaryFlat(8 * codes.shape[1])
        index.add(codes[lo:hi])
        runs = np.flatnonzero(np.diff(ids[lo:hi]) != 1) + 1  # ranges of consecutive ids
        starts = np.concatenate([[0], runs])
        counts = np.diff(np.concatenate([starts, [hi - lo]]))
        parts.append((index, RowRanges(ids[lo:hi][starts], counts)))
    return parts


def _sharded(parts) -> ShardedIndex:
    index = new_index(16, "sharded")
    for part, rows in parts:
        index.add_part(part, rows)
    return index


def _assert_same_topk(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def _assert_same_radius(a, b):
    assert len(a) == len(b)
    for (da, ia), (db, ib) in zip(a, b, strict=True):
        np.testing.assert_array_equal(da, db)
        np.testing.assert_array_equal(ia, ib)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("k", [1, 7, 50, 333, 900, 901])
def test_positional_parts_equal_flat(tied, k, threads):
    codes, ids, queries = tied
    sharded = _sharded(_positional(codes, ids, [100, 101, 500]))
    assert sharded.ntotal == 900 and nlist_of(sharded) is None
    with faiss_threads(threads):
        # One query at a time takes the threaded path with 2 threads; all at once does not.
        for q in (queries[:1], queries):
            _assert_same_topk(hamming_topk(sharded, q, k), hamming_topk(_flat(codes, ids), q, k))


@pytest.mark.parametrize("radius", [0, 1, 4, 16])
def test_radius_equals_flat(tied, radius):
    codes, ids, queries = tied
    sharded = _sharded(_positional(codes, ids, [300, 600]))
    _assert_same_radius(hamming_radius(sharded, queries, radius),
                        hamming_radius(_flat(codes, ids), queries, radius))


def test_mixed_parts_in_any_order_equal_flat(tied):
    # IDMap parts with shuffled ids, positional parts, an empty part: the merge orders by id
    # whatever the part order.
    codes, ids, queries = tied
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(300)
    idmap = _flat(codes[shuffled], ids[shuffled])
    positional = _positional(codes[300:], ids[300:], [250])
    parts = [positional[1], (idmap, None), (faiss.IndexBinaryFlat(16), RowRanges([], [])),
             positional[0]]
    sharded = _sharded(parts)
    flat = _flat(codes, ids)
    for k in (5, 64, 900):
        _assert_same_topk(hamming_topk(sharded, queries, k), hamming_topk(flat, queries, k))
    _assert_same_radius(hamming_radius(sharded, queries, 3), hamming_radius(flat, queries, 3))


def test_ivf_parts_with_all_lists_probed_equal_flat(tied):
    codes, ids, queries = tied
    trained = new_index(16, "ivf", 4)
    train_ivf(trained, codes)
    parts = []
    for lo, hi in ((0, 400), (400, 900)):
        ivf = new_index(16, "ivf", 4)
        ivf.quantizer.add(faiss.vector_to_array(
            faiss.downcast_IndexBinary(trained.quantizer).xb).reshape(-1, 2))
        ivf.is_trained = True
        add_codes(ivf, codes[lo:hi], ids[lo:hi])
        parts.append((ivf, None))
    sharded = _sharded(parts)
    assert nlist_of(sharded) == 4
    flat = _flat(codes, ids)
    for k in (10, 900):
        _assert_same_topk(hamming_topk(sharded, queries, k, nprobe=4),
                          hamming_topk(flat, queries, k))
    _assert_same_radius(hamming_radius(sharded, queries, 2, nprobe=4),
                        hamming_radius(flat, queries, 2))
    # Fewer lists probed: a subset of the rows, still sorted by (distance, id), padded at the end.
    d, i = hamming_topk(sharded, queries, 900, nprobe=1)
    for row_d, row_i in zip(d, i, strict=True):
        valid = row_i >= 0
        assert valid[: valid.sum()].all()
        key = list(zip(row_d[valid], row_i[valid], strict=True))
        assert key == sorted(key)
    d_default, i_default = hamming_topk(sharded, queries, 10)  # default nprobe
    assert d_default.shape == (len(queries), 10)


def test_mapped_parts(tmp_path, tied):
    codes, ids, queries = tied
    parts = []
    for n, (index, rows) in enumerate(_positional(codes, ids, [450])):
        files.atomic_write(tmp_path / f"{n}.faiss", lambda f, index=index: write_index(index, f))
        parts.append((load_index(str(tmp_path / f"{n}.faiss"), mmap=True), rows))
    sharded = _sharded(parts)
    assert sharded.mapped
    _assert_same_topk(hamming_topk(sharded, queries, 60),
                      hamming_topk(_flat(codes, ids), queries, 60))


def test_empty_and_refusals(tied):
    codes, ids, queries = tied
    empty = new_index(16, "sharded")
    d, i = hamming_topk(empty, queries, 3)
    assert (d == -1).all() and (i == -1).all() and d.dtype == np.int32 and i.dtype == np.int64
    assert [len(i) for _, i in hamming_radius(empty, queries, 4)] == [0] * len(queries)
    with pytest.raises(ValueError, match="nprobe applies only to IVF"):
        hamming_topk(_sharded(_positional(codes, ids, [])), queries, 3, nprobe=2)
    with pytest.raises(ValueError, match="needs RowRanges"):
        empty.add_part(faiss.IndexBinaryFlat(16))
    with pytest.raises(ValueError, match="stores its ids"):
        empty.add_part(_flat(codes, ids), RowRanges([0], [900]))
    with pytest.raises(ValueError, match="RowRanges cover 5 rows"):
        empty.add_part(faiss.IndexBinaryFlat(16), RowRanges([0], [5]))
    with pytest.raises(ValueError, match="32-bit index cannot be a part"):
        empty.add_part(faiss.IndexBinaryFlat(32), RowRanges([], []))
    with pytest.raises(ValueError, match="ascend without overlapping"):
        RowRanges([10, 5], [1, 1])
    with pytest.raises(ValueError, match="shape"):
        hamming_topk(empty, np.zeros((1, 4), np.uint8), 3)


def test_row_ranges():
    rows = RowRanges.of([[10, 3], [20, 2], [100, 1]])
    assert len(rows) == 6
    np.testing.assert_array_equal(rows.ids(np.array([[0, 2, 3], [4, 5, -1]])),
                                  [[10, 12, 20], [21, 100, -1]])
    assert rows == RowRanges([10, 20, 100], [3, 2, 1]) and rows != RowRanges([10], [3])
