"""The FAISS side of an index directory: segment files, searched as one, completed from the parts.

``finalize`` writes the codes as segments (see the manifest comment in ``layout``): FAISS files
of at most ``SEGMENT_BYTES`` of codes each, one group of whole shards each, under
``index.faiss/``. A flat segment is a plain ``IndexBinaryFlat``: it stores no ids, as the
manifest gives each shard's contiguous row-id range (an ``IndexBinaryIDMap`` would keep 8 more
bytes per row, 800 MB per 100 M rows), and its scan in position order orders ties by row id.
An IVF segment stores row ids in its lists; all share one trained quantizer. Segments are
written streaming, one shard's part at a time, so building them needs memory for one segment,
not for the whole index. A later finalize writes only new segments (for the shards committed
since, plus a small last segment that they join, plus segments that lost retired rows).

A reader searches the segments as one ``indexes.ShardedIndex``: each segment memory-mapped
(``mmap=True``; a segment with retired rows is loaded and the rows removed), plus the shards
committed since the last finalize, indexed in memory from their parts. A segment file that a
later finalize deleted while the reader was open is replaced by its shards' codes from the parts.

An IVF needs ``MIN_POINTS_PER_CENTROID * nlist`` codes to train. Until the index holds that
many, its codes are searched exactly (flat segments in memory) and no FAISS file is written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import faiss
import numpy as np

from dahash_index.files import atomic_write, fsync_dir, sha256_file
from dahash_index.indexes import (
    RowRanges,
    ShardedIndex,
    add_codes,
    default_nlist,
    load_index,
    new_index,
    nlist_of,
    train_ivf,
    write_index,
)
from dahash_index.indexes.binary import as_ivf
from dahash_index.indexes.ivf import MIN_POINTS_PER_CENTROID, TRAIN_POINTS_PER_LIST
from dahash_index.indexes.sharded import Part
from dahash_index.store.layout import MANIFEST, IndexStoreError, unreadable, verify_checksum
from dahash_index.store.manifest import SEGMENT_DIR, Manifest, Segment
from dahash_index.store.parts import codes_from_arrow, read_part

# Codes per segment file: 128 MiB (16.8 M rows at K = 64). Bounds the memory finalize needs
# (about twice this), and gives a 100 M-row index 6 segments, which a query scans in parallel.
SEGMENT_BYTES = 128 << 20

# A last segment smaller than this share of SEGMENT_BYTES is rewritten with the next shards
# rather than followed by another small one: the number of segments stays about
# rows / segment rows + 1 however often finalize runs.
MERGE_BELOW = 0.5


# --- reading ---------------------------------------------------------------------------------


def faiss_index(
    directory: Path,
    manifest: Manifest,
    mmap: bool = False,
    train_sample: int | None = None,
    base: tuple[Manifest, ShardedIndex] | None = None,
) -> tuple[ShardedIndex, int | None]:
    """The index of every committed row (ids = row ids), and the IVF's nlist (None for flat).

    Returns a ``ShardedIndex``: the manifest's segments (memory-mapped with ``mmap`` unless
    rows of theirs were retired), plus one part in memory for the shards committed since the
    last finalize. base: (an older manifest of this directory, its index): parts of it that
    are still valid are reused as they are (parts are never modified), so only segments and
    shards new since then are read. train_sample: unused (kept for callers of the one-file
    store; readers never train an IVF: until finalize has, new codes are searched exactly).
    """
    del train_sample
    bits = manifest.bits
    reusable = {p.label: p for p in base[1].parts} if base is not None else {}
    index = ShardedIndex(bits)
    live = _live_firsts(manifest)
    todo = [s for s in manifest.shards if s not in set(manifest.index_shards)]
    for segment in manifest.segments:
        ranges = [r for r in segment.ranges if r[0] in live]
        label = ("file", segment.file, _key(ranges))
        part = reusable.get(label)
        if part is None:
            part = _load_segment(directory, manifest, segment, ranges, mmap)
        if part is None:  # deleted by a later finalize: its shards' codes from the parts
            todo += [live[first] for first, _ in ranges]
            continue
        index.add_part(part.index, part.rows, label)
    todo = _by_row(manifest, [s for s in todo if manifest.shards[s].rows])
    pending = set(todo)
    for label, part in reusable.items():
        if label[0] == "memory" and set(label[1]) <= pending and _same(manifest, base[0], label):
            index.add_part(part.index, part.rows, label)
            pending -= set(label[1])
    todo = [s for s in todo if s in pending]
    if todo:
        part_index, rows = _build_part(directory, manifest, todo, _quantizer_of(index))
        index.add_part(part_index, rows, ("memory", tuple(todo)))
    return index, _nlist(manifest, index)


def is_exact_stand_in(manifest: Manifest, index: ShardedIndex) -> bool:
    """True when an IVF index's codes are searched exactly (too few yet to train)."""
    return manifest.kind == "ivf" and nlist_of(index) is None and index.ntotal > 0


