"""Checksums by block: verify only the bytes a query reads of a large file of the index.

A shard's lookup and vectors files are hundreds of MB (244 and 128 bytes a row). Hashing one
whole on its first use made a cold first query read and hash every such file its hits
touched (0.6 s for each 1 M-row shard here). At commit the writer records each file's SHA-256
and the SHA-256 of each of its BLOCK_BYTES blocks (the first 128 bits: ``file_digests``), the
latter in the shard's digests file (``write_digests``: the lookup file's block digests, then
the vectors file's), whose own SHA-256 the manifest keeps. A reader reads and checks a
shard's digests file once (``read_digests``), then verifies a block of the lookup or vectors
file the first time it reads from it (``BlockChecks``), and refuses the file in one line when
one differs. ``check`` still hashes whole files.

Entries committed before digests files keep their block digests in the manifest, as hex
(``lookup_blocks``, ``vectors_blocks``), of blocks of their ``block_bytes``.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np

from dahash_index.store.layout import IndexStoreError, checksum_error, unreadable

# A hit reads one row of each of ~30 columns, each in its own stretch of the lookup file, and
# verifies each stretch's whole block: 50 new hits of a 100 M-row index hashed ~1,500 blocks,
# 375 MB at 256 KiB (0.4 s here, benchmarks/scale.py), 24 MB at 16 KiB. Each 16 KiB costs 16
# bytes in the digests file: 360 kB for a 1 M-row shard, read and hashed once per reader.
BLOCK_BYTES = 1 << 14
LEGACY_BLOCK_BYTES = 1 << 20  # entries committed before ``block_bytes`` was recorded
DIGEST_BYTES = 16  # kept of each block's SHA-256: 128 bits
# Threads hashing the blocks of one read: 50 new hits of a 100 M-row index hash ~1,500 blocks.
HASH_THREADS = min(4, os.cpu_count() or 1)
_DIGESTS_MAGIC = b"DHDIGES1"
_DIGESTS_HEADER = struct.Struct("<8sQQ")  # magic, lookup blocks, vectors blocks


def file_digests(path: str | os.PathLike, block_bytes: int | None = None) -> tuple[str, bytes]:
    """(hex SHA-256 of the whole file, the DIGEST_BYTES digests of its blocks of
    ``block_bytes``, default BLOCK_BYTES, concatenated) in one read."""
    block_bytes = block_bytes or BLOCK_BYTES
    whole = hashlib.sha256()
    blocks = []
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(block_bytes), b""):
            whole.update(block)
            blocks.append(hashlib.sha256(block).digest()[:DIGEST_BYTES])
    return whole.hexdigest(), b"".join(blocks)


def write_digests(f: BinaryIO, lookup: bytes, vectors: bytes = b"") -> None:
    """A shard's digests file into the open binary file ``f``: ``file_digests``'s block
    digests of its lookup file and of its vectors file (none without vectors)."""
    f.write(_DIGESTS_HEADER.pack(_DIGESTS_MAGIC, len(lookup) // DIGEST_BYTES,
                                 len(vectors) // DIGEST_BYTES))
    f.write(lookup)
    f.write(vectors)


def read_digests(directory: Path, rel: str, sha256: str | None) -> tuple[bytes, bytes]:
    """A shard's digests file ``rel`` -> (the lookup file's block digests, the vectors
    file's), checked against ``sha256`` (its SHA-256 at commit); IndexStoreError naming the
    file when it is missing, unreadable, differs or is malformed."""
    try:
        data = (directory / rel).read_bytes()
    except OSError as err:
        raise unreadable(directory, rel, err) from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise checksum_error(directory, rel)
    head = _DIGESTS_HEADER.size
    if len(data) < head:
        raise IndexStoreError(f"{directory}: {rel} is not a digests file (too short)")
    magic, lookup, vectors = _DIGESTS_HEADER.unpack_from(data)
    if magic != _DIGESTS_MAGIC or len(data) != head + (lookup + vectors) * DIGEST_BYTES:
        raise IndexStoreError(f"{directory}: {rel} is not a digests file of this format")
    split = head + lookup * DIGEST_BYTES
    return data[head:split], data[split:]


class BlockChecks:
    """The block digests of one file of an index (``rel`` under ``directory``), checked
    against the file lazily: ``verify`` hashes the blocks not verified yet. Safe to share
    between threads: two may verify one block, and each marks it only once it matched."""

    def __init__(self, directory: Path, rel: str, digests: bytes | str,
                 block_bytes: int | None = None) -> None:
        """digests: ``file_digests``'s (or, from a manifest, as hex), of blocks of
        ``block_bytes`` (None: an entry from before it was recorded, LEGACY_BLOCK_BYTES)."""
        self.directory, self.rel = directory, rel
        try:
            self._digests = bytes.fromhex(digests) if isinstance(digests, str) else digests
        except ValueError:
            raise checksum_error(directory, rel) from None
        self.block_bytes = block_bytes or LEGACY_BLOCK_BYTES
        try:
            self._data = np.memmap(directory / rel, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as err:
            raise unreadable(directory, rel, err) from None
        blocks = -(-len(self._data) // self.block_bytes)
        if len(self._digests) != blocks * DIGEST_BYTES:
            self._refuse()  # the file is longer or shorter than at commit
        self._verified = np.zeros(blocks, dtype=bool)
        self.complete = blocks == 0  # every block verified: nothing left to check

    @property
    def size(self) -> int:
        return len(self._data)

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``start .. end - 1`` of the file (verify them first)."""
        return bytes(self._data[start:end])

    def verify_range(self, start: int, end: int) -> None:
        """Verify the blocks holding bytes ``start .. end - 1``."""
        if end > start:
            self.verify(np.arange(start // self.block_bytes, (end - 1) // self.block_bytes + 1))

    def verify_bytes(self, first: np.ndarray, last: np.ndarray) -> None:
        """Verify the blocks holding each span of bytes ``first[i] .. last[i]`` (int (m,),
        inclusive)."""
        if self.complete:
            return
        low, high = first // self.block_bytes, last // self.block_bytes
        blocks = [low, high]
        for a, b in zip(low[high - low > 1].tolist(), high[high - low > 1].tolist(),
                        strict=True):  # a span over more than two blocks: rare
            blocks.append(np.arange(a + 1, b))
        self.verify(np.concatenate(blocks))

    def verify(self, blocks: np.ndarray) -> None:
        """Hash every block of ``blocks`` (int, any order, repeats) not verified yet; raise
        IndexStoreError naming the file when one differs from its digest at commit."""
        blocks = np.asarray(blocks, dtype=np.int64)
        if self.complete or not len(blocks):
            return
        if blocks.min() < 0 or blocks.max() >= len(self._verified):
            self._refuse()  # a read outside the file: its structure is damaged
        wanted = np.zeros(len(self._verified), dtype=bool)
        wanted[blocks] = True  # a scatter, not a sort: hits bring thousands of repeats
        todo = np.flatnonzero(wanted & ~self._verified)
        self._prefetch(todo)
        threads = min(HASH_THREADS, len(todo) // 4)
        if threads > 1:  # hashlib lets go of the GIL: the blocks of many hits, on every core
            with ThreadPoolExecutor(threads) as pool:
                matched = all(pool.map(self._matches, np.array_split(todo, threads)))
        else:
            matched = self._matches(todo)
        if not matched:
            self._refuse()
        self._verified[todo] = True
        if self._verified.all():
            self.complete = True

    def _matches(self, blocks: np.ndarray) -> bool:
        """Whether every block of ``blocks`` (int) hashes to its digest."""
        size = self.block_bytes
        for b in blocks.tolist():
            found = hashlib.sha256(self._data[b * size:(b + 1) * size]).digest()[:DIGEST_BYTES]
            if found != self._digests[b * DIGEST_BYTES:(b + 1) * DIGEST_BYTES]:
                return False
        return True

    def _prefetch(self, blocks: np.ndarray) -> None:
        """Ask the kernel to read ``blocks`` (int, ascending) now, all at once: from a cold
        disk, hashing them one by one would otherwise wait for each block's read in turn."""
        if len(blocks) < 2:
            return
        starts = np.flatnonzero(np.diff(blocks, prepend=-2) != 1)  # runs of adjacent blocks
        ends = np.append(starts[1:], len(blocks)) - 1
        for first, last in zip(blocks[starts].tolist(), blocks[ends].tolist(), strict=True):
            offset = first * self.block_bytes // mmap.PAGESIZE * mmap.PAGESIZE
            length = min((last + 1) * self.block_bytes, self.size) - offset
            try:
                self._data._mmap.madvise(mmap.MADV_WILLNEED, offset, length)
            except OSError:
                return  # only a hint: the hashing reads the blocks all the same

    def _refuse(self) -> None:
        raise checksum_error(self.directory, self.rel)
