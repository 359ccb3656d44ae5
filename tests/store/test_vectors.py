"""Re-rank vectors on disk: int8 rows scaled to +-127, read back at unit length; float16 files
of indexes from before int8 still read."""

from __future__ import annotations

import numpy as np
import pytest

from dahash_index.files import sha256_file
from dahash_index.store.vectors import (
    ShardVectors,
    check_vectors,
    cosine_scores,
    decode_vectors,
    gather_vectors,
    quantize_vectors,
)


def test_quantize_scales_each_row_so_its_largest_component_is_127():
    v = np.array([[0.5, -0.25, 0.0, 0.1], [0.0, 0.0, 0.0, 0.0], [-2.0, 1.0, 0.0, 0.0]])
    # row 0: x 254 -> 127, -63.5 (to even: -64), 0, 25.4; row 2: x 63.5 -> -127, 63.5 (64)
    assert quantize_vectors(v).tolist() == [[127, -64, 0, 25], [0, 0, 0, 0], [-127, 64, 0, 0]]
    assert quantize_vectors(v).dtype == np.int8


def test_decode_gives_unit_rows_and_a_zero_row_stays_zero():
    stored = np.array([[3, 4, 0], [0, 0, 0]], np.int8)
    np.testing.assert_allclose(decode_vectors(stored), [[0.6, 0.8, 0.0], [0.0, 0.0, 0.0]])
    assert decode_vectors(stored).dtype == np.float32


def test_a_stored_vector_scores_as_the_float_one_within_a_few_thousandths():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((200, 128)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    q = v[:5]
    exact = q @ v.T
    stored = q @ decode_vectors(quantize_vectors(v)).T
    assert np.abs(stored - exact).max() < 0.01


def test_check_vectors_quantizes_floats_keeps_int8_and_refuses_the_rest():
    floats = np.array([[1.0, 0.5], [0.0, -1.0]], np.float16)
    assert check_vectors(floats, 2, "shard 's'").tolist() == [[127, 64], [0, -127]]
    stored = np.array([[1, 2]], np.int8)
    assert check_vectors(stored, 1, "x").tolist() == [[1, 2]]
    with pytest.raises(ValueError, match=r"shard 's': re-rank vectors must be floats of shape "
                                         r"\(2, D\), got int32"):
        check_vectors(np.zeros((2, 2), np.int32), 2, "shard 's'")
    with pytest.raises(ValueError, match="got float64"):
        check_vectors(np.zeros((3, 2)), 2, "x")


def test_shards_of_int8_and_of_float16_gather_together(tmp_path):
    # a shard written before int8 (float16) beside one written since (int8)
    old = np.array([[0.0, 2.0], [3.0, 4.0]], np.float16)
    new = quantize_vectors(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]]))
    shards = []
    for name, array in (("old.npy", old), ("new.npy", new)):
        np.save(tmp_path / name, array)
        shards.append(ShardVectors(tmp_path, name, len(array), sha256_file(tmp_path / name),
                                   None, None))
    got = gather_vectors(np.array([1, 0, 1, 0]), np.array([2, 1, 0, 0]), 2, shards.__getitem__)
    np.testing.assert_allclose(got, [[0, -1], [0.6, 0.8], [1, 0], [0, 1]], atol=1e-6)


def test_int8_shards_gather_as_stored_and_score_as_cosines(tmp_path):
    stored = np.array([[3, 4], [0, 127], [-5, 0]], np.int8)
    np.save(tmp_path / "v.npy", stored)
    shard = ShardVectors(tmp_path, "v.npy", 3, sha256_file(tmp_path / "v.npy"), None, None)
    got = gather_vectors(np.zeros(2, np.int64), np.array([2, 0]), 1, lambda s: shard)
    assert got.dtype == np.int8 and got.tolist() == [[-5, 0], [3, 4]]
    # cosines with (1, 0): -1 and 3/5; with (0.6, 0.8): -0.6 and 1
    np.testing.assert_allclose(cosine_scores(got, np.array([1.0, 0.0])), [-1.0, 0.6])
    np.testing.assert_allclose(cosine_scores(got, np.array([0.6, 0.8])), [-0.6, 1.0], atol=1e-6)
