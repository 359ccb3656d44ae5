"""FAISS binary indexes of packed K-bit codes: check, build, add, save, load (search: ``search``).

Codes are packed bits, ``uint8`` arrays of shape ``(n, K // 8)`` with K a positive multiple of 8
(``numpy.packbits`` bit order; Hamming distance does not depend on it). Every row carries an
explicit non-negative ``int64`` id; -1 is reserved for "no result".
"""

from __future__ import annotations

import abc
import os
from typing import BinaryIO

import faiss
import numpy as np

from dahash_index.errors import check_bits, check_int
from dahash_index.indexes.registry import get_kind, list_kinds, register_kind

_INT32_MAX = np.iinfo(np.int32).max


# FAISS fourcc of a serialised IndexBinaryIVF (see faiss/impl/index_write.cpp).
_IVF_FOURCC = b"IBwF"


def check_codes(codes: np.ndarray, code_size: int, name: str = "codes") -> np.ndarray:
    """Validate packed codes: ``uint8`` of shape ``(n, code_size)``; return them C-contiguous.

    Any other dtype is refused rather than cast: unpacked 0/1 bits or float logits passed by
    mistake would otherwise be silently truncated into wrong codes.
    """
    codes = np.asarray(codes)
    if codes.dtype != np.uint8:
        raise ValueError(f"{name} must be packed bits of dtype uint8, got {codes.dtype}")
    if codes.ndim != 2 or codes.shape[1] != code_size:
        raise ValueError(
            f"{name} must have shape (n, {code_size}) for {8 * code_size}-bit codes, "
            f"got {codes.shape}"
        )
    return np.ascontiguousarray(codes)


def _check_ids(ids: np.ndarray, n: int) -> np.ndarray:
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be integers (int64), got {ids.dtype}")
    if ids.shape != (n,):
        raise ValueError(f"ids must have shape ({n},) to match the codes, got {ids.shape}")
    try:
        ids = ids.astype(np.int64, casting="safe")
    except TypeError:
        raise ValueError(f"ids of dtype {ids.dtype} do not fit in int64") from None
    if n and ids.min() < 0:
        # -1 marks padding in search results, so a negative id would be indistinguishable from it.
        raise ValueError("ids must be non-negative")
    if len(np.unique(ids)) != n:
        raise ValueError("ids must be unique within a batch")
    return np.ascontiguousarray(ids)


def as_ivf(index: faiss.IndexBinary) -> faiss.IndexBinaryIVF | None:
    """Return ``index`` as an ``IndexBinaryIVF`` if it is one, else None."""
    index = faiss.downcast_IndexBinary(index)
    return index if isinstance(index, faiss.IndexBinaryIVF) else None


class CompositeIndex(abc.ABC):
    """An index made of several FAISS indexes (``indexes.sharded.ShardedIndex``) that answers
    ``hamming_topk`` and ``hamming_radius`` itself, with the same contract as a FAISS index."""

    d: int  # K, the bits per code
    code_size: int  # K / 8
    ntotal: int

    @abc.abstractmethod
    def topk(
        self, queries: np.ndarray, k: int, nprobe: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``hamming_topk`` on this index (arguments already checked)."""

    @abc.abstractmethod
    def radius(
        self, queries: np.ndarray, radius: int, nprobe: int | None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``hamming_radius`` on this index (arguments already checked)."""

    @property
    @abc.abstractmethod
    def nlist(self) -> int | None:
        """The nlist of its IVF parts, None when it has none (nprobe does not apply)."""

    @property
    @abc.abstractmethod
    def mapped(self) -> bool:
        """True if its codes are memory-mapped from files."""


def nlist_of(index: faiss.IndexBinary | CompositeIndex) -> int | None:
    """The number of inverted lists of an IVF index (or of a composite's IVF parts); None when
    the index has none, i.e. when ``nprobe`` does not apply to it."""
    if isinstance(index, CompositeIndex):
        return index.nlist
    ivf = as_ivf(index)
    return None if ivf is None else int(ivf.nlist)


def new_index(bits: int, kind: str = "flat", nlist: int | None = None):
    """Make an empty binary index of a registered kind (``indexes.registry``) for K-bit codes.

    ``kind='flat'``: ``IndexBinaryIDMap(IndexBinaryFlat(bits))``, exhaustive search, no training;
    rows carry explicit int64 ids.
    ``kind='ivf'``: ``IndexBinaryIVF(IndexBinaryFlat(bits), bits, nlist)``; it stores ids in its
    inverted lists itself, so it needs no IDMap. It must be trained (``train_ivf``) before
    ``add_codes``; see ``default_nlist`` for a choice of ``nlist``.
    ``kind='sharded'``: an empty ``indexes.sharded.ShardedIndex`` (add parts with ``add_part``).
    ValueError for an unknown kind, an nlist given to a kind that takes none, or none given to
    one that needs it.
    """
    spec = get_kind(kind)
    bits = check_bits(bits)
    if spec.takes_nlist:
        if nlist is None:
            raise ValueError(f"kind={kind!r} needs nlist (see indexes.default_nlist)")
        nlist = check_int("nlist", nlist, 1)
    elif nlist is not None:
        takes = " or ".join(repr(k) for k in list_kinds() if get_kind(k).takes_nlist)
        raise ValueError(f"nlist applies only to kind={takes}, not {kind!r}")
    return spec.new(bits, nlist)


def _owning(index: faiss.IndexBinary, owned: faiss.IndexBinary) -> faiss.IndexBinary:
    # Hand the sub-index to C++ so that it lives exactly as long as the index, whichever Python
    # proxy of the index survives.
    owned.this.disown()
    index.own_fields = True
    return index


@register_kind("flat", "exhaustive search: exact, no training", storable=True)
def _new_flat(bits: int, nlist: int | None) -> faiss.IndexBinary:
    storage = faiss.IndexBinaryFlat(bits)
    return _owning(faiss.IndexBinaryIDMap(storage), storage)


@register_kind(
    "ivf",
    "inverted lists (nlist, nprobe): approximate, faster; trained when finalized",
    needs_training=True,
    takes_nlist=True,
    storable=True,
)
def _new_ivf(bits: int, nlist: int | None) -> faiss.IndexBinary:
    quantizer = faiss.IndexBinaryFlat(bits)
    return _owning(faiss.IndexBinaryIVF(quantizer, bits, nlist), quantizer)


def is_mapped(index: faiss.IndexBinary) -> bool:
    """True if the index's codes are memory-mapped from a file (``load_index(mmap=True)``)."""
    if isinstance(index, CompositeIndex):
        return index.mapped
    ivf = as_ivf(index)
    if ivf is not None:
        return isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)
    index = faiss.downcast_IndexBinary(index)
    if isinstance(index, (faiss.IndexBinaryIDMap, faiss.IndexBinaryIDMap2)):
        index = faiss.downcast_IndexBinary(index.index)
    return isinstance(index, faiss.IndexBinaryFlat) and not index.xb.is_owned


