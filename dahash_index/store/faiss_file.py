"""The FAISS binary index of an index directory: loaded from its file, completed from the parts.

The file is a cache of the parts. A reader starts from it, removes the rows of shards retired
since it was written and adds the codes of shards committed since; without a file (never
finalized, or replaced by a later finalize while the reader was open) it builds the index
from the parts.

An IVF needs ``MIN_POINTS_PER_CENTROID * nlist`` codes to train. Until the index holds that
many, its codes are searched exactly (a flat index in memory) and no FAISS file is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import faiss
import numpy as np

from dahash_index.files import one_line
from dahash_index.store.layout import MANIFEST, IndexStoreError
from dahash_index.store.parts import read_codes
from indexes import add_codes, default_nlist, load_index, new_index, train_ivf
from indexes.binary import as_ivf
from indexes.ivf import MIN_POINTS_PER_CENTROID


def faiss_index(
    directory: Path,
    manifest: Mapping,
    mmap: bool = False,
    train_sample: int | None = None,
    base: tuple[Mapping, faiss.IndexBinary] | None = None,
) -> tuple[faiss.IndexBinary, int | None]:
    """The index of every committed row (ids = row ids), and the IVF's nlist (None for flat).

    mmap: map the file, when it covers every shard and nothing was retired (a mapped index is
    read-only). train_sample: train a new IVF on that many random codes instead of all.
    base: (an older manifest of this directory, its index): when every shard of it is still
    committed unchanged, a copy of that index plus the newer shards' codes is returned,
    which reads only the new parts.
    """
    kind, nlist, bits = manifest["kind"], manifest["nlist"], manifest["bits"]
    shards = manifest["shards"]
    index, todo = _incremental_start(manifest, base)
    if index is None:
        retired = manifest["index_retired"]
        todo = [s for s in shards if s not in set(manifest["index_shards"])]
        if manifest["index_file"] is not None:
            index = _load_faiss_file(directory, manifest, mmap and not todo and not retired)
        if index is not None:
            for first, rows in retired:
                index.remove_ids(faiss.IDSelectorRange(first, first + rows))
        else:
            todo = list(shards)
            if kind == "ivf":
                nlist = nlist if nlist is not None else default_nlist(manifest["row_count"])
                if manifest["row_count"] < MIN_POINTS_PER_CENTROID * nlist:
                    kind = "flat"  # too few codes to train: exact search until there are enough
            index = new_index(bits, kind, nlist if kind == "ivf" else None)
    ids, codes = read_codes(directory, manifest, todo)
    if not index.is_trained:
        if train_sample is not None and train_sample < len(codes):
            rows = np.random.default_rng(0).choice(len(codes), size=train_sample, replace=False)
            sample = codes[np.sort(rows)]
        else:
            sample = codes
        try:
            train_ivf(index, sample)
        except ValueError as err:
            raise IndexStoreError(f"{directory}: cannot train the IVF index: {err}") from None
    if len(codes):  # a memory-mapped index refuses even an empty add
        add_codes(index, codes, ids)
    return index, nlist


def is_exact_stand_in(manifest: Mapping, index: faiss.IndexBinary) -> bool:
    """True when an IVF index's codes are searched by a flat stand-in (too few to train)."""
    return manifest["kind"] == "ivf" and as_ivf(index) is None


def _incremental_start(
    manifest: Mapping, base: tuple[Mapping, faiss.IndexBinary] | None
) -> tuple[faiss.IndexBinary | None, list[str]]:
    """(a copy of base's index, the shards it lacks), or (None, []) when base does not apply."""
    if base is None:
        return None, []
    old, index = base
    same = all(manifest["shards"].get(k) == e for k, e in old["shards"].items())
    if not same or (manifest["kind"], manifest["bits"]) != (old["kind"], old["bits"]):
        return None, []
    if is_exact_stand_in(old, index) and manifest["row_count"] >= _ivf_threshold(manifest):
        return None, []  # enough codes now: train the real IVF
    new = [k for k in manifest["shards"] if k not in old["shards"]]
    # A copy, so that queries running on the old state never see it change; FAISS cannot
    # clone an IDMap, but every index serialises.
    copy = faiss.deserialize_index_binary(faiss.serialize_index_binary(index))
    return copy, new


def _ivf_threshold(manifest: Mapping) -> int:
    nlist = manifest["nlist"] or default_nlist(manifest["row_count"])
    return MIN_POINTS_PER_CENTROID * nlist


def _load_faiss_file(directory: Path, manifest: Mapping, mmap: bool) -> faiss.IndexBinary | None:
    """The manifest's FAISS file, checked against it; None if the file is gone."""
    rel = manifest["index_file"]
    path = directory / rel
    try:
        index = load_index(str(path), mmap=mmap)
    except RuntimeError as err:  # FAISS reports every read problem as RuntimeError
        if not path.exists():
            return None
        raise IndexStoreError(f"{directory}: {rel} is unreadable ({one_line(err)})") from None
    check_faiss_file(directory, manifest, index)
    return index


def check_faiss_file(directory: Path, manifest: Mapping, index: faiss.IndexBinary) -> None:
    """Raise unless ``index`` (loaded from the manifest's file) has its K, kind and row count."""
    rel = manifest["index_file"]
    covered = sum(manifest["shards"][s]["rows"] for s in manifest["index_shards"])
    expected = covered + sum(rows for _, rows in manifest["index_retired"])
    is_ivf = as_ivf(index) is not None
    if index.d != manifest["bits"] or is_ivf != (manifest["kind"] == "ivf"):
        raise IndexStoreError(
            f"{directory}: {rel} is not a {manifest['bits']}-bit {manifest['kind']} index"
        )
    if index.ntotal != expected:
        raise IndexStoreError(
            f"{directory}: {rel} holds {index.ntotal} codes, {MANIFEST} says {expected}"
        )