def _nlist(manifest: Manifest, index: ShardedIndex) -> int | None:
    if manifest.kind != "ivf":
        return None
    return nlist_of(index) or manifest.nlist or default_nlist(manifest.row_count)


def _live_firsts(manifest: Manifest) -> dict[int, str]:
    """first_row -> shard URL of the shards the segments hold (and that hold rows)."""
    shards = manifest.shards
    return {shards[s].first_row: s for s in manifest.index_shards if shards[s].rows}


def _key(ranges: Sequence[Sequence[int]]) -> tuple:
    return tuple(tuple(r) for r in ranges)


def _same(manifest: Manifest, old: Manifest, label: tuple) -> bool:
    """The shards of an in-memory part hold the same rows in both manifests."""
    return all(old.shards.get(s) == manifest.shards.get(s) for s in label[1])


def _by_row(manifest: Manifest, shards: Sequence[str]) -> list[str]:
    return sorted(dict.fromkeys(shards), key=lambda s: manifest.shards[s].first_row)


def _load_segment(
    directory: Path, manifest: Manifest, segment: Segment, ranges: list, mmap: bool
) -> Part | None:
    """The segment as a Part, its retired rows removed (then loaded, not mapped); None if the
    file is gone."""
    rel = segment.file
    retired = [r for r in segment.ranges if r not in ranges]
    path = directory / rel
    # A flipped byte in a FAISS file gives wrong hits silently: the file is checked against
    # the checksum of when it was written before it answers (about 2 s a GB on the 2-core
    # machine, once per segment per process; segments are reused across reloads).
    if path.exists():
        verify_checksum(directory, rel, segment.sha256)
    try:
        index = load_index(str(path), mmap=mmap and not retired)
    except RuntimeError as err:  # FAISS reports every read problem as RuntimeError
        if not path.exists():
            return None
        raise unreadable(directory, rel, err) from None
    check_segment(directory, manifest, segment, index)
    positional = isinstance(faiss.downcast_IndexBinary(index), faiss.IndexBinaryFlat)
    if positional:
        starts = np.cumsum([0] + [rows for _, rows in segment.ranges])
        spans = [(starts[i], starts[i + 1]) for i, r in enumerate(segment.ranges)
                 if r in retired]
        for lo, hi in reversed(spans):  # from the end, so earlier positions stay put
            index.remove_ids(faiss.IDSelectorRange(int(lo), int(hi)))
        return Part(index, RowRanges.of(ranges))
    for first, rows in retired:
        index.remove_ids(faiss.IDSelectorRange(first, first + rows))
    return Part(index, None)


def check_segment(
    directory: Path, manifest: Manifest, segment: Segment, index: faiss.IndexBinary
) -> None:
    """Raise unless ``index`` (loaded from the segment's file) has the manifest's K and kind and
    holds the segment's row count."""
    rel = segment.file
    view = faiss.downcast_IndexBinary(index)
    is_ivf = as_ivf(index) is not None
    known = isinstance(view, (faiss.IndexBinaryFlat, faiss.IndexBinaryIDMap, faiss.IndexBinaryIVF))
    if not known or index.d != manifest.bits or is_ivf != (manifest.kind == "ivf"):
        raise IndexStoreError(
            f"{directory}: {rel} is not a {manifest.bits}-bit {manifest.kind} index"
        )
    expected = sum(rows for _, rows in segment.ranges)
    if index.ntotal != expected:
        raise IndexStoreError(
            f"{directory}: {rel} holds {index.ntotal} codes, {MANIFEST} says {expected}"
        )


def _quantizer_of(index: ShardedIndex) -> np.ndarray | None:
    """The trained IVF centroids, uint8 (nlist, K/8), of the index's IVF parts; None if none."""
    for part in index.parts:
        ivf = as_ivf(part.index)
        if ivf is not None:
            quantizer = faiss.downcast_IndexBinary(ivf.quantizer)
            return faiss.vector_to_array(quantizer.xb).reshape(ivf.nlist, -1)
    return None


