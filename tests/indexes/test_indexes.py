"""Unit tests for indexes/: exact Hamming distances, (distance, id) order, padding, radius,
IVF against flat, save/load, input checks."""

from __future__ import annotations

import os

import faiss
import numpy as np
import pytest

from dahash_index import files
from dahash_index.indexes import (
    add_codes,
    default_nlist,
    default_nprobe,
    faiss_threads,
    hamming_radius,
    hamming_topk,
    is_mapped,
    load_index,
    new_index,
    scan_order_is_id_order,
    train_ivf,
    write_index,
)


def _pack(bit_rows: list[str]) -> np.ndarray:
    """'0000000000000011' strings -> packed uint8 (n, K/8)."""
    bits = np.array([[int(c) for c in row] for row in bit_rows], dtype=np.uint8)
    return np.packbits(bits, axis=1)


def _reference_topk(db: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int):
    """Brute force in numpy: all rows sorted by (distance, id), first k, padded with -1."""
    dist = np.unpackbits(queries[:, None, :] ^ db[None, :, :], axis=-1).sum(-1).astype(np.int32)
    ids_b = np.broadcast_to(ids, dist.shape)
    order = np.lexsort((ids_b, dist), axis=-1)[:, :k]
    d = np.take_along_axis(dist, order, -1)
    i = np.take_along_axis(ids_b, order, -1)
    pad = k - d.shape[1]
    return (
        np.pad(d, ((0, 0), (0, pad)), constant_values=-1),
        np.pad(i, ((0, 0), (0, pad)), constant_values=-1),
    )


@pytest.fixture
def random_db():
    # 8-bit codes over 600 rows: every distance value is shared by dozens of rows, so ties are
    # everywhere, including at the k-th position.
    rng = np.random.default_rng(7)
    db = rng.integers(0, 256, size=(600, 1), dtype=np.uint8)
    ids = rng.permutation(600).astype(np.int64) * 3 + 5
    queries = rng.integers(0, 256, size=(25, 1), dtype=np.uint8)
    return db, ids, queries


def _ivf(db: np.ndarray, ids: np.ndarray, nlist: int = 4):
    index = new_index(8 * db.shape[1], "ivf", nlist)
    train_ivf(index, db)
    add_codes(index, db, ids)
    return index


def test_hand_made_distances_and_order():
    db = _pack(
        [
            "1111111111111111",  # 16 bits from the query
            "0000000000000001",  # 1
            "0000000011111111",  # 8
            "0000000000000000",  # 0
        ]
    )
    ids = np.array([40, 20, 30, 10], dtype=np.int64)
    index = new_index(16)
    add_codes(index, db, ids)
    query = _pack(["0000000000000000"])
    d, i = hamming_topk(index, query, 4)
    assert d.dtype == np.int32 and i.dtype == np.int64
    np.testing.assert_array_equal(d, [[0, 1, 8, 16]])
    np.testing.assert_array_equal(i, [[10, 20, 30, 40]])


def test_ties_ordered_by_id_even_when_the_group_is_cut():
    rng = np.random.default_rng(0)
    # 100 identical codes at distance 0 from the query, added under shuffled ids; k = 7 cuts the
    # group, and 100 > 2k + 32 forces hamming_topk to widen its fetch. 100 farther rows follow.
    near = np.zeros((100, 2), dtype=np.uint8)
    far = np.full((100, 2), 0xFF, dtype=np.uint8)
    ids = rng.permutation(200).astype(np.int64) + 1000
    codes = np.concatenate([near, far])
    shuffle = rng.permutation(200)
    index = new_index(16)
    add_codes(index, codes[shuffle], ids[shuffle])
    d, i = hamming_topk(index, np.zeros((1, 2), dtype=np.uint8), 7)
    np.testing.assert_array_equal(d, np.zeros((1, 7)))
    np.testing.assert_array_equal(i[0], np.sort(ids[:100])[:7])


