"""Re-ranking through the index (SceneIndex.query_codes), on toy indexes whose order is worked
out by hand: ties broken by score, rows at other distances untouched (``ties``), a shortlist
ordered by score (``full``), a tie group larger than the shortlist read whole, and an index
from before re-rank vectors answering by distance alone."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import identity, shard_rows

from dahash_index.model.rerank import in_search_order, rerank_order
from dahash_index.query.ranking import (
    UNCUT,
    best_by_score,
    best_near,
    first_per_query,
    merged,
    own_file_first,
    within_top_distance,
)
from dahash_index.query.scene_index import SceneIndex
from dahash_index.store import IndexWriter

A = np.array([0b1010_1010, 0b0101_0101], np.uint8)  # a 16-bit code


def flipped(code: np.ndarray, bits: int) -> np.ndarray:
    """``code`` with its first ``bits`` bits flipped."""
    out = np.unpackbits(code.copy())
    out[:bits] ^= 1
    return np.packbits(out)


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs + (0.0,) * (4 - len(xs)), np.float32)
    return v / np.linalg.norm(v)


def toy_index(path, ckpt, codes, vectors) -> SceneIndex:
    with IndexWriter.open(path, identity(ckpt)) as w:
        w.commit_shard("s", "s3://b/s", np.stack(codes), shard_rows("s", len(codes)), [],
                       vectors=np.stack(vectors))
    return SceneIndex.open(path)


@pytest.fixture
def four(tmp_path, ckpts) -> SceneIndex:
    # rows 0, 1 at distance 0 from A; row 2 at 1; row 3 at 8 but nearest by vector
    codes = [A, A, flipped(A, 1), flipped(A, 8)]
    vectors = [unit(1), unit(0, 1), unit(1.2, 1), unit(0.1, 1)]
    return toy_index(tmp_path / "I", ckpts["a"], codes, vectors)


def ranked(index: SceneIndex, rerank: str, top: int = 4, vector=None, **kw) -> list[int]:
    table = index.query_codes(A[None], top=top, vectors=None if vector is None else vector[None],
                              rerank=rerank, **kw)
    return table["row_id"].to_pylist()


def test_each_mode_orders_the_toy_index_by_hand(four):
    q = unit(0, 1)
    assert ranked(four, "none", vector=q) == [0, 1, 2, 3]
    # ties: row 1 (score 1) before row 0 (score 0) at distance 0; row 2 stays below both
    # although it scores above row 0, and row 3 stays last at distance 8
    assert ranked(four, "ties", vector=q) == [1, 0, 2, 3]
    # full: all four by score: 1 (1.0), 3 (0.995), 2 (0.640), 0 (0.0)
    assert ranked(four, "full", vector=q) == [1, 3, 2, 0]
    # a shortlist of 3 leaves row 3 (the farthest by Hamming distance) out
    assert ranked(four, "full", vector=q, top=3, shortlist=3) == [1, 2, 0]
    # near: the rows scoring NEAR_SCORE (0.7) or more first, by score: 1 (1.0), 3 (0.995, at
    # distance 8); then the others as ties: 0 (distance 0) before 2 (distance 1), which scores
    # 0.640
    assert ranked(four, "near", vector=q) == [1, 3, 0, 2]
    # row 3 is not in a shortlist of 3: the ties order
    assert ranked(four, "near", vector=q, top=3, shortlist=3) == [1, 0, 2]


def test_near_lifts_rows_past_the_top_distance_for_a_query_of_several_codes(four):
    # A query of two codes (chips, orientations) has its tie group read again by a range
    # search within its top-th distance (0 here); row 3, at distance 8, scores 0.995 and must
    # still be lifted: the shortlist's hits past the cut are kept.
    q = unit(0, 1)
    table = four.query_codes(np.stack([A, A]), top=2, owners=np.array([0, 0]),
                             vectors=np.stack([q, q]), rerank="near")
    assert table["row_id"].to_pylist() == [1, 3]
    assert table["distance"].to_pylist() == [0, 8]
    # the same query as ties: the two rows at distance 0, by score
    table = four.query_codes(np.stack([A, A]), top=2, owners=np.array([0, 0]),
                             vectors=np.stack([q, q]), rerank="ties")
    assert table["row_id"].to_pylist() == [1, 0]


def test_scores_and_distances_come_with_the_hits(four):
    table = four.query_codes(A[None], top=2, vectors=unit(0, 1)[None], rerank="ties")
    assert table["distance"].to_pylist() == [0, 0]
    assert table["score"].to_pylist() == pytest.approx([1.0, 0.0], abs=2e-3)
    plain = four.query_codes(A[None], top=2)  # no query vector: distance alone, no score
    assert plain["row_id"].to_pylist() == [0, 1] and plain["score"].null_count == 2


def test_a_tie_group_longer_than_the_shortlist_is_read_whole(tmp_path, ckpts):
    # 100 rows at distance 0; the best scores are those of the last rows, far past the
    # 2 * top + 32 = 38 rows a ties query fetches first.
    codes = [A] * 100
    vectors = [unit(1, i / 100) for i in range(100)]
    index = toy_index(tmp_path / "I", ckpts["a"], codes, vectors)
    assert ranked(index, "ties", top=3, vector=unit(0, 1)) == [99, 98, 97]
    assert ranked(index, "none", top=3, vector=unit(0, 1)) == [0, 1, 2]


def test_an_index_without_vectors_answers_by_distance(tmp_path, ckpts):
    with IndexWriter.open(tmp_path / "I", identity(ckpts["a"])) as w:
        w.commit_shard("s", "s3://b/s", np.stack([A, flipped(A, 2), A]),
                       shard_rows("s", 3), [])
    index = SceneIndex.open(tmp_path / "I")
    assert not index.reader.has_vectors
    table = index.query_codes(A[None], top=3, vectors=unit(1)[None], rerank="full")
    assert table["row_id"].to_pylist() == [0, 2, 1] and table["score"].null_count == 3


def test_bad_rerank_arguments_are_refused(four):
    with pytest.raises(ValueError, match="rerank must be one of none, ties, near, full"):
        four.query_codes(A[None], rerank="best")
    with pytest.raises(ValueError, match="shortlist must be an integer >= 1"):
        four.query_codes(A[None], rerank="full", shortlist=0)


def test_within_top_distance_keeps_the_top_and_its_ties():
    # query 0: distances 0 1 1 1 2 (top 2: the 2nd is at 1, so every 1 stays); query 1: one hit
    query = np.array([0, 0, 0, 0, 0, 1])
    d = np.array([0, 1, 1, 1, 2, 5])
    assert within_top_distance(query, d, 2).tolist() == [True] * 4 + [False, True]
    assert within_top_distance(query, d, 5).tolist() == [True] * 6
    assert within_top_distance(query, d, 1).tolist() == [True, False, False, False, False, True]


def test_within_top_distance_and_first_per_query_of_no_hits():
    none = np.zeros(0, np.int64)
    assert within_top_distance(none, none, 3).tolist() == first_per_query(none, 3).tolist() == []


def test_first_per_query_keeps_the_first_top_of_each_query():
    query = np.array([0, 0, 0, 2, 2, 5, 5, 5, 5])
    assert first_per_query(query, 2).tolist() == [1, 1, 0, 1, 1, 1, 1, 0, 0]
    assert first_per_query(query, 1).tolist() == [1, 0, 0, 1, 0, 1, 0, 0, 0]


def test_in_search_order_is_by_query_then_distance_then_id():
    q, d, i = np.array([0, 0, 0, 1]), np.array([1, 1, 2, 0]), np.array([7, 9, 3, 8])
    assert in_search_order(q, d, i)
    assert not in_search_order(q, d, np.array([9, 7, 3, 8]))  # an id tie out of order
    assert not in_search_order(q, np.array([1, 2, 1, 0]), i)
    assert not in_search_order(np.array([1, 0, 0, 0]), d, i)


def test_merged_keeps_a_search_order_and_sorts_any_other(monkeypatch):
    from dahash_index.query import ranking

    found = {}
    monkeypatch.setattr(ranking.indexes, "hamming_topk", lambda index, codes, k, nprobe:
                        found["hits"])
    found["hits"] = (np.array([[0, 2, 2], [1, 1, 3]]), np.array([[4, 1, 5], [6, 7, -1]]))
    q, d, i, reach = merged(None, np.zeros((2, 2), np.uint8), np.array([0, 1]), 3, None, None)
    assert (q.tolist(), d.tolist(), i.tolist()) == ([0, 0, 0, 1, 1], [0, 2, 2, 1, 1],
                                                    [4, 1, 5, 6, 7])
    # the first code's 3rd hit is at distance 2, where rows may have been cut; the second
    # found fewer than 3: every row it can find
    assert reach.tolist() == [2, UNCUT]
    # two codes of one query: each row once at its smallest distance, by (distance, id)
    found["hits"] = (np.array([[0, 2], [1, 2]]), np.array([[4, 1], [1, 9]]))
    q, d, i, reach = merged(None, np.zeros((2, 2), np.uint8), np.array([0, 0]), 2, None, None)
    assert (q.tolist(), d.tolist(), i.tolist()) == ([0, 0, 0], [0, 1, 2], [4, 1, 9])
    assert reach.tolist() == [2, 2]


@pytest.mark.parametrize("sizes", [(6, 6, 6), (6, 3, 6), (2, 2)])
def test_best_by_score_is_the_full_order_cut_at_top(sizes):
    # scores with ties (two decimals), hits in search order: (query, distance, id)
    rng = np.random.default_rng(len(sizes) + sum(sizes))
    query = np.repeat(np.arange(len(sizes)), sizes)
    d = np.concatenate([np.sort(rng.integers(0, 4, n)) for n in sizes])
    ids = np.concatenate([np.lexsort((rng.permutation(n), dq)) * 10 + 5
                          for n, dq in zip(sizes, np.split(d, np.cumsum(sizes)[:-1]),
                                           strict=True)])
    order = np.lexsort((ids, d, query))
    query, d, ids = query[order], d[order], ids[order]
    score = rng.integers(-3, 3, len(query)).astype(np.float32) / 4
    for top in (1, 3, 5, 8):
        at = rerank_order(query, d, ids, score, "full")
        expected = at[first_per_query(query[at], top)]
        assert best_by_score(query, d, ids, score, top).tolist() == expected.tolist()


@pytest.mark.parametrize("sizes", [(6, 6, 6), (6, 3, 6), (2, 2), (9,)])
def test_best_near_is_the_near_order_cut_at_top(sizes):
    # scores with ties (quarters), some at the threshold; hits in search order
    rng = np.random.default_rng(len(sizes) + sum(sizes))
    query = np.repeat(np.arange(len(sizes)), sizes)
    d = np.concatenate([np.sort(rng.integers(0, 4, n)) for n in sizes])
    ids = rng.permutation(len(query)) * 10 + 5
    order = np.lexsort((ids, d, query))
    query, d, ids = query[order], d[order], ids[order]
    score = rng.integers(-3, 5, len(query)).astype(np.float32) / 4
    for near_score in (0.5, 0.75, 2.0):
        near = score >= near_score
        # the definition, sorted the slow way: near hits by (score, distance, id), then the
        # others by (distance, score, id)
        at = np.lexsort((ids, -score, d, np.where(near, -score, 0), ~near, query))
        assert rerank_order(query, d, ids, score, "near", near_score).tolist() == at.tolist()
        for top in (1, 3, 5, 8):
            expected = at[first_per_query(query[at], top)]
            assert best_near(query, d, ids, score, top, near_score).tolist() == \
                expected.tolist()


def test_best_by_score_by_hand():
    # one query, 4 hits by distance; scores 0.5, 0.9, 0.5, 0.1: 0.9 first, then the two 0.5s
    # in their (distance, id) order
    query, d, ids = np.zeros(4, np.int64), np.array([0, 1, 1, 2]), np.array([7, 2, 4, 1])
    score = np.array([0.5, 0.9, 0.5, 0.1], np.float32)
    assert best_by_score(query, d, ids, score, 3).tolist() == [1, 0, 2]


@pytest.mark.parametrize("owners", [[0, 1, 2, 3, 4, 5], [0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 1, 2]])
@pytest.mark.parametrize("fetch", [8, 400])
def test_complete_ties_reads_every_row_tied_at_each_querys_top_distance(owners, fetch):
    # queries of one code, and of several (orientations, chips): a row's distance is its
    # nearest code's
    import faiss

    from dahash_index.query.ranking import complete_ties

    rng = np.random.default_rng(3)
    rows = rng.integers(0, 256, (3000, 2), dtype=np.uint8)  # 16 bits: ties by the hundred
    index = faiss.IndexBinaryFlat(16)
    index.add(rows)
    codes = rng.integers(0, 256, (6, 2), dtype=np.uint8)
    owners, top = np.array(owners), 5
    q, d, ids, reach = merged(index, codes, owners, fetch, None, None)
    q, d, ids = complete_ties(index, codes, owners, q, d, ids, reach, top, None)
    per_code = np.unpackbits(codes[:, None] ^ rows[None], axis=2).sum(2)  # (6, 3000)
    for query in np.unique(owners):
        every = per_code[owners == query].min(axis=0)
        at_top = np.sort(every)[top - 1]
        mine = (q == query) & (d <= at_top)
        assert sorted(ids[mine].tolist()) == np.flatnonzero(every <= at_top).tolist()
        assert d[mine].tolist() == every[ids[mine]].tolist()
        assert d[q == query].tolist() == sorted(d[q == query].tolist())


def test_own_file_first_moves_only_an_exact_tie_of_the_first_hit():
    nan = float("nan")
    query = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    urls = ["/x", "/q0", "/y", "/z", "/w", "/q1", "/v", "/q2"]
    distance = np.array([0, 0, 0, 0, 0, 2, 1, 1])
    score = np.array([1.0, 1.0, 0.9, 1.0, 0.5, 1.0, nan, nan])
    locations = ["/q0", "/q1", "/q2"]
    order = own_file_first(query, urls, distance, score, locations)
    # query 0: /q0 ties /x (distance 0, score 1): first; query 1: /q1 is farther: stays;
    # query 2: no scores, the same distance: first
    assert order.tolist() == [1, 0, 2, 3, 4, 5, 7, 6]
    assert own_file_first(query, urls, distance, score, [None] * 3).tolist() == list(range(8))
