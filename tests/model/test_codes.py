"""Unit tests for dahash_index/codes.py against METHOD.md section 1: b = (sign(h - 0.5) + 1) / 2
with sign(0) = -1, and K a multiple of 8 packed as bytes (np.packbits layout)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dahash_index.errors import check_bits
from dahash_index.model.codes import binarize, hash_codes, pack_codes, unpack_codes


@pytest.mark.parametrize("bits", [8, 16, 32, 48, 64])
def test_check_bits_accepts_multiples_of_8(bits):
    assert check_bits(bits) == bits


@pytest.mark.parametrize("bits", [0, -8, 7, 12, 20, 8.0, True, "8"])
def test_check_bits_refuses_others(bits):
    with pytest.raises(ValueError, match="multiple of 8"):
        check_bits(bits)


def test_binarize_threshold_and_tie():
    h = np.array([[0.0, 0.2, 0.4999, 0.5, 0.5001, 0.9, 1.0]])
    # sign(h - 0.5): -, -, -, 0 -> -1, +, +, +  =>  b = 0, 0, 0, 0, 1, 1, 1
    expected = np.array([[False, False, False, False, True, True, True]])
    b = binarize(h)
    assert b.dtype == bool
    np.testing.assert_array_equal(b, expected)


def test_binarize_accepts_torch_with_grad():
    h = torch.tensor([[0.7, 0.5], [0.3, 0.51]], requires_grad=True)
    # 0.7 > 0.5 -> 1; 0.5 -> 0 (tie); 0.3 -> 0; 0.51 -> 1
    np.testing.assert_array_equal(binarize(h), [[True, False], [False, True]])


def test_pack_codes_layout_msb_first():
    bits = np.array(
        [
            [1, 0, 0, 0, 0, 0, 0, 1],  # 0b10000001 = 128 + 1 = 129
            [0, 0, 0, 0, 0, 1, 0, 1],  # 0b00000101 = 4 + 1 = 5
        ],
        dtype=bool,
    )
    codes = pack_codes(bits)
    assert codes.dtype == np.uint8
    np.testing.assert_array_equal(codes, [[129], [5]])


def test_pack_codes_two_bytes():
    bits = np.array([[0, 0, 0, 0, 0, 0, 0, 1] + [1] * 8], dtype=bool)
    # byte 0 = 0b00000001 = 1; byte 1 = 0b11111111 = 255
    np.testing.assert_array_equal(pack_codes(bits), [[1, 255]])


def test_pack_codes_refuses_k_not_multiple_of_8():
    with pytest.raises(ValueError, match="multiple of 8.*12"):
        pack_codes(np.zeros((2, 12), dtype=bool))


def test_pack_codes_refuses_1d():
    with pytest.raises(ValueError, match="shape"):
        pack_codes(np.zeros(8, dtype=bool))


def test_unpack_inverts_pack():
    rng = np.random.default_rng(0)
    bits = rng.random((5, 24)) > 0.5
    codes = pack_codes(bits)
    assert codes.shape == (5, 3)  # 24 bits / 8 = 3 bytes
    np.testing.assert_array_equal(unpack_codes(codes), bits)
    np.testing.assert_array_equal(unpack_codes(codes, bits=24), bits)


def test_unpack_by_hand():
    # 129 = 0b10000001, 5 = 0b00000101
    np.testing.assert_array_equal(
        unpack_codes(np.array([[129], [5]], dtype=np.uint8)),
        np.array([[1, 0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1, 0, 1]], dtype=bool),
    )


def test_unpack_refuses_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        unpack_codes(np.zeros((2, 1), dtype=np.int64))
    with pytest.raises(ValueError, match="uint8"):
        unpack_codes(np.zeros(2, dtype=np.uint8))
    with pytest.raises(ValueError, match="16 bits, expected 8"):
        unpack_codes(np.zeros((1, 2), dtype=np.uint8), bits=8)


def test_hash_codes_by_hand():
    h = torch.tensor(
        [
            [0.9, 0.1, 0.5, 0.6, 0.2, 0.3, 0.8, 0.4],  # b = 1 0 0 1 0 0 1 0 = 128+16+2 = 146
            [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.51],  # b = 0000 0001 = 1 (ties -> 0)
        ]
    )
    np.testing.assert_array_equal(hash_codes(h), [[146], [1]])