def test_ivf_partial_probe_cut_tie_groups_equal_all_candidates_sorted():
    """Clustered codes with tie groups far larger than the first fetch (2k + 32): the top k of
    a partial probe are exactly the first k of every candidate in the probed lists, sorted by
    (distance, id) (hamming_radius up to K gives them all)."""
    rng = np.random.default_rng(3)
    centres = rng.integers(0, 256, size=(8, 2), dtype=np.uint8)
    flips = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128], dtype=np.uint8)  # 0 or 1 bit off
    codes = centres[rng.integers(0, 8, 4000)] ^ flips[rng.integers(0, 9, (4000, 2))]
    ids = rng.permutation(4000).astype(np.int64) * 3
    ivf = _ivf(codes, ids, nlist=4)
    queries = centres[:3] ^ np.uint8(1)
    for nprobe in (1, 2):
        for k in (5, 40, 300):
            d, i = hamming_topk(ivf, queries, k, nprobe=nprobe)
            every = hamming_radius(ivf, queries, 16, nprobe=nprobe)
            for q, (all_d, all_i) in enumerate(every):
                assert len(all_i) > 2 * k + 32  # the fetch alone cannot have seen the group
                np.testing.assert_array_equal(d[q], all_d[:k])
                np.testing.assert_array_equal(i[q], all_i[:k])


@pytest.mark.parametrize("k", [1, 5, 37, 70, 599, 600])
def test_flat_topk_matches_brute_force(random_db, k):
    db, ids, queries = random_db
    index = new_index(8)
    add_codes(index, db, ids)
    d, i = hamming_topk(index, queries, k)
    ref_d, ref_i = _reference_topk(db, ids, queries, k)
    np.testing.assert_array_equal(d, ref_d)
    np.testing.assert_array_equal(i, ref_i)


@pytest.mark.parametrize("k", [1, 5, 37, 70, 599, 600, 601])
def test_flat_topk_with_ascending_ids_matches_brute_force(random_db, k):
    # Ascending ids take the one-search path; it must give the same (distance, id) order.
    db, _, queries = random_db
    ids = np.arange(len(db), dtype=np.int64) * 3 + 5
    index = new_index(8)
    add_codes(index, db[:250], ids[:250])
    add_codes(index, db[250:], ids[250:])
    assert scan_order_is_id_order(index)
    d, i = hamming_topk(index, queries, k)
    ref_d, ref_i = _reference_topk(db, ids, queries, k)
    np.testing.assert_array_equal(d, ref_d)
    np.testing.assert_array_equal(i, ref_i)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_queries", [1, 40])
def test_faiss_flat_search_keeps_the_k_smallest_by_distance_then_position(threads, n_queries):
    # What the one-search path of hamming_topk relies on, pinned for the installed FAISS: 8-bit
    # codes over 70,000 rows (more than one of FAISS's 65,536-row scan blocks) tie everywhere.
    rng = np.random.default_rng(3)
    db = rng.integers(0, 256, size=(70_000, 1), dtype=np.uint8)
    queries = rng.integers(0, 256, size=(n_queries, 1), dtype=np.uint8)
    flat = faiss.IndexBinaryFlat(8)
    flat.add(db)
    positions = np.arange(len(db), dtype=np.int64)
    with faiss_threads(threads):
        for k in (1, 50, 1000):
            d, i = flat.search(queries, k)
            ref_d, ref_i = _reference_topk(db, positions, queries, k)
            np.testing.assert_array_equal(d, ref_d)
            np.testing.assert_array_equal(i, ref_i)


def test_scan_order_is_id_order():
    db = np.arange(6, dtype=np.uint8)[:, None]
    assert scan_order_is_id_order(new_index(8))  # empty
    plain = faiss.IndexBinaryFlat(8)
    plain.add(db)
    assert scan_order_is_id_order(plain)
    ascending = new_index(8)
    add_codes(ascending, db[:3], np.array([1, 4, 9]))
    add_codes(ascending, db[3:], np.array([10, 11, 30]))
    assert scan_order_is_id_order(ascending)
    add_codes(ascending, db[:1], np.array([2]))  # a later add under a smaller id
    assert not scan_order_is_id_order(ascending)
    shuffled = new_index(8)
    add_codes(shuffled, db, np.array([5, 4, 3, 2, 1, 0]))
    assert not scan_order_is_id_order(shuffled)
    assert not scan_order_is_id_order(_ivf(np.repeat(db, 30, axis=0), np.arange(180)))


