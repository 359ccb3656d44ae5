"""The manifest, the commit point of an index: a typed ``Manifest``, its one reader
(``read_manifest``: upgrades older formats, checks that its row ranges add up) and its one
writer (``write_manifest``: write-fsync-rename).

The JSON holds the index's parameters (format, K, model, backbone, kind, nlist), its row
count and next row id, the generation (every commit increases it), the FAISS side, and the
committed shards.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dahash_index.errors import one_line
from dahash_index.files import atomic_write
from dahash_index.model.identity import ModelIdentity
from dahash_index.store.layout import MANIFEST, SHARD_FILES, IndexStoreError, ModelMismatchError

FORMAT = "dahash-index/3"
# Read and upgraded in memory; written back as FORMAT. Format 2 lacks WINDOW_COLUMNS, and
# files written before STAC lack STAC_COLUMNS: parts and lookup files are read with the
# columns they lack null (``layout.with_later_columns``).
OLD_FORMATS = ("dahash-index/1", "dahash-index/2")

# ``shards`` maps each committed shard's key (its full URL: the identity of a shard is where it
# is plus what it holds) to an entry:
#   name         the shard's short name ('agricultural', 'part-0001.tar'), as in the parts
#   fingerprint  what the shard held when it was read (names, sizes, mtimes/ETags), or None
#   part/errors  its Parquet files; part_sha256/errors_sha256 their checksums at commit
#   lookup       its lookup file (store.lookup: the metadata again, addressable by row) and
#                lookup_sha256; absent in entries committed before lookup files
#   vectors      its re-rank vectors (store.vectors) and vectors_sha256; absent in entries of
#                a model without them (every entry of an index from before them)
#   first_row, rows, error_count
# Entries are in commit order, which is row-id order. Row ids are never reused: a shard that
# is re-indexed gets new ones, so a live index may have gaps.
#
# The FAISS side (written by ``IndexWriter.finalize``, a cache of the parts' codes):
#   index_file      None (no FAISS side: readers index the parts' codes themselves), or
#                   SEGMENT_DIR ("index.faiss", a directory of segment files), or, in manifests
#                   written before segments, one FAISS file (an IDMap or IVF of every row)
#   index_segments  [{"file": path, "ranges": [[first_row, rows], ...]}, ...]: the FAISS files
#                   searched as one (indexes.sharded), each holding the rows of the ranges in that
#                   order, one range per shard (ascending). A flat segment is a plain
#                   IndexBinaryFlat (no ids stored: position -> row id from the ranges); an IVF
#                   segment stores row ids in its lists; all IVF segments share one quantizer.
#                   Added with segments; read_manifest derives it for older manifests.
#   index_shards    the shards whose rows the segments hold
#   index_retired   [first_row, rows] ranges that the segments still hold but no shard does
# Segment files are written once under a name no manifest has used (the generation) and never
# rewritten, so a reader may keep them memory-mapped across commits.
SEGMENT_DIR = "index.faiss"


@dataclass(frozen=True)
class ShardEntry:
    """One committed shard (see the comment above)."""

    name: str
    fingerprint: str | None
    part: str
    errors: str
    first_row: int
    rows: int
    error_count: int
    part_sha256: str | None = None
    errors_sha256: str | None = None
    lookup: str | None = None  # None in entries committed before lookup files
    lookup_sha256: str | None = None
    precision: str | None = None  # the backbone's arithmetic; None: not recorded
    vectors: str | None = None  # its re-rank vectors (``store.vectors``); None: it has none
    vectors_sha256: str | None = None
    # ``store.blocks``: the lookup and vectors files' block digests, and the offset of each
    # record batch's message in the lookup file; absent in entries committed before them
    lookup_blocks: str | None = None
    lookup_batches: list[int] | None = None
    vectors_blocks: str | None = None
    block_bytes: int | None = None  # the blocks' size; absent: 1 MiB (``store.blocks``)
    # the lookup and vectors files' block digests in a file of their own (``store.blocks``),
    # in place of lookup_blocks and vectors_blocks; absent in entries committed before it
    digests: str | None = None
    digests_sha256: str | None = None

    def files(self) -> list[tuple[str, str]]:
        """(kind, relative path) of each file the entry names: "part", "errors", "lookup",
        "vectors", "digests"."""
        return [(kind, getattr(self, kind)) for kind in SHARD_FILES if getattr(self, kind)]

    def checksum(self, kind: str) -> str | None:
        """The SHA-256 recorded at commit for the file of ``kind``, None if none was."""
        return getattr(self, f"{kind}_sha256")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in _OPTIONAL:  # absent, as in the entries written before them
            if data[key] is None:
                del data[key]
        return data


_OPTIONAL = ("lookup", "lookup_sha256", "precision", "vectors", "vectors_sha256", "lookup_blocks",
             "lookup_batches", "vectors_blocks", "block_bytes", "digests", "digests_sha256")


@dataclass(frozen=True)
class Segment:
    """A FAISS file searched as one with the others: the rows of ``ranges``, in order, one
    [first_row, rows] range per shard."""

    file: str
    ranges: list[list[int]]
    sha256: str | None = None  # of the file, recorded when it was written (None: older index)


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` says (see the module docstring and the comment above)."""

    format: str
    bits: int
    model_sha256: str
    backbone: str
    backbone_sha256: str
    kind: str
    nlist: int | None
    row_count: int
    next_row_id: int
    generation: int
    index_file: str | None
    index_shards: list[str]
    index_retired: list[list[int]]
    created: str
    updated: str
    extra: dict[str, Any]
    shards: dict[str, ShardEntry]
    index_segments: list[Segment] = field(default_factory=list)

    def replace(self, **changes: Any) -> Manifest:
        """A copy with ``changes`` (the manifest itself is never modified)."""
        return replace(self, **changes)

    @property
    def segments(self) -> list[Segment]:
        """The FAISS segments; none when ``index_file`` is None (a commit that dropped the
        FAISS side keeps no segment)."""
        return self.index_segments if self.index_file is not None else []

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["shards"] = {key: entry.to_json() for key, entry in self.shards.items()}
        data["index_segments"] = [asdict(s) for s in self.index_segments]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """A checked manifest's JSON (``read_manifest``) as a Manifest."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        values["shards"] = {key: ShardEntry(**entry) for key, entry in data["shards"].items()}
        values["index_segments"] = [Segment(s["file"], s["ranges"], s.get("sha256"))
                                    for s in data.get("index_segments", [])]
        return cls(**values)


def new_manifest(bits: int, model_sha256: str, backbone: str, backbone_sha256: str, kind: str,
                 nlist: int | None, extra: Mapping | None, created: str) -> Manifest:
    """The manifest of an index with no shard yet."""
    return Manifest(FORMAT, bits, model_sha256, backbone, backbone_sha256, kind, nlist, 0, 0,
                    0, None, [], [], created, created, dict(extra or {}), {})


HISTORY = "manifests"  # copies of the last few committed manifests, by generation
KEEP_MANIFESTS = 3


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write ``directory/manifest.json`` through a .tmp file, fsynced, then renamed: the one
    writer of manifests. A copy goes to ``manifests/<generation>.json`` first (the last
    ``KEEP_MANIFESTS`` are kept), from which ``check --repair`` restores a damaged
    manifest. The caller fsyncs the directory to make the rename durable."""
    body = manifest.to_json()
    data = json.dumps(body | {"checksum": manifest_checksum(body)}, indent=1).encode()
    history = directory / HISTORY
    history.mkdir(exist_ok=True)
    atomic_write(history / f"{manifest.generation:06d}.json", lambda f: f.write(data))
    for old in sorted(history.glob("*.json"))[:-KEEP_MANIFESTS]:
        old.unlink(missing_ok=True)
    atomic_write(directory / MANIFEST, lambda f: f.write(data))


