"""The Python query API: open an index once, query many scenes or codes in one call.

    from dahash_index.query.scene_index import SceneIndex
    index = SceneIndex.open("runs/index")
    hits = index.query(["a.tif", "b.jpg"], top=50)        # pyarrow.Table, one row per hit
    hits.to_pandas()

Queries may be file paths or URLs (anything fsspec opens), encoded bytes, (H, W, 3) uint8
arrays, or already-computed packed codes ((n, K/8) uint8 via ``query_codes``). The result
is one table: query number and name, rank, Hamming distance, row id and the scene's
metadata. A query that cannot be decoded gets one row with its ``error`` and no hit, and the
other queries go on. Safe to share between threads.

A ``SceneIndex`` answers from the committed state it opened. ``refresh()`` moves it to the
newest committed state (adding only the new shards' codes); ``reload="auto"`` does that by
itself, looking at the manifest at most once a second, so a long-lived process sees a build's
shards as they commit. Each query uses one state from start to end.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from dahash_index import indexes
from dahash_index.arrow_arrays import numeric_array, string_array
from dahash_index.errors import check_int
from dahash_index.model.checkpoint import load_checkpoint
from dahash_index.model.encoder import SceneEncoder
from dahash_index.model.orientations import (
    DEFAULT_QUERY_ORIENTATIONS,
    QUERY_ORIENTATIONS,
    orient_image,
)
from dahash_index.model.rerank import (
    DEFAULT_RERANK,
    DEFAULT_SHORTLIST,
    RERANKS,
    near_score_of,
    rerank_order,
)
from dahash_index.query import ranking
from dahash_index.query.inputs import load_query
from dahash_index.scenes.chips import Tiling, Window
from dahash_index.scenes.device_jpeg import decode_batch
from dahash_index.scenes.scene import DEFAULT_MAX_PIXELS
from dahash_index.store import MANIFEST, MODEL, IndexReader, IndexStoreError

QueryInput = str | Path | bytes | np.ndarray


_log = logging.getLogger(__name__)

RELOADS = ("never", "auto")
RELOAD_INTERVAL_S = 1.0  # reload="auto" looks at the manifest at most this often


class SceneIndex:
    """A read-only, opened index plus the model that made its codes."""

    def __init__(self, reader: IndexReader, encoder_device: str | None = None,
                 nprobe: int | None = None, reload: str = "never",
                 storage_options: dict | None = None, precision: str | None = None) -> None:
        if reload not in RELOADS:
            raise ValueError(f"reload must be one of {RELOADS}, got {reload!r}")
        if nprobe is not None:
            check_int("nprobe", nprobe, 1)
        self.bits = reader.bits
        self.nprobe = nprobe
        self.reload = reload
        self.storage_options = dict(storage_options or {})
        self._state = (reader, reader.faiss_index())
        self._device = encoder_device
        self._precision = precision
        self._encoder: SceneEncoder | None = None
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._checked = time.monotonic()
        self._manifest_stat = _stat(reader.path / MANIFEST)

    @classmethod
    def open(cls, path: str | Path, model: str | Path | None = None, mmap: bool = False,
             nprobe: int | None = None, device: str | None = None, reload: str = "never",
             storage_options: dict | None = None, precision: str | None = None) -> SceneIndex:
        """Open ``path``; with ``model``, refuse it unless it is the model the index was built
        with (``ModelMismatchError``). reload: "never" (answer from the state opened, or
        refreshed with ``refresh()``) or "auto" (see the module docstring).
        storage_options: fsspec options for reading query URLs (e.g. an S3 endpoint).
        device, precision: where and in what arithmetic queries are encoded (default: the
        GPU when there is one, in its default precision); any precision can query an index
        built in any other (their codes agree within the README's figures)."""
        reader = IndexReader.open(path, mmap=mmap)
        if model is not None:
            reader.check_model(model)
        return cls(reader, device, nprobe, reload, storage_options, precision)

    @property
    def reader(self) -> IndexReader:
        """The reader of the committed state queries are answered from now."""
        return self._state[0]

    @property
    def row_count(self) -> int:
        return self._state[0].row_count

    def refresh(self) -> bool:
        """Move to the newest committed state; True if there was a newer one. Queries running
        meanwhile finish on the state they started with. Raises IndexStoreError (and keeps
        the current state) when the newest state cannot be read."""
        with self._refresh_lock:
            stat = _stat(self.reader.path / MANIFEST)
            reader = self.reader.reopen()
            changed = reader is not self.reader
            if changed:
                self._state = (reader, reader.faiss_index())
            self._manifest_stat = stat  # only once that state is in use
            return changed

    def _current(self) -> tuple[IndexReader, faiss.IndexBinary]:
        """The state a query uses; with reload="auto", refreshed first when the manifest was
        replaced (a stat at most once a second; one thread refreshes, the others go on).
        A refresh that fails is logged, the query is answered from the current state, and the
        next check tries again."""
        if self.reload == "auto" and time.monotonic() - self._checked >= RELOAD_INTERVAL_S:
            self._checked = time.monotonic()
            if _stat(self.reader.path / MANIFEST) != self._manifest_stat:
                if self._refresh_lock.acquire(blocking=False):
                    self._refresh_lock.release()
                    try:
                        self.refresh()
                    except (ValueError, OSError) as err:
                        _log.warning("cannot reload %s, answering from generation %d: %s",
                                     self.reader.path, self.reader.generation, err)
        return self._state

    @property
    def encoder(self) -> SceneEncoder:
        """The backbone + hash network, loaded on first use (code queries never need it)."""
        with self._lock:
            if self._encoder is None:
                checkpoint = load_checkpoint(self.reader.model_path)
                if checkpoint.sha256 != self.reader.model_sha256:  # never codes by another
                    raise IndexStoreError(
                        f"{self.reader.path}: {MODEL} is not the model the index was built "
                        f"with (sha256 {checkpoint.sha256[:12]}, the manifest says "
                        f"{self.reader.model_sha256[:12]}); `dahash-index check "
                        f"{self.reader.path}` names the damage")
                self._encoder = SceneEncoder(checkpoint, self._device, self._precision)
            return self._encoder

    @property
    def tiling(self) -> Tiling | None:
        """How the index cut large scenes into chips (``build --tile``), or None."""
        found = self.reader.manifest.extra.get("tiling")
        return Tiling(found["tile"], found["stride"], found["min_side"], found["min_valid"]) \
            if found else None

    def encode(self, queries: Sequence[QueryInput], bands=None, batch_size: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS
               ) -> tuple[np.ndarray, list[str], list[str | None]]:
        """-> (codes (n, K/8) uint8 for the decodable queries, names of all n queries,
        per-query error or None). Codes rows follow the queries whose error is None. Each
        query is encoded whole (``encode_chips`` cuts large ones as the index's scenes were).
        Queries are decoded and encoded ``batch_size`` at a time, so memory stays bounded.
        An image of more than ``max_pixels`` pixels is refused from its header."""
        encoded = self.encode_chips(queries, bands, batch_size, max_pixels, whole=True)
        return encoded.codes, encoded.names, encoded.errors

    def encode_chips(self, queries: Sequence[QueryInput], bands=None,
                     batch_size: int | None = None,
                     max_pixels: int = DEFAULT_MAX_PIXELS, window: Window | None = None,
                     whole: bool = False, orientations: int = 1) -> EncodedQueries:
        """The codes (and re-rank vectors) of the queries: see ``EncodedQueries``. A query
        gives one code, or, when the index was built with ``--tile`` and it is larger than the
        index's chips (and ``whole`` is False), one per chip. window: (col_off, row_off,
        width, height) of each query only. orientations: 1, 4 or 8: each image (chip) is also
        encoded turned and flipped (``QUERY_ORIENTATIONS``), one code each."""
        if orientations not in QUERY_ORIENTATIONS:
            raise ValueError(f"orientations must be one of {tuple(QUERY_ORIENTATIONS)}, got "
                             f"{orientations!r}")
        turns = QUERY_ORIENTATIONS[orientations]
        tiling = None if whole or window is not None else self.tiling
        encoder = self.encoder
        size = batch_size or encoder.batch_size
        defer = encoder.device.type == "cuda"  # nvJPEG decodes JPEG queries in batches
        names: list[str] = []
        errors: list[str | None] = []
        owners: list[int] = []
        codes = [np.zeros((0, self.bits // 8), np.uint8)]
        vectors: list[np.ndarray] = []

        def failed(row: dict) -> None:  # a JPEG neither nvJPEG nor the CPU could decode
            errors[row["owner"]] = row["reason"]

        def loaded() -> Iterator[tuple[list[int], list]]:
            """(owners, images) batches: the next one is read while the device encodes."""
            for start in range(0, len(queries), size):
                inputs, input_owners = [], []
                for i, query in enumerate(queries[start:start + size], start):
                    query_input = load_query(query, i, bands, self.storage_options, max_pixels,
                                             window, tiling, defer)
                    names.append(query_input.name)
                    errors.append(query_input.error)
                    inputs += query_input.inputs
                    input_owners += [i] * len(query_input.inputs)
                rows, images = decode_batch([{"owner": i} for i in input_owners], inputs,
                                            encoder.device, failed)
                if len(turns) > 1:
                    rows = [row for row in rows for _ in turns]
                    images = [orient_image(image, k) for image in images for k in turns]
                for at in range(0, len(rows), size):  # a large query may give many chips
                    yield [row["owner"] for row in rows[at:at + size]], images[at:at + size]

        for batch_owners, batch_codes, batch_vectors in encoder.encode_batches(loaded()):
            codes.append(batch_codes)
            if batch_vectors is not None:
                vectors.append(batch_vectors)
            owners += batch_owners
        dim = encoder.rerank_dim
        return EncodedQueries(
            np.concatenate(codes), np.array(owners, np.int64), names, errors,
            None if dim is None else np.concatenate([np.zeros((0, dim), np.float16), *vectors]))

    def query(self, queries: Sequence[QueryInput], top: int | None = None,
              radius: int | None = None, nprobe: int | None = None, bands=None,
              names: Sequence[str] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
              window: Window | None = None, group_by: str | None = None,
              rerank: str = DEFAULT_RERANK, shortlist: int = DEFAULT_SHORTLIST,
              orientations: int = DEFAULT_QUERY_ORIENTATIONS) -> pa.Table:
        """Rank the index for each query: the ``top`` nearest (default 50), or every row within
        Hamming distance ``radius`` (not both). Arguments are checked before any query is read.
        orientations: 1, 4 or 8: search with each query in that many orientations too (its
        rotations, and flips for 8; 4 or 8 backbone passes): a row's distance is its nearest
        orientation's, its score its best (overhead scenes have no "up").
        rerank: "none", "ties", "near" or "full", and shortlist: how the re-rank vectors order
        the hits (``query.ranking``); an index or model without vectors ranks by distance alone.
        names: what to call the queries in the result and its errors (default: the path or
        URL, "bytes i", "array i"). max_pixels: see ``encode``.
        window: (col_off, row_off, width, height): query with that part of each image only.
        When the index was built with ``--tile``, a query larger than its chips is cut the
        same way and its chips are searched together: a row's distance is its nearest chip's.
        group_by: "scene" keeps the best row (chip) of each scene (url, member).
        """
        top = _check_search(top, radius, nprobe, group_by, rerank, shortlist)
        if names is not None and len(names) != len(queries):
            raise ValueError(f"{len(names)} names for {len(queries)} queries")
        encoded = self.encode_chips(queries, bands, None, max_pixels, window,
                                    orientations=orientations)
        found, errors = encoded.names, encoded.errors
        if names is not None:
            errors = [None if e is None else renamed_error(e, old, new)
                      for e, old, new in zip(errors, found, names, strict=True)]
            found = list(names)
        return own_files_first(self._search(encoded.codes, found, errors, top, radius, nprobe,
                                            encoded.owners, group_by, encoded.vectors, rerank,
                                            shortlist), queries)

    def query_codes(self, codes: np.ndarray, top: int | None = None, radius: int | None = None,
                    nprobe: int | None = None, names: Sequence[str] | None = None,
                    owners: np.ndarray | None = None, group_by: str | None = None,
                    vectors: np.ndarray | None = None, rerank: str = DEFAULT_RERANK,
                    shortlist: int = DEFAULT_SHORTLIST) -> pa.Table:
        """Like ``query`` for packed codes (m, K/8) uint8 computed elsewhere. owners: int64
        (m,), the query each code belongs to (``encode_chips``); default one query a code.
        vectors: the codes' re-rank vectors (m, D) (``encode_chips``); without them the hits
        are ranked by distance alone."""
        top = _check_search(top, radius, nprobe, group_by, rerank, shortlist)
        codes = np.asarray(codes)
        owners = np.arange(len(codes), dtype=np.int64) if owners is None else np.asarray(owners)
        n = int(owners.max()) + 1 if len(owners) else 0
        names = list(names) if names is not None else [f"code {i}" for i in range(n)]
        return self._search(codes, names, [None] * len(names), top, radius, nprobe, owners,
                            group_by, vectors, rerank, shortlist)

    def _search(self, codes: np.ndarray, names: list[str], errors: list[str | None],
                top: int, radius: int | None, nprobe: int | None, owners: np.ndarray,
                group_by: str | None = None, vectors: np.ndarray | None = None,
                rerank: str = "none", shortlist: int = DEFAULT_SHORTLIST) -> pa.Table:
        """codes (m, K/8) of the queries ``owners`` (m,) -> the result table."""
        reader, index = self._current()
        nprobe = nprobe if nprobe is not None else self.nprobe
        if indexes.nlist_of(index) is None:  # flat, or an IVF searched exactly until trained
            nprobe = None
        if vectors is None or not reader.has_vectors or len(codes) == 0:
            rerank = "none"
        fetch = ranking.fetch_size(rerank, top, shortlist)
        while True:
            query_of, hit_d, hit_ids, reach = ranking.merged(index, codes, owners, fetch, radius,
                                                             nprobe)
            if rerank in ("ties", "near") and radius is None:
                query_of, hit_d, hit_ids = ranking.complete_ties(
                    index, codes, owners, query_of, hit_d, hit_ids, reach, top, nprobe)
            score = None
            if rerank == "ties" and radius is None and group_by is None:
                # rows beyond a query's top-th distance cannot be among its hits: not scored
                keep = ranking.within_top_distance(query_of, hit_d, top)
                query_of, hit_d, hit_ids = query_of[keep], hit_d[keep], hit_ids[keep]
            if rerank != "none":
                score = ranking.scores(query_of, hit_ids, owners, vectors,
                                       lambda rows: reader.vectors(rows, as_stored=True))
                near_score = near_score_of(vectors.shape[1])
                if rerank == "full" and group_by is None and radius is None:
                    at = ranking.best_by_score(query_of, hit_d, hit_ids, score, top)
                elif rerank == "near" and group_by is None and radius is None:
                    at = ranking.best_near(query_of, hit_d, hit_ids, score, top, near_score)
                else:
                    at = rerank_order(query_of, hit_d, hit_ids, score, rerank, near_score)
                query_of, hit_d, hit_ids, score = query_of[at], hit_d[at], hit_ids[at], score[at]
            if group_by == "scene":
                meta = reader.metadata(hit_ids, ["url", "member"])
                keep = ranking.best_per_scene(query_of, list(zip(
                    meta["url"].to_pylist(), meta["member"].to_pylist(), strict=True)))
                query_of, hit_d, hit_ids = query_of[keep], hit_d[keep], hit_ids[keep]
                score = score[keep] if score is not None else None
            if radius is not None:
                break
            counts = np.bincount(query_of, minlength=len(names))
            short = counts[np.bincount(owners, minlength=len(names)) > 0] < top
            # Grouping can leave fewer than top: fetch more, until the index has no more.
            if group_by is None or not short.any() or fetch >= reader.row_count:
                keep = ranking.first_per_query(query_of, top)
                query_of, hit_d, hit_ids = query_of[keep], hit_d[keep], hit_ids[keep]
                score = score[keep] if score is not None else None
                break
            fetch = min(fetch * 4, reader.row_count)
        hit_counts = np.bincount(query_of, minlength=len(names))
        # One row per hit, and one row carrying the error for each query that failed.
        is_error = np.array([e is not None for e in errors], dtype=bool)
        rows_per_query = np.ones(len(errors), dtype=np.int64)
        rows_per_query[~is_error] = hit_counts[~is_error]
        query_no = np.repeat(np.arange(len(errors)), rows_per_query)
        first_row = np.cumsum(rows_per_query) - rows_per_query
        rank = np.arange(len(query_no)) - np.repeat(first_row, rows_per_query) + 1
        is_hit = ~is_error[query_no]
        distance = np.zeros(len(query_no), dtype=np.int32)
        distance[is_hit] = hit_d
        hit_score = np.zeros(len(query_no), dtype=np.float32)
        if score is not None:
            hit_score[is_hit] = score
        ids = np.full(len(query_no), -1, dtype=np.int64)
        ids[is_hit] = hit_ids
        query_col = numeric_array(query_no, pa.int32())
        meta = reader.metadata(ids)
        table = pa.table({
            "query": query_col,
            "query_name": string_array(names).take(query_col),
            "rank": numeric_array(rank, pa.int32(), ~is_hit),
            "distance": numeric_array(distance, pa.int32(), ~is_hit),
            # the re-rank score: the cosine of the query's and the row's vectors
            "score": numeric_array(hit_score, pa.float32(),
                               ~is_hit if score is not None else np.ones(len(query_no), bool)),
            "row_id": numeric_array(np.where(ids >= 0, ids, 0), pa.int64(), ids < 0),
        })
        for column in meta.column_names:
            if column != "row_id":
                table = table.append_column(column, meta.column(column))
        return table.append_column("error", string_array(errors).take(query_col))


GROUPS = (None, "scene")


@dataclass
class EncodedQueries:
    """What ``encode_chips`` gives: codes (m, K/8) uint8 of the decodable queries' images (a
    large one cut into chips gives several), owners int64 (m,) the query of each code, the n
    queries' names and errors (None for a query that decoded), and the codes' re-rank
    vectors (m, D) float16 (None for a model without them)."""

    codes: np.ndarray
    owners: np.ndarray
    names: list[str]
    errors: list[str | None]
    vectors: np.ndarray | None = None


def _check_search(top: int | None, radius: int | None, nprobe: int | None,
                  group_by: str | None, rerank: str, shortlist: int) -> int:
    """The number of hits to keep (top's default 50); ValueError for bad arguments."""
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {GROUPS[1:]} or None, got {group_by!r}")
    if rerank not in RERANKS:
        raise ValueError(f"rerank must be one of {', '.join(RERANKS)}, got {rerank!r}")
    check_int("shortlist", shortlist, 1)
    if top is not None and radius is not None:
        raise ValueError("give top (the nearest hits) or radius (every hit within it), not both")
    if radius is not None:
        check_int("radius", radius, 0)
    if nprobe is not None:
        check_int("nprobe", nprobe, 1)
    return check_int("top", 50 if top is None else top, 1)


def own_files_first(table: pa.Table, queries: Sequence[QueryInput]) -> pa.Table:
    """A result table (``SceneIndex.query``'s, of ``queries``) with each query's own file
    first among the hits tied exactly with its first (``ranking.own_file_first``), ranks
    unchanged."""
    if not table.num_rows:
        return table
    # lists and numpy-built arrays: pyarrow's conversions from and to numpy (to_numpy,
    # fill_null, take of an ndarray) import pandas, seconds of a CLI query
    order = ranking.own_file_first(
        np.array(table["query"].to_pylist()), table["url"].to_pylist(),
        np.array([-1 if d is None else d for d in table["distance"].to_pylist()]),
        np.array(table["score"].to_pylist(), dtype=np.float64),  # None -> NaN
        [_location(q) for q in queries])
    if np.array_equal(order, np.arange(len(order))):
        return table
    at = table.schema.get_field_index("rank")
    return table.take(numeric_array(order, pa.int64())).set_column(
        at, table.schema.field(at), table["rank"])


def _location(query) -> str | None:
    """Where a query's image was read from, as the index names its scenes' files (an absolute
    local path, or the URL), or None for bytes and arrays."""
    if isinstance(query, Path) or (isinstance(query, str) and "://" not in query):
        return os.path.abspath(query)
    return query if isinstance(query, str) else None


def _stat(path: Path) -> tuple | None:
    # The manifest is replaced by a rename at every commit: a new inode and mtime.
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def renamed_error(error: str, old: str, new: str) -> str:
    """A query's error message naming it ``new`` (the message may start with ``old``)."""
    return f"{new}{error[len(old):]}" if error.startswith(old) else f"{new}: {error}"