def test_k_larger_than_ntotal_pads_with_minus_one():
    db = _pack(["00000000", "00000011", "11111111"])
    index = new_index(8)
    add_codes(index, db, np.array([2, 1, 0]))
    d, i = hamming_topk(index, _pack(["00000000"]), 5)
    np.testing.assert_array_equal(d, [[0, 2, 8, -1, -1]])
    np.testing.assert_array_equal(i, [[2, 1, 0, -1, -1]])
    # An empty index: all padding.
    d, i = hamming_topk(new_index(8), _pack(["00000000"]), 2)
    np.testing.assert_array_equal(d, [[-1, -1]])
    np.testing.assert_array_equal(i, [[-1, -1]])


def test_radius_is_inclusive_and_sorted():
    db = _pack(["00000000", "00000011", "00000111", "00000001", "11111111"])
    index = new_index(8)
    add_codes(index, db, np.array([9, 8, 7, 6, 5]))
    [(d, i)] = hamming_radius(index, _pack(["00000000"]), 2)
    # distances: id9 -> 0, id8 -> 2, id7 -> 3, id6 -> 1, id5 -> 8; radius 2 keeps 0, 1, 2.
    np.testing.assert_array_equal(d, [0, 1, 2])
    np.testing.assert_array_equal(i, [9, 6, 8])
    [(d, i)] = hamming_radius(index, _pack(["00000000"]), 0)
    np.testing.assert_array_equal(i, [9])
    [(d, i)] = hamming_radius(index, _pack(["00000000"]), 100)
    assert len(i) == 5


def test_radius_matches_brute_force_ties(random_db):
    db, ids, queries = random_db
    index = new_index(8)
    add_codes(index, db, ids)
    ref_d, ref_i = _reference_topk(db, ids, queries, len(db))
    for q, (d, i) in enumerate(hamming_radius(index, queries, 3)):
        keep = ref_d[q] <= 3
        np.testing.assert_array_equal(d, ref_d[q][keep])
        np.testing.assert_array_equal(i, ref_i[q][keep])


def test_ivf_with_all_lists_probed_equals_flat(random_db):
    db, ids, queries = random_db
    flat = new_index(8)
    add_codes(flat, db, ids)
    ivf = _ivf(db, ids, nlist=4)
    assert ivf.nprobe == 1
    for k in (10, 600):
        np.testing.assert_array_equal(
            hamming_topk(ivf, queries, k, nprobe=4), hamming_topk(flat, queries, k)
        )
    for (d_ivf, i_ivf), (d_fl, i_fl) in zip(
        hamming_radius(ivf, queries, 2, nprobe=4), hamming_radius(flat, queries, 2), strict=True
    ):
        np.testing.assert_array_equal(d_ivf, d_fl)
        np.testing.assert_array_equal(i_ivf, i_fl)
    assert ivf.nprobe == 1  # per-call nprobe leaves the index as it was


def test_ivf_partial_probe_pads_and_stays_sorted(random_db):
    db, ids, queries = random_db
    ivf = _ivf(db, ids, nlist=4)
    d, i = hamming_topk(ivf, queries, 600, nprobe=1)
    assert (i == -1).any()  # one list of four cannot hold all 600 rows
    assert ((i == -1) == (d == -1)).all()
    for row_d, row_i in zip(d, i, strict=True):
        valid = row_i >= 0
        assert valid[: valid.sum()].all()  # padding only at the tail
        key = list(zip(row_d[valid], row_i[valid], strict=True))
        assert key == sorted(key)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_round_trip(tmp_path, random_db, kind, mmap):
    db, ids, queries = random_db
    if kind == "flat":
        index = new_index(8)
        add_codes(index, db, ids)
    else:
        index = _ivf(db, ids)
    path = str(tmp_path / "codes.faissindex")
    files.atomic_write(path, lambda f: write_index(index, f))
    assert os.listdir(tmp_path) == ["codes.faissindex"]  # no .tmp left behind
    loaded = load_index(path, mmap=mmap)
    assert loaded.ntotal == len(db)
    assert is_mapped(loaded) == mmap
    nprobe = 4 if kind == "ivf" else None
    np.testing.assert_array_equal(
        hamming_topk(loaded, queries, 50, nprobe=nprobe),
        hamming_topk(index, queries, 50, nprobe=nprobe),
    )
    if mmap:
        # FAISS aborts the process when appending to mapped storage; add_codes must refuse first.
        with pytest.raises(ValueError, match="read-only"):
            add_codes(loaded, db[:1], np.array([10**6]))
    else:
        add_codes(loaded, db[:1], np.array([10**6]))
        assert loaded.ntotal == len(db) + 1