def _empty_part(bits: int, centroids: np.ndarray | None) -> faiss.IndexBinary:
    """A plain flat index, or an IVF on the given trained centroids."""
    if centroids is None:
        return faiss.IndexBinaryFlat(bits)
    ivf = new_index(bits, "ivf", len(centroids))
    ivf.quantizer.add(centroids)
    ivf.is_trained = True
    return ivf


def _shard_codes(directory: Path, manifest: Manifest, shards: Sequence[str]
                 ) -> Iterator[tuple[str, np.ndarray]]:
    """(shard, its codes uint8 (rows, K/8)) for each shard, one part read at a time."""
    size = manifest.bits // 8
    for shard in shards:
        part = read_part(directory, manifest, shard, ["code"])
        yield shard, codes_from_arrow(part["code"], size)


def _build_part(
    directory: Path, manifest: Manifest, shards: Sequence[str], centroids: np.ndarray | None
) -> tuple[faiss.IndexBinary, RowRanges | None]:
    """An index of the shards' codes (shards in row order): flat with RowRanges, or IVF with
    row ids on ``centroids``. Memory: the codes once, plus one part being read."""
    bits, entries = manifest.bits, manifest.shards
    index = _empty_part(bits, centroids)
    if centroids is None:
        # One add of a preallocated array: growing FAISS's vector shard by shard would copy it
        # at every doubling.
        codes = np.empty((sum(entries[s].rows for s in shards), bits // 8), np.uint8)
        at = 0
        for _, chunk in _shard_codes(directory, manifest, shards):
            codes[at:at + len(chunk)] = chunk
            at += len(chunk)
        index.add(codes)
        del codes
        return index, RowRanges.of([[entries[s].first_row, entries[s].rows] for s in shards])
    for shard, chunk in _shard_codes(directory, manifest, shards):
        first = entries[shard].first_row
        add_codes(index, chunk, np.arange(first, first + len(chunk)))
    return index, None


# --- writing (IndexWriter.finalize) ----------------------------------------------------------


def plan_segments(manifest: Manifest) -> tuple[list[Segment], list[str]]:
    """(segments kept as they are, shards to write into new segments in row order).

    A segment is rewritten when it lost rows (retired), when it is a file from before segments,
    and when it is the last one and smaller than MERGE_BELOW of a full one while new shards
    follow it."""
    live = _live_firsts(manifest)
    covered = set(manifest.index_shards)
    todo = [s for s in manifest.shards if s not in covered]
    keep: list[Segment] = []
    for segment in manifest.segments:
        intact = all(r[0] in live for r in segment.ranges)
        if intact and Path(segment.file).parent.as_posix() == SEGMENT_DIR:
            keep.append(segment)
        else:
            todo += [live[first] for first, _ in segment.ranges if first in live]
    todo = _by_row(manifest, [s for s in todo if manifest.shards[s].rows])
    segment_rows = SEGMENT_BYTES // (manifest.bits // 8)
    if todo and keep and _rows(keep[-1]) < MERGE_BELOW * segment_rows:
        last = keep.pop()
        todo = _by_row(manifest, [live[first] for first, _ in last.ranges] + todo)
    return keep, todo


def _rows(segment: Segment) -> int:
    return sum(rows for _, rows in segment.ranges)


def group_shards(manifest: Manifest, shards: Sequence[str]) -> list[list[str]]:
    """Consecutive shards in groups of at most SEGMENT_BYTES of codes (a larger shard alone)."""
    limit = SEGMENT_BYTES // (manifest.bits // 8)
    groups: list[list[str]] = []
    rows = 0
    for shard in shards:
        n = manifest.shards[shard].rows
        if not groups or rows + n > limit:
            groups.append([])
            rows = 0
        groups[-1].append(shard)
        rows += n
    return [g for g in groups if g]


def write_segments(
    directory: Path,
    manifest: Manifest,
    keep: Sequence[Segment],
    shards: Sequence[str],
    generation: int,
    train_sample: int | None = None,
) -> tuple[list[Segment], int | None] | None:
    """Write the shards (in row order) as new segment files named after ``generation``; return
    (their manifest entries, nlist), or None when an IVF has too few codes to train yet.

    An IVF reuses the quantizer of any existing segment (it stays trained); otherwise it is
    trained on a sample of every live row's codes (``train_sample`` codes, default
    ``TRAIN_POINTS_PER_LIST * nlist``), gathered one part at a time. Nothing is committed here:
    the caller commits the manifest that references the files."""
    centroids, nlist = None, None
    if manifest.kind == "ivf":
        centroids = _existing_centroids(directory, manifest)
        if centroids is None:
            nlist = manifest.nlist or default_nlist(manifest.row_count)
            if manifest.row_count < MIN_POINTS_PER_CENTROID * nlist:
                return None
            centroids = _train(directory, manifest, nlist, train_sample)
        nlist = len(centroids)
    (directory / SEGMENT_DIR).mkdir(exist_ok=True)
    fsync_dir(directory)
    entries = manifest.shards
    written = []
    for i, group in enumerate(group_shards(manifest, shards)):
        rel = f"{SEGMENT_DIR}/{generation:06d}-{i:04d}.faiss"
        index, _ = _build_part(directory, manifest, group, centroids)
        atomic_write(directory / rel, lambda f, index=index: write_index(index, f))
        del index
        written.append(Segment(rel, [[entries[s].first_row, entries[s].rows] for s in group],
                               sha256_file(directory / rel)))
    fsync_dir(directory / SEGMENT_DIR)  # the renames, before a manifest names the files
    return written, nlist


def _existing_centroids(directory: Path, manifest: Manifest) -> np.ndarray | None:
    """The quantizer of the first readable IVF segment of the manifest (kept or not)."""
    for segment in manifest.segments:
        try:
            index = load_index(str(directory / segment.file), mmap=True)
        except RuntimeError:
            continue
        ivf = as_ivf(index)
        if ivf is not None:
            quantizer = faiss.downcast_IndexBinary(ivf.quantizer)
            return faiss.vector_to_array(quantizer.xb).reshape(ivf.nlist, -1).copy()
    return None


def _train(directory: Path, manifest: Manifest, nlist: int, train_sample: int | None) -> np.ndarray:
    """Train an IVF quantizer on a seeded random sample of the live codes; its centroids."""
    shards = _by_row(manifest, [s for s, e in manifest.shards.items() if e.rows])
    total = manifest.row_count
    want = min(total, train_sample or TRAIN_POINTS_PER_LIST * nlist)
    want = max(want, min(total, MIN_POINTS_PER_CENTROID * nlist))
    chosen = np.sort(np.random.default_rng(0).choice(total, size=want, replace=False))
    sample = np.empty((want, manifest.bits // 8), np.uint8)
    at = start = 0
    for _, codes in _shard_codes(directory, manifest, shards):
        lo, hi = np.searchsorted(chosen, [start, start + len(codes)])
        sample[at:at + hi - lo] = codes[chosen[lo:hi] - start]
        at += hi - lo
        start += len(codes)
    ivf = new_index(manifest.bits, "ivf", nlist)
    try:
        train_ivf(ivf, sample, max_per_list=max(TRAIN_POINTS_PER_LIST, -(-want // nlist)))
    except ValueError as err:
        raise IndexStoreError(f"{directory}: cannot train the IVF index: {err}") from None
    quantizer = faiss.downcast_IndexBinary(ivf.quantizer)
    return faiss.vector_to_array(quantizer.xb).reshape(nlist, -1).copy()


def remove_unreferenced(directory: Path, manifest: Manifest) -> None:
    """Delete segment files (and .tmp files) under SEGMENT_DIR that the manifest does not
    reference: replaced segments, and those of a finalize that crashed before its commit.
    Call only with the writer's lock held, after committing ``manifest``. A reader that has a
    deleted file mapped keeps reading it; one that opens it later reads the parts instead."""
    folder = directory / SEGMENT_DIR
    if not folder.is_dir():
        return
    keep = {segment.file for segment in manifest.segments}
    for f in folder.iterdir():
        if f.is_file() and f"{SEGMENT_DIR}/{f.name}" not in keep:
            f.unlink(missing_ok=True)
    # Files of the one-file FAISS side from before segments, now replaced.
    for f in directory.glob("index-*.faiss"):
        if f.is_file() and f.name not in keep:
            f.unlink(missing_ok=True)
    if os.name == "posix":
        fsync_dir(folder)
