"""FAISS binary indexes of packed K-bit codes: build, add, search by Hamming distance, save, load.

Codes are packed bits, ``uint8`` arrays of shape ``(n, K // 8)`` with K a positive multiple of 8
(``numpy.packbits`` bit order; Hamming distance does not depend on it). Every row carries an
explicit non-negative ``int64`` id; -1 is reserved for "no result".

Search results are deterministic: rows are ordered by ascending Hamming distance and, within equal
distance, by ascending id. FAISS's exhaustive scan keeps the k smallest by (distance, scan
position), so a flat index whose ids ascend in insertion order (as an index store's row ids do)
is answered by one FAISS call. Otherwise ``hamming_topk`` fetches enough candidates to see every
row tied at the k-th distance and re-sorts them.
"""

from __future__ import annotations

import abc
import contextlib
import os
from collections.abc import Iterator
from typing import BinaryIO

import faiss
import numpy as np

from indexes.registry import get_kind, list_kinds, register_kind

_INT32_MAX = np.iinfo(np.int32).max

# Extra candidates fetched on top of 2 * k, so that small k rarely needs a second search to see
# the whole tie group at the k-th distance.
_FETCH_MARGIN = 32

# FAISS fourcc of a serialised IndexBinaryIVF (see faiss/impl/index_write.cpp).
_IVF_FOURCC = b"IBwF"