def test_save_overwrites_atomically(tmp_path):
    path = str(tmp_path / "i")
    index = new_index(8)
    files.atomic_write(path, lambda f: write_index(index, f))
    add_codes(index, _pack(["00000001"]), np.array([3]))
    files.atomic_write(path, lambda f: write_index(index, f))
    assert load_index(path).ntotal == 1
    assert sorted(os.listdir(tmp_path)) == ["i"]


@pytest.mark.parametrize("bits", [12, 0, -8, 7])
def test_bad_k(bits):
    with pytest.raises(ValueError, match=rf"K must be a positive multiple of 8 .*, got {bits}"):
        new_index(bits)


def test_bad_arguments_to_new_index():
    with pytest.raises(ValueError, match="kind"):
        new_index(16, "hnsw")
    with pytest.raises(ValueError, match="nlist"):
        new_index(16, "ivf")
    with pytest.raises(ValueError, match="nlist"):
        new_index(16, "flat", nlist=4)


def test_bad_codes_and_ids():
    index = new_index(16)
    good = np.zeros((3, 2), dtype=np.uint8)
    ids = np.arange(3)
    with pytest.raises(ValueError, match="uint8"):
        add_codes(index, good.astype(np.int64), ids)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        add_codes(index, np.zeros((3, 3), dtype=np.uint8), ids)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        add_codes(index, np.zeros((3, 16), dtype=np.uint8), ids)  # unpacked bits
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        add_codes(index, good, np.arange(4))
    with pytest.raises(ValueError, match="integers"):
        add_codes(index, good, np.arange(3, dtype=np.float64))
    with pytest.raises(ValueError, match="int64"):
        add_codes(index, good, np.arange(3, dtype=np.uint64))
    with pytest.raises(ValueError, match="non-negative"):
        add_codes(index, good, np.array([0, -1, 2]))
    with pytest.raises(ValueError, match="unique"):
        add_codes(index, good, np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="explicit ids"):
        add_codes(faiss.IndexBinaryFlat(16), good, ids)
    assert index.ntotal == 0
    add_codes(index, good, ids.astype(np.int32))  # safe integer casts are fine
    assert index.ntotal == 3


