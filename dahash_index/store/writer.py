"""Adding shards to an index directory, one crash-safe commit each (see the package docstring)."""

from __future__ import annotations

import copy
import json
import os
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dahash_index.files import atomic_write, fsync_dir, sha256_file
from dahash_index.indexes.binary import check_codes
from dahash_index.model.identity import ModelIdentity
from dahash_index.store import blocks
from dahash_index.store.directory import create_index_dir, lock_index_dir, remove_leftovers
from dahash_index.store.faiss_file import plan_segments, remove_unreferenced, write_segments
from dahash_index.store.geoparquet import with_footprints
from dahash_index.store.layout import (
    ERRORS_SCHEMA,
    KINDS,
    MANIFEST,
    METADATA_SCHEMA,
    SHARD_FILES,
    IndexStoreError,
    ModelMismatchError,
    metadata_schema,
    now,
)
from dahash_index.store.lookup import write_lookup
from dahash_index.store.manifest import (
    SEGMENT_DIR,
    Manifest,
    ShardEntry,
    check_files,
    check_model,
    read_manifest,
    write_manifest,
)
from dahash_index.store.parts import codes_to_arrow, conform, write_table
from dahash_index.store.staging import (
    STAGING,
    StagedResult,
    read_rows,
    read_vectors,
    remove_result,
)
from dahash_index.store.vectors import check_vectors, write_vectors