def add_codes(index: faiss.IndexBinary, codes: np.ndarray, ids: np.ndarray) -> None:
    """Add ``codes`` (uint8, (n, K/8)) under ``ids`` (integer, (n,), cast to int64).

    ids must be non-negative and unique within the batch; uniqueness against rows already in the
    index is not checked (FAISS does not either). An IVF index must be trained first.
    """
    if not isinstance(
        faiss.downcast_IndexBinary(index),
        (faiss.IndexBinaryIDMap, faiss.IndexBinaryIDMap2, faiss.IndexBinaryIVF),
    ):
        raise ValueError(f"index must carry explicit ids (use new_index), got {type(index)}")
    codes = check_codes(codes, index.code_size)
    ids = _check_ids(ids, len(codes))
    if not index.is_trained:
        raise ValueError("the IVF index is not trained yet: call train_ivf first")
    if is_mapped(index):
        # Appending to memory-mapped FAISS storage aborts the whole process, so refuse it here.
        raise ValueError("index was loaded with mmap=True and is read-only")
    if len(codes):
        index.add_with_ids(codes, ids)


def write_index(index: faiss.IndexBinary, f: BinaryIO) -> None:
    """Serialise the index into the open binary file ``f``, streamed (no copy of the codes in
    memory). Atomic replacement of a file is the caller's: ``dahash_index.files.atomic_write``.
    """
    writer = faiss.PyCallbackIOWriter(f.write)
    try:
        faiss.write_index_binary(index, writer)
    finally:
        del writer  # flushes its buffer into f


def load_index(path: str, mmap: bool = False) -> faiss.IndexBinary:
    """Read an index written by ``write_index``.

    ``mmap=True`` maps the codes from the file instead of copying them into memory, and the
    index is then read-only (``add_codes`` refuses it). FAISS has two mechanisms and each covers
    one kind: ``IO_FLAG_MMAP`` turns an IVF's inverted lists into OnDiskInvertedLists but leaves a
    flat index fully loaded; ``IO_FLAG_MMAP_IFC`` maps a flat index's codes zero-copy. The file's
    header picks the flag.
    """
    path = os.fspath(path)
    if not mmap:
        return faiss.read_index_binary(path)
    with open(path, "rb") as f:
        fourcc = f.read(4)
    flag = faiss.IO_FLAG_MMAP if fourcc == _IVF_FOURCC else faiss.IO_FLAG_MMAP_IFC
    return faiss.read_index_binary(path, flag)


class faiss_threads:  # lower case: it reads as a call, faiss_threads(2) or with faiss_threads(2)
    """Set the number of OpenMP threads FAISS uses (its own OpenMP runtime, not torch's).

    Takes effect on construction; used as a context manager it restores the previous count on exit.
    """

    def __init__(self, n: int) -> None:
        n = check_int("n", n, 1)
        self.previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(n)

    def __enter__(self) -> faiss_threads:
        return self

    def __exit__(self, *exc: object) -> None:
        faiss.omp_set_num_threads(self.previous)