def test_bad_search_arguments():
    index = new_index(16)
    add_codes(index, np.zeros((3, 2), dtype=np.uint8), np.arange(3))
    q = np.zeros((1, 2), dtype=np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        hamming_topk(index, q.astype(np.float32), 1)
    with pytest.raises(ValueError, match="shape"):
        hamming_topk(index, np.zeros(2, dtype=np.uint8), 1)
    with pytest.raises(ValueError, match="k must be"):
        hamming_topk(index, q, 0)
    with pytest.raises(ValueError, match="nprobe applies only to IVF"):
        hamming_topk(index, q, 1, nprobe=2)
    with pytest.raises(ValueError, match="radius"):
        hamming_radius(index, q, -1)


def test_ivf_training_checks():
    codes = np.random.default_rng(1).integers(0, 256, size=(100, 4), dtype=np.uint8)
    ivf = new_index(32, "ivf", 4)
    with pytest.raises(ValueError, match="not trained"):
        add_codes(ivf, codes, np.arange(100))
    with pytest.raises(ValueError, match=r"too few for nlist=4: need at least 156"):
        train_ivf(ivf, codes)
    with pytest.raises(ValueError, match="IndexBinaryIVF"):
        train_ivf(new_index(32), codes)
    ivf = new_index(32, "ivf", 2)
    train_ivf(ivf, codes)
    add_codes(ivf, codes, np.arange(100))
    with pytest.raises(ValueError, match="retrain"):
        train_ivf(ivf, codes)


def test_train_ivf_subsamples_large_inputs():
    codes = np.random.default_rng(2).integers(0, 256, size=(2000, 2), dtype=np.uint8)
    ivf = new_index(16, "ivf", 2)
    train_ivf(ivf, codes)  # 2000 > 256 * 2: trained on a seeded sample of 512
    assert ivf.is_trained


def test_default_nlist():
    assert default_nlist(0) == 1
    assert default_nlist(10) == 1
    assert default_nlist(1000) == 25  # 4 * sqrt(1000) = 126, clamped to 1000 // 39 = 25
    assert default_nlist(10**6) == 4000  # 4 * sqrt(1e6), well under 1e6 // 39
    assert default_nlist(10**8) == 4096  # capped: training time (see indexes/ivf.py)
    for n in (39, 100, 5000, 123456):
        assert n >= 39 * default_nlist(n)


def test_default_nprobe_is_used_when_none_is_given(random_db):
    assert default_nprobe(4096) == 16 and default_nprobe(4) == 4 and default_nprobe(1) == 1
    db, ids, queries = random_db
    flat = new_index(8)
    add_codes(flat, db, ids)
    ivf = _ivf(db, ids, nlist=4)  # default nprobe 4 = every list: exactly flat's results
    assert ivf.nprobe == 1
    np.testing.assert_array_equal(hamming_topk(ivf, queries, 20), hamming_topk(flat, queries, 20))
    for (d_ivf, i_ivf), (d_fl, i_fl) in zip(
        hamming_radius(ivf, queries, 2), hamming_radius(flat, queries, 2), strict=True
    ):
        np.testing.assert_array_equal(d_ivf, d_fl)
        np.testing.assert_array_equal(i_ivf, i_fl)
    assert ivf.nprobe == 1


def test_faiss_threads_sets_and_restores():
    before = faiss.omp_get_max_threads()
    with faiss_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before
    faiss_threads(1)
    assert faiss.omp_get_max_threads() == 1
    faiss.omp_set_num_threads(before)
    with pytest.raises(ValueError):
        faiss_threads(0)


@pytest.mark.parametrize("budget", [64 << 20, 3000, 1])
@pytest.mark.parametrize("bytes_per_code", [1, 2, 8, 16])
def test_counting_search_equals_the_heap_search_and_brute_force(monkeypatch, budget,
                                                               bytes_per_code):
    # FAISS's counting search answers flat indexes whose scan order is the id order; a small
    # budget splits the queries into batches, budget 1 leaves every query to the heap search.
    from dahash_index.indexes import search

    monkeypatch.setattr(search, "_COUNTING_BYTES", budget)
    rng = np.random.default_rng(bytes_per_code)
    # few distinct codes: long tie groups, cut at the k-th position
    pool = rng.integers(0, 256, size=(12, bytes_per_code), dtype=np.uint8)
    db = pool[rng.integers(0, 12, 400)]
    queries = np.concatenate([pool[:3], rng.integers(0, 256, (20, bytes_per_code), np.uint8)])
    plain = faiss.IndexBinaryFlat(8 * bytes_per_code)
    plain.add(db)
    ascending = new_index(8 * bytes_per_code)
    add_codes(ascending, db, np.arange(400, dtype=np.int64) * 2 + 7)
    for index, ids in ((plain, np.arange(400)), (ascending, np.arange(400) * 2 + 7)):
        for k in (1, 7, 50, 400):
            d, i = hamming_topk(index, queries, k)
            ref_d, ref_i = _reference_topk(db, ids, queries, k)
            np.testing.assert_array_equal(d, ref_d)
            np.testing.assert_array_equal(i, ref_i)
            heap_d, heap_i = index.search(queries, k)  # FAISS's own, heap search
            np.testing.assert_array_equal(d, heap_d)
            np.testing.assert_array_equal(i, heap_i)