def manifest_checksum(body: dict) -> str:
    """sha256 of the manifest's canonical JSON: a flipped byte that still parses shows."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()


def previous_manifests(directory: Path) -> list[Path]:
    """The copies of earlier committed manifests, newest first."""
    return sorted((directory / HISTORY).glob("*.json"), reverse=True)


_MANIFEST_KEYS = (
    "format bits model_sha256 backbone backbone_sha256 kind nlist row_count next_row_id "
    "generation index_file index_shards index_retired created updated extra shards"
).split()


def read_manifest(directory: Path, path: Path | None = None) -> Manifest:
    """Read and check ``directory/manifest.json`` (or the copy ``path`` of an earlier one):
    ordered row ranges, totals that add up."""
    path = path or directory / MANIFEST
    if not path.is_file():
        hint = ""
        if not directory.is_dir() or not any(directory.iterdir()):  # nothing built here yet
            hint = (f"; `dahash-index build --shards DIR --index {directory}` builds one "
                    "from the scenes under DIR")
        raise IndexStoreError(f"{directory}: not a dahash index (no {MANIFEST}){hint}")
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise IndexStoreError(f"{directory}: {MANIFEST} is unreadable ({one_line(err)}); "
                              f"`dahash-index check --repair {directory}` restores the last "
                              "good one") from None
    if isinstance(manifest, dict) and "checksum" in manifest:  # older manifests lack one
        recorded = manifest.pop("checksum")
        if recorded != manifest_checksum(manifest):
            raise IndexStoreError(f"{directory}: {path.name}: checksum differs from the one "
                                  "recorded at commit (damaged); `dahash-index check --repair "
                                  f"{directory}` restores the last good one")
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found == OLD_FORMATS[0]:
        manifest = _upgrade_v1(manifest)
    elif found in OLD_FORMATS:
        manifest = manifest | {"format": FORMAT}
    elif found != FORMAT:
        raise IndexStoreError(f"{directory}: {MANIFEST} has format {found!r}, expected {FORMAT!r}")
    if isinstance(manifest, dict):
        manifest = _with_segments(manifest)
    missing = [key for key in _MANIFEST_KEYS if key not in manifest]
    if missing:
        raise IndexStoreError(f"{directory}: {MANIFEST} lacks {missing}")
    try:
        end, total = 0, 0
        for key, entry in manifest["shards"].items():
            if entry["first_row"] < end or entry["rows"] < 0:
                raise IndexStoreError(
                    f"{directory}: {MANIFEST}: shard {key!r} holds rows from "
                    f"{entry['first_row']} (x{entry['rows']}), overlapping rows before {end}"
                )
            end = entry["first_row"] + entry["rows"]
            total += entry["rows"]
        if total != manifest["row_count"] or end > manifest["next_row_id"]:
            raise IndexStoreError(
                f"{directory}: {MANIFEST}: shards hold {total} rows up to row {end} but "
                f"row_count is {manifest['row_count']} and next_row_id {manifest['next_row_id']}"
            )
        if not set(manifest["index_shards"]) <= set(manifest["shards"]):
            raise IndexStoreError(f"{directory}: {MANIFEST}: index_shards names unknown shards")
        for first, rows in manifest["index_retired"]:
            if first < 0 or rows < 1:
                raise IndexStoreError(f"{directory}: {MANIFEST}: bad retired range {first}+{rows}")
        return Manifest.from_json(manifest)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        if isinstance(err, IndexStoreError):
            raise
        raise IndexStoreError(f"{directory}: {MANIFEST} is malformed ({one_line(err)})") from None


def _segments_of(manifest: dict) -> list[dict]:
    """A manifest from before segments names one file holding the rows of ``index_shards``
    and ``index_retired``: that file is its one segment."""
    if manifest.get("index_file") is None:
        return []
    if "index_segments" in manifest:
        return manifest["index_segments"]
    shards = manifest.get("shards", {})
    ranges = [[shards[s]["first_row"], shards[s]["rows"]]
              for s in manifest.get("index_shards", []) if shards[s]["rows"]]
    ranges = sorted(ranges + [list(r) for r in manifest.get("index_retired", [])])
    return [{"file": manifest["index_file"], "ranges": ranges}]


def _with_segments(manifest: dict) -> dict:
    try:
        return {**manifest, "index_segments": _segments_of(manifest)}
    except (KeyError, TypeError, AttributeError):
        return manifest  # malformed: the checks name what is wrong


def _upgrade_v1(manifest: dict) -> dict:
    """A format-1 manifest (shards keyed by name, no fingerprints or checksums) as format 2."""
    shards, keys = {}, {}
    for name, entry in manifest.get("shards", {}).items():
        key = entry.get("source") or name
        if key in shards:
            key = name
        keys[name] = key
        shards[key] = {k: v for k, v in entry.items() if k != "source"} | {
            "name": name, "fingerprint": None, "part_sha256": None, "errors_sha256": None,
        }
    return manifest | {
        "format": FORMAT,
        "shards": shards,
        "index_shards": [keys.get(n, n) for n in manifest.get("index_shards", [])],
        "index_retired": [],
    }


def check_files(directory: Path, manifest: Manifest) -> None:
    """Raise unless every file the manifest names exists (a stat each; contents are checked
    when read, or by ``check_index``)."""
    for entry in manifest.shards.values():
        for _, rel in entry.files():
            if not (directory / rel).is_file():
                raise IndexStoreError(
                    f"{directory}: {rel} is missing (named in {MANIFEST}); `dahash-index "
                    f"check --repair {directory}` drops its shard, for the next build to index")


def mismatch(directory: Path, manifest: Manifest, checkpoint_path: object, sha: str) -> str:
    return (
        f"index {directory} was built with model {manifest.model_sha256[:12]} "
        f"(backbone {manifest.backbone}); {checkpoint_path} is {sha[:12]}"
    )


def check_model(directory: Path, manifest: Manifest, model: ModelIdentity) -> None:
    """Raise ModelMismatchError unless ``model`` made (or may make) the index's codes."""
    if model.sha256 != manifest.model_sha256:
        raise ModelMismatchError(mismatch(directory, manifest, model.path or "the model",
                                          model.sha256))