def check_bits(bits: int) -> int:
    """Return ``bits`` if it is a positive multiple of 8, else raise ValueError."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits <= 0 or bits % 8:
        raise ValueError(
            f"K must be a positive multiple of 8 (FAISS codes are bytes), got {bits}"
        )
    return int(bits)


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


def _check_positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


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
        nlist = _check_positive_int(nlist, "nlist")
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


def _search_params(index: faiss.IndexBinary, nprobe: int | None) -> faiss.SearchParameters | None:
    ivf = as_ivf(index)
    if nprobe is None:
        if ivf is None:
            return None
        from indexes.ivf import default_nprobe  # indexes.ivf builds on this module

        nprobe = default_nprobe(ivf.nlist)
    if ivf is None:
        raise ValueError("nprobe applies only to IVF indexes")
    nprobe = _check_positive_int(nprobe, "nprobe")
    return faiss.SearchParametersIVF(nprobe=min(nprobe, ivf.nlist))


@contextlib.contextmanager
def _nprobe_set(index: faiss.IndexBinary, nprobe: int | None) -> Iterator[None]:
    # IndexBinaryIVF.range_search takes no SearchParameters (FAISS 1.15), so nprobe has to be set
    # on the index for the call and restored afterwards.
    params = _search_params(index, nprobe)
    if params is None:
        yield
        return
    ivf = as_ivf(index)
    previous = ivf.nprobe
    ivf.nprobe = params.nprobe
    try:
        yield
    finally:
        ivf.nprobe = previous


def _sort_candidates(d: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Padding (id -1) sorts last whatever distance FAISS gave it.
    d = np.where(ids < 0, _INT32_MAX, d).astype(np.int32, copy=False)
    order = np.lexsort((ids, d), axis=-1)
    return np.take_along_axis(d, order, -1), np.take_along_axis(ids, order, -1)


def scan_order_is_id_order(index: faiss.IndexBinary) -> bool:
    """True if FAISS's exhaustive search of ``index`` visits rows in ascending id order.

    That holds for an ``IndexBinaryFlat`` (the id is the position) and for an IDMap over one whose
    ids ascend in insertion order. FAISS's heap search scans rows in order, admits a row only
    when it is strictly nearer than the current k-th and breaks ties inside the heap by position,
    so it then returns exactly the k smallest by (distance, id); ``tests/test_indexes.py`` pins
    this for the installed FAISS. Cost: one pass over the id map, in blocks (no large temporary).
    False for a ``CompositeIndex`` (it orders its results itself).
    """
    if isinstance(index, CompositeIndex):
        return False
    index = faiss.downcast_IndexBinary(index)
    ids = None
    if isinstance(index, (faiss.IndexBinaryIDMap, faiss.IndexBinaryIDMap2)):
        ids = faiss.rev_swig_ptr(index.id_map.data(), index.ntotal) if index.ntotal else None
        index = faiss.downcast_IndexBinary(index.index)
    if not isinstance(index, faiss.IndexBinaryFlat) or not index.use_heap:
        return False
    if ids is None:
        return True
    block = 1 << 20
    for start in range(0, len(ids) - 1, block):
        chunk = ids[start:start + block + 1]
        if not np.all(chunk[1:] > chunk[:-1]):
            return False
    return True


def hamming_topk(
    index: faiss.IndexBinary, queries: np.ndarray, k: int, nprobe: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows of each query by Hamming distance, ties ordered by ascending id.

    queries: uint8 (q, K/8). Returns ``(distances int32 (q, k), ids int64 (q, k))``.

    Guarantee: row i lists exactly the first k entries of the candidate rows sorted by
    (distance, id). The candidates are all rows of a flat index, or the rows in the ``nprobe``
    inverted lists nearest to the query for an IVF index (all rows when nprobe >= nlist).
    ``k >= ntotal`` therefore gives every candidate row in (distance, id) order.
    When fewer than k candidates exist the tail is padded with distance -1 and id -1.

    nprobe: IVF only; None uses ``default_nprobe(nlist)`` (``index.nprobe`` is ignored). Passed
    per call, the index is not modified. A ``CompositeIndex`` (``indexes.sharded``) answers
    with the same guarantee over all its parts. When ``scan_order_is_id_order(index)`` this is
    one FAISS search for k rows. Otherwise memory is O(q * min(ntotal, 2k + 32)), and a tie
    group at the k-th distance larger than that costs one more search (with twice as many
    candidates) per doubling.
    """
    queries = check_codes(queries, index.code_size, "queries")
    k = _check_positive_int(k, "k")
    if isinstance(index, CompositeIndex):
        if nprobe is not None:
            nprobe = _check_positive_int(nprobe, "nprobe")
        return index.topk(queries, k, nprobe)
    params = _search_params(index, nprobe)
    nq, ntotal = len(queries), index.ntotal
    out_d = np.full((nq, k), -1, dtype=np.int32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    if nq == 0 or ntotal == 0:
        return out_d, out_i

    if scan_order_is_id_order(index):
        take = min(k, ntotal)
        d, ids = index.search(queries, take)
        out_d[:, :take] = np.where(ids < 0, -1, d)
        out_i[:, :take] = ids
        return out_d, out_i

    rows = np.arange(nq)
    fetch = min(ntotal, 2 * k + _FETCH_MARGIN)
    while True:
        d, ids = index.search(queries[rows], fetch, params=params)
        d, ids = _sort_candidates(d, ids)
        take = min(k, fetch)
        out_d[rows, :take] = d[:, :take]
        out_i[rows, :take] = ids[:, :take]
        if fetch == ntotal:
            break
        # Here fetch > k. A row is settled when its candidates ran out (padding) or its farthest
        # fetched candidate lies beyond the k-th distance: then no row tied at the k-th distance
        # was left out. Otherwise FAISS may have cut that tie group arbitrarily: fetch more.
        exhausted = ids[:, -1] < 0
        open_rows = ~exhausted & (d[:, -1] == d[:, k - 1])
        rows = rows[open_rows]
        if rows.size == 0:
            break
        fetch = min(ntotal, 2 * fetch)

    out_d[out_i < 0] = -1
    return out_d, out_i


def hamming_radius(
    index: faiss.IndexBinary, queries: np.ndarray, radius: int, nprobe: int | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """All rows within Hamming distance ``<= radius`` of each query (inclusive).

    queries: uint8 (q, K/8). Returns one ``(distances int32 (h,), ids int64 (h,))`` per query,
    sorted by (distance, id). FAISS's binary range_search keeps ``distance < radius``, so it is
    called with ``radius + 1``. For IVF the search covers the ``nprobe`` nearest lists; as
    IndexBinaryIVF.range_search takes no per-call parameters, a given nprobe is set on the index
    for the duration of the call (do not share one IVF index object across threads with
    different nprobe values); None uses ``default_nprobe(nlist)``.
    """
    queries = check_codes(queries, index.code_size, "queries")
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
    if isinstance(index, CompositeIndex):
        if nprobe is not None:
            nprobe = _check_positive_int(nprobe, "nprobe")
        return index.radius(queries, int(radius), nprobe)
    if len(queries) == 0:
        return []
    if index.ntotal == 0:
        empty = (np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int64))
        return [empty for _ in range(len(queries))]
    # Distances never exceed K, so K + 1 already means "everything".
    thresh = min(int(radius), index.d) + 1
    with _nprobe_set(index, nprobe):
        lims, d, ids = index.range_search(queries, thresh)
    d = d.astype(np.int32)
    ids = ids.astype(np.int64, copy=False)
    out = []
    for lo, hi in zip(lims[:-1], lims[1:], strict=True):
        order = np.lexsort((ids[lo:hi], d[lo:hi]))
        out.append((d[lo:hi][order], ids[lo:hi][order]))
    return out


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
        n = _check_positive_int(n, "n")
        self.previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(n)

    def __enter__(self) -> faiss_threads:
        return self

    def __exit__(self, *exc: object) -> None:
        faiss.omp_set_num_threads(self.previous)