class IndexWriter:
    """Adds shards to an index directory, one atomic commit each; see the package docstring.

    One writer per directory at a time (an exclusive lock, released by ``close``, by garbage
    collection or by the process's end). Usable as a context manager.
    """

    def __init__(self, path: Path, manifest: Manifest, lock_fd: int) -> None:
        self.path = path
        self._manifest = manifest
        self._close_lock = weakref.finalize(self, os.close, lock_fd)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        model: ModelIdentity,
        kind: str = "flat",
        nlist: int | None = None,
        extra: Mapping | None = None,
        wait: float = 0.0,
        check: bool = True,
    ) -> IndexWriter:
        """Create an index directory, or reopen one to add shards to it.

        model: the identity of the checkpoint the codes come from (``Checkpoint.identity``).
        A new directory gets a copy of its file as model.pt and an empty manifest.
        Reopening refuses (ModelMismatchError) a model whose SHA-256 differs from the
        index's, and (IndexStoreError) a different ``kind``, a given ``nlist`` or ``extra``
        different from the stored ones (None means "whatever the index has"). An index that
        holds no row yet is not bound by its parameters: they were never used, and the ones
        given here replace them with the next commit. An existing non-empty directory without
        manifest.json is refused, never written into. wait: seconds to wait for another writer.
        check: refuse an index a file of which is missing (``check_index --repair`` opens
        without, to drop the shards whose files are missing).
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if extra is not None:
            extra = json.loads(json.dumps(dict(extra)))  # as stored: tuples become lists
        if nlist is not None and kind != "ivf":
            raise ValueError("nlist applies only to kind='ivf'")
        path = Path(path)
        if not (path / MANIFEST).is_file():
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise IndexStoreError(
                    f"{path}: exists and is not a dahash index (no {MANIFEST}); refusing to "
                    "write into it"
                )
            create_index_dir(path, model, kind, nlist, extra)
        lock_fd = lock_index_dir(path, wait)
        try:
            manifest = read_manifest(path)
            check_model(path, manifest, model)
            if manifest.row_count == 0:
                manifest = _unbound(manifest, kind, nlist, extra)
            if kind != manifest.kind:
                raise IndexStoreError(f"{path}: index kind is {manifest.kind!r}, not {kind!r}")
            if nlist is not None and manifest.nlist not in (None, nlist):
                raise IndexStoreError(f"{path}: index nlist is {manifest.nlist}, not {nlist}")
            if extra is not None and extra != manifest.extra:
                raise IndexStoreError(f"{path}: index was built with {_describe(manifest.extra)}"
                                      f", not {_describe(extra)}")
            if check:
                check_files(path, manifest)
            remove_leftovers(path, manifest)
        except BaseException:
            os.close(lock_fd)
            raise
        if nlist is not None and manifest.nlist is None:
            manifest = manifest.replace(nlist=nlist)  # recorded with the next commit
        return cls(path, manifest, lock_fd)

    @property
    def manifest(self) -> Manifest:
        """A copy of the last committed manifest."""
        return copy.deepcopy(self._manifest)

    def is_committed(self, shard_url: str) -> bool:
        return shard_url in self._manifest.shards

    def entry(self, shard_url: str) -> ShardEntry | None:
        """The committed shard's manifest entry, or None."""
        return self._manifest.shards.get(shard_url)

    def commit_shard(
        self,
        shard_name: str,
        shard_url: str,
        codes: np.ndarray,
        rows: pa.Table | Sequence[Mapping[str, Any]],
        errors: Sequence[Mapping[str, Any]],
        fingerprint: str | None = None,
        replace: bool = False,
        precision: str | None = None,
        vectors: np.ndarray | None = None,
    ) -> range:
        """Make one shard durable, whole or not at all; return the row ids its rows got.

        The shard is known by its URL (two roots may hold shards of one name); ``shard_name``
        is what its rows' ``shard`` column says. codes: uint8 (n, K/8), row i of ``rows`` goes
        with code i. rows: n rows of METADATA_SCHEMA's columns (a table or dicts; absent
        nullable columns become null). errors: dicts of ERRORS_SCHEMA's columns, the scenes
        that could not be indexed. n may be 0: a shard whose every scene failed still commits
        with its errors. fingerprint: what the shard held when read (``ShardReader.fingerprint``).
        replace: the URL is committed already; its old rows are retired in this same commit, so
        readers see the old rows or the new ones, never both. Row ids are never reused.
        precision: the arithmetic the backbone ran in ("fp32", "tf32", "bf16"), recorded in
        the shard's manifest entry (codes of every precision are searched together).
        vectors: the rows' re-rank vectors (n, D) float (``model.rerank``), or None.
        """
        self._check_open()
        if not shard_url:
            raise ValueError(f"shard {shard_name!r}: the shard URL must not be empty")
        m = self._manifest
        old = m.shards.get(shard_url)
        if old is not None and not replace:
            raise IndexStoreError(f"{self.path}: shard {shard_url!r} is already committed")
        codes = check_codes(codes, m.bits // 8)
        n = len(codes)
        scene = conform(rows, METADATA_SCHEMA, f"rows of shard {shard_name!r}")
        if scene.num_rows != n:
            raise ValueError(f"shard {shard_name!r}: {n} codes but {scene.num_rows} rows")
        errs = conform(errors, ERRORS_SCHEMA, f"errors of shard {shard_name!r}")
        if vectors is not None:
            vectors = check_vectors(vectors, n, f"shard {shard_name!r}")
        for what, table in (("rows", scene), ("errors", errs)):
            if set(table["shard"].unique().to_pylist()) - {shard_name}:
                raise ValueError(f"shard {shard_name!r}: {what} name another shard")

        first = m.next_row_id
        ids = np.arange(first, first + n, dtype=np.int64)
        part = pa.Table.from_arrays(
            [pa.array(ids), codes_to_arrow(codes), *scene.columns],
            schema=metadata_schema(m.bits),
        )
        # A GeoParquet layer for GIS tools; the index's own reads never ask for the column.
        part = with_footprints(part)
        generation = m.generation + 1
        # A name no committed manifest uses: an interrupted attempt's file is never referenced.
        name = f"{generation:06d}.parquet"
        batches: list[int] = []  # where the lookup file's batches end (``write_lookup``)
        files = {
            "part": (f"parts/{name}", lambda f: write_table(part, f)),
            "errors": (f"errors/{name}", lambda f: write_table(errs, f)),
            "lookup": (f"lookup/{generation:06d}.arrow",
                       lambda f: batches.extend(write_lookup(scene, f))),
        }
        if vectors is not None:
            files["vectors"] = (f"vectors/{generation:06d}.npy",
                                lambda f: write_vectors(vectors, f))
        checksums = {"block_bytes": blocks.BLOCK_BYTES}
        block_digests = {"lookup": b"", "vectors": b""}
        for kind, (rel, write) in files.items():
            atomic_write(self.path / rel, write)
            if kind in block_digests:  # large: readers verify them block by block
                checksums[f"{kind}_sha256"], block_digests[kind] = \
                    blocks.file_digests(self.path / rel, checksums["block_bytes"])
            else:
                checksums[f"{kind}_sha256"] = sha256_file(self.path / rel)
        digests = f"digests/{generation:06d}.bin"
        atomic_write(self.path / digests,
                     lambda f: blocks.write_digests(f, block_digests["lookup"],
                                                    block_digests["vectors"]))
        entry = ShardEntry(shard_name, fingerprint, files["part"][0], files["errors"][0], first,
                           n, errs.num_rows, lookup=files["lookup"][0], precision=precision,
                           vectors=files["vectors"][0] if vectors is not None else None,
                           lookup_batches=list(batches), digests=digests,
                           digests_sha256=sha256_file(self.path / digests), **checksums)
        # The renames must be durable before the manifest that references them is.
        for folder in SHARD_FILES.values():
            fsync_dir(self.path / folder)
        shards = {k: e for k, e in m.shards.items() if k != shard_url}
        self._commit(_retire(m, [shard_url]).replace(
            row_count=m.row_count - (old.rows if old else 0) + n,
            next_row_id=first + n,
            generation=generation,
            shards={**shards, shard_url: entry},
        ))
        return range(first, first + n)

    @property
    def staging(self) -> Path:
        """Where workers write shard results for ``adopt`` (see ``store.staging``)."""
        return self.path / STAGING

    def adopt(self, result: StagedResult) -> range:
        """Commit a staged shard result and delete it; return the row ids its rows got.

        Row ids are assigned here, by the one committer, so workers anywhere can encode shards
        without coordinating. A URL already committed is replaced in the same commit (the
        planner staged it because it changed or had errors). A result encoded with another
        model, or for another K, is refused (ModelMismatchError) and left in place.
        """
        self._check_open()
        m = self._manifest
        if (result.model_sha256, result.bits) != (m.model_sha256, m.bits):
            raise ModelMismatchError(
                f"{result.path}: shard {result.shard_url} was encoded with model "
                f"{result.model_sha256[:12]} ({result.bits} bits), but {self.path} holds "
                f"model {m.model_sha256[:12]} ({m.bits} bits); not adopted"
            )
        codes, rows, errors = read_rows(result)
        ids = self.commit_shard(result.shard_name, result.shard_url, codes, rows, errors,
                                fingerprint=result.fingerprint,
                                replace=result.shard_url in m.shards,
                                precision=result.precision, vectors=read_vectors(result))
        remove_result(result)  # committed: a crash before this leaves a stale copy, never a gap
        return ids

    def drop_shards(self, shard_urls: Sequence[str], drop_index_file: bool = False) -> None:
        """Remove shards from the manifest in one commit (their rows are retired), so that the
        next build indexes them again; with ``drop_index_file`` the FAISS file is forgotten too
        and rebuilt from the parts. Used to recover from damaged files."""
        self._check_open()
        m = self._manifest
        unknown = [u for u in shard_urls if u not in m.shards]
        if unknown:
            raise IndexStoreError(f"{self.path}: no committed shard {unknown[0]!r}")
        retired = _retire(m, shard_urls)
        if drop_index_file:
            retired = retired.replace(index_file=None, index_shards=[], index_retired=[])
        gone = sum(m.shards[u].rows for u in shard_urls)
        self._commit(retired.replace(
            row_count=m.row_count - gone,
            generation=m.generation + 1,
            shards={k: e for k, e in m.shards.items() if k not in set(shard_urls)},
        ))

    def finalize(self, ivf_train_sample: int | None = None) -> None:
        """Write the FAISS side of every committed shard as segment files and commit them.

        Segments (see ``store.faiss_file``): files of at most ``SEGMENT_BYTES`` of codes under
        ``index.faiss/``, written streaming, one part at a time: peak memory is about two
        segments' codes, whatever the size of the index. Segments of an earlier finalize that
        lost no rows are kept; new shards get new segments (joined by a small last segment),
        and a segment that lost retired rows is rewritten. An IVF keeps its trained
        quantizer; a new one is trained on a random sample of ``ivf_train_sample`` codes
        (default ``TRAIN_POINTS_PER_LIST * nlist``) with the index's nlist or
        ``default_nlist(row_count)``. While an IVF has too few codes to train, nothing is
        written (readers search its codes exactly). Nothing happens when the segments already
        cover every shard. The new files are durable before the manifest that references
        them is committed; the files it no longer references are deleted only after.
        """
        self._check_open()
        if ivf_train_sample is not None and ivf_train_sample < 1:
            raise ValueError(f"ivf_train_sample must be positive, got {ivf_train_sample}")
        m = self._manifest
        shards = list(m.shards)
        keep, todo = plan_segments(m)
        if m.index_file == SEGMENT_DIR and not todo and keep == m.segments:
            if m.index_shards != shards or m.index_retired:  # 0-row shards only
                self._commit(m.replace(generation=m.generation + 1, index_shards=shards,
                                       index_retired=[]))
            return
        generation = m.generation + 1
        written = write_segments(self.path, m, keep, todo, generation, ivf_train_sample)
        if written is None:
            return  # an IVF with too few codes to train: searched exactly until then
        new, nlist = written
        self._commit(m.replace(
            nlist=nlist if m.kind == "ivf" else m.nlist,
            generation=generation,
            index_file=SEGMENT_DIR,
            index_segments=[*keep, *new],
            index_shards=shards,
            index_retired=[],
        ))
        # Only now that no durable manifest references them.
        remove_unreferenced(self.path, self._manifest)

    def close(self) -> None:
        """Release the directory's lock; the writer cannot commit after this."""
        self._close_lock()

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if not self._close_lock.alive:
            raise IndexStoreError(f"{self.path}: this IndexWriter is closed")

    def _commit(self, manifest: Manifest) -> None:
        manifest = manifest.replace(updated=now())
        write_manifest(self.path, manifest)
        # The rename has happened: memory follows the disk even if the fsync below fails.
        self._manifest = manifest
        fsync_dir(self.path)


def _describe(extra: Mapping) -> str:
    """A build's recorded parameters (``extra``: bands, tiling) as a user gave them."""
    parts = []
    for key, value in sorted(extra.items()):
        if isinstance(value, list):
            value = ",".join(map(str, value))
        elif isinstance(value, dict):
            value = " ".join(f"{k}={v}" for k, v in value.items())
        parts.append(f"{key} {value}" if value is not None else f"no {key}")
    return ", ".join(parts) or "no parameters"


def _unbound(manifest: Manifest, kind: str, nlist: int | None, extra: Mapping | None
             ) -> Manifest:
    """An index without rows takes the parameters of the build that opens it."""
    same = kind == manifest.kind
    return manifest.replace(
        kind=kind,
        nlist=nlist,
        extra=manifest.extra if extra is None else dict(extra),
        index_file=manifest.index_file if same else None,
        index_segments=manifest.segments if same else [],
        index_shards=manifest.index_shards if same else [],
    )


def _retire(manifest: Manifest, shard_urls: Sequence[str]) -> Manifest:
    """The manifest with the FAISS segments' rows of ``shard_urls`` marked as retired (the
    segments keep them until the next finalize; readers remove them)."""
    covered = set(manifest.index_shards)
    gone = [u for u in shard_urls if u in covered]
    ranges = [[manifest.shards[u].first_row, manifest.shards[u].rows] for u in gone
              if manifest.shards[u].rows]
    return manifest.replace(
        index_shards=[s for s in manifest.index_shards if s not in set(gone)],
        index_retired=[*manifest.index_retired, *ranges],
    )
