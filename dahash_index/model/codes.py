"""Binary codes: thresholding hash outputs and packing bits as FAISS binary codes."""

from __future__ import annotations

import numpy as np
import torch

from dahash_index.errors import check_bits

__all__ = ["binarize", "hash_codes", "pack_codes", "unpack_codes"]


def binarize(h: torch.Tensor | np.ndarray) -> np.ndarray:
    """b = (sign(h - 0.5) + 1) / 2 with sign(0) = -1, i.e. b = h > 0.5.

    h: (N, K) floats in [0, 1] -> (N, K) bool.
    """
    if isinstance(h, torch.Tensor):
        h = h.detach().cpu().numpy()
    return np.asarray(h) > 0.5


def pack_codes(bits: np.ndarray) -> np.ndarray:
    """(N, K) bool -> (N, K/8) uint8, FAISS's binary code layout (first bit = MSB of byte 0)."""
    bits = np.asarray(bits, dtype=bool)
    if bits.ndim != 2:
        raise ValueError(f"expected (N, K) bits, got shape {bits.shape}")
    check_bits(bits.shape[1])
    return np.packbits(bits, axis=1)


def unpack_codes(codes: np.ndarray, bits: int | None = None) -> np.ndarray:
    """(N, K/8) uint8 -> (N, K) bool; the inverse of ``pack_codes``."""
    codes = np.asarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 2:
        raise ValueError(f"expected (N, K/8) uint8 codes, got {codes.dtype} {codes.shape}")
    if bits is not None and bits != codes.shape[1] * 8:
        raise ValueError(f"codes hold {codes.shape[1] * 8} bits, expected {bits}")
    return np.unpackbits(codes, axis=1).astype(bool)


def hash_codes(h: torch.Tensor | np.ndarray) -> np.ndarray:
    """Hash-layer outputs (N, K) -> packed codes (N, K/8) uint8."""
    return pack_codes(binarize(h))
