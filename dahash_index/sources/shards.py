"""List the shards under a local directory or fsspec URL and read their scene files.

Layout under the shards URL (local path, file://, s3://, gs://, memory://, ...)::

    <url>/agricultural/agricultural00.jpg    dir shard 'agricultural', label 'agricultural'
    <url>/region1/airplane/a.tif             dir shard 'region1', label 'airplane'
    <url>/part-0001.tar                      tar shard 'part-0001.tar' (also .tgz, .tar.gz)
    <url>/loose.tif                          root shard '.', label None

- A *dir* shard holds every scene file anywhere below its directory; a scene's label is
  the name of the directory that directly contains it.
- A *tar* shard (WebDataset style) holds its scene members; a member's label is its
  parent directory inside the tar, or None at the tar's top level.
- Scene files directly under the URL form the one *root* shard, named '.': no directory
  or tar can have that name, so it never collides with a real shard.
- Scenes are files whose suffix is in ``images.SCENE_SUFFIXES`` (any case); other files
  (sidecars, READMEs) are skipped silently, as is anything hidden (a path component
  starting with '.') and top-level entries starting with '_' (reserved, e.g. ``_dahash``).

Reading never raises for bad data: an unreadable file, an unsafe tar member or a corrupt
tar becomes a :class:`SceneError` in the stream and the iteration goes on. A failure of the
storage itself (a dead endpoint, a connection lost mid-tar: ``remote.is_transient``) raises
:class:`ShardReadError` instead: the shard must not be committed short of its scenes, and the
next build retries it.

A shard's identity is its URL plus ``ShardReader.fingerprint``: a digest of its scene names,
sizes and modification times (or ETags / object versions, where the store has them).
Local symlinks to shard directories, tars and scenes are followed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from fsspec.implementations.local import LocalFileSystem

from dahash_index.errors import is_utf8, printable
from dahash_index.sources.remote import (
    RemoteError,
    describe,
    is_transient,
    read_url,
    url_filesystem,
)
from dahash_index.sources.tars import (
    TAR_DAMAGE,
    CorruptTar,
    is_scene,
    is_tar,
    member_label,
    tar_members,
)

ROOT_SHARD = "."
# The reason a scene whose name is not UTF-8 is left out (its name is printed escaped).
NOT_UTF8 = "file name is not valid UTF-8; rename the file to index it"


@dataclass(frozen=True)
class Shard:
    """One unit of indexing work."""

    name: str  # stable id: 'agricultural', 'part-0001.tar', or '.' for root loose files
    url: str  # the dir or tar (or the shards URL itself for the root shard)
    kind: str  # 'dir' | 'tar' | 'root'


@dataclass(frozen=True)
class SceneBytes:
    """The encoded bytes of one scene, with where it came from."""

    url: str  # the scene file; for a tar member, the tar's URL
    shard: str  # Shard.name
    member: str | None  # tar member name exactly as stored, None for plain files
    label: str | None  # containing directory name, when the layout has one
    data: bytes


@dataclass(frozen=True)
class SceneFile:
    """A scene file listed but not read (``iter_scenes``' ``defer``): whoever takes it reads
    it, e.g. a large GeoTIFF window by window (``scene_chips``)."""

    url: str
    shard: str
    label: str | None
    member: None = None


class ShardReadError(OSError):
    """The storage failed while a shard was read (not bad data): the shard is not indexed
    this time, and the next build retries it. One line, naming the shard."""


@dataclass(frozen=True)
class SceneError:
    """A scene (or the rest of a tar) that could not be read."""

    url: str
    shard: str
    member: str | None
    reason: str  # one line


def shards_root(url: str, storage_options: dict | None = None) -> str:
    """What ``ShardReader(url).base`` is, for a URL that may no longer exist (build --prune
    of a moved archive)."""
    fs, root = url_filesystem(url, storage_options)
    return _shards_root(url, fs, root.rstrip("/") or root)


def _shards_root(url: str, fs, root: str) -> str:
    # Non-local URLs are rebuilt from what the caller typed (fs.unstrip_protocol would turn
    # 'memory://x' into 'memory:///x' and drop chained protocols).
    return os.path.normpath(root) if isinstance(fs, LocalFileSystem) else url.rstrip("/")


class ShardReader:
    """Lists shards under a URL and streams their scenes.

    url: a local path (relative or absolute) or any fsspec URL. Scene and shard URLs
    keep the caller's protocol and prefix; local ones are absolute paths.
    storage_options: passed to fsspec, e.g. ``{"endpoint_url": ...}`` for an
    S3-compatible store (s3fs also reads the usual AWS_* environment variables).

    Raises FileNotFoundError, naming the URL, when it does not exist or is not a
    directory (an empty S3 prefix does not exist).
    """

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.url = url
        self.storage_options = storage_options
        self.fs, root = url_filesystem(url, storage_options)
        self.root = root.rstrip("/") or root
        try:
            is_dir = self.fs.isdir(self.root)
            exists = is_dir or self.fs.exists(self.root)
        except Exception as exc:  # object-store clients raise their own types (botocore's
            # NoCredentialsError, EndpointConnectionError, ...), which callers cannot know
            raise OSError(f"cannot list shards URL {describe(url, exc)}") from exc
        if not is_dir:
            if exists:
                raise FileNotFoundError(f"shards URL is not a directory: {url}")
            raise FileNotFoundError(f"shards URL not found: {url}")
        self._local = isinstance(self.fs, LocalFileSystem)
        self._base = _shards_root(url, self.fs, self.root)

    @property
    def base(self) -> str:
        """The URL its shards' URLs are formed under (``<base>/<name>``; the root shard's is
        ``base`` itself)."""
        return self._base

    def list_shards(self) -> list[Shard]:
        """All shards under the URL, sorted by name (the root shard '.' first)."""
        shards = []
        has_loose = False
        try:
            entries = self.fs.ls(self.root, detail=True)
        except Exception as exc:
            raise OSError(f"cannot list shards URL {describe(self.url, exc)}") from exc
        for entry in entries:
            name = _basename(entry["name"])
            # Object stores may list a 'prefix/' marker object as the prefix itself.
            if entry["name"].rstrip("/") == self.root or name.startswith((".", "_")):
                continue
            kind = entry["type"]
            if self._local and entry.get("islink"):  # fsspec does not follow links
                kind = "directory" if os.path.isdir(entry["name"]) else "file"
            if kind == "directory":
                shards.append(Shard(name, self._url(name), "dir"))
            elif is_tar(name):
                shards.append(Shard(name, self._url(name), "tar"))
            elif is_scene(name):
                has_loose = True
        if has_loose:
            shards.append(Shard(ROOT_SHARD, self._base, "root"))
        return sorted(shards, key=lambda s: s.name)

    def iter_scenes(self, shard: Shard, defer: Callable[[str], bool] | None = None
                    ) -> Iterator[SceneBytes | SceneFile | SceneError]:
        """Yield every scene of a shard, or a SceneError where one cannot be read.

        defer(url) -> True: that plain file (not a tar member) is yielded as a SceneFile,
        unread.

        Dir and root shards come in sorted path order. Tar shards come in archive order,
        which is just as deterministic: sorting would mean holding the whole tar in
        memory or seeking around in it, and tars are read as one stream.
        Raises ShardReadError when the storage fails (see the module docstring).
        """
        if shard.kind == "tar":
            yield from self._iter_tar(shard)
            return
        try:
            files = self._scene_files(shard)
        except Exception as exc:  # the listing failed: nothing of the shard can be trusted
            raise ShardReadError(f"shard {describe(shard.url, exc)}") from exc
        for rel, _ in files:
            url = self._url(rel)
            if not is_utf8(url):
                yield SceneError(printable(url), shard.name, None, NOT_UTF8)
                continue
            parts = PurePosixPath(rel).parts
            label = parts[-2] if len(parts) > 1 else None
            if defer is not None and defer(url):
                yield SceneFile(url, shard.name, label)
                continue
            try:
                data = self.fs.cat_file(self._path(rel))
            except Exception as exc:  # fsspec maps permission/I/O/vanished files to OSError;
                # object stores raise their own types
                if is_transient(exc):
                    raise ShardReadError(f"shard {shard.url}: {describe(url, exc)}") from exc
                yield SceneError(url, shard.name, None, f"cannot read file: {_one_line(exc)}")
                continue
            yield SceneBytes(url, shard.name, None, label, data)

    def fingerprint(self, shard: Shard) -> str:
        """A digest of what the shard holds now: its scene files' names, sizes and
        modification times (ETags or versions on object stores); for a tar, the tar file's.
        One listing, no data read. Raises ShardReadError when the storage fails."""
        try:
            if shard.kind == "tar":
                files = [(shard.name, self._file_info(self._path(shard.name)))]
            else:
                files = self._scene_files(shard)
        except Exception as exc:
            raise ShardReadError(f"shard {describe(shard.url, exc)}") from exc
        data = json.dumps(files, sort_keys=True, default=str).encode()
        return hashlib.sha256(data).hexdigest()[:32]

    def scene_fields(self, url: str) -> dict:
        """Columns of the scene at ``url`` that its file does not give: none for files (a
        ``stac.StacReader`` gives its items' ids and properties)."""
        return {}

    def count_scenes(self, shard: Shard) -> int:
        """How many items ``iter_scenes`` yields for the shard, read errors aside.

        Cheap for dir shards (one listing); a tar is streamed through once, reading
        headers (data is skipped, but over a network it is still transferred). A corrupt
        tar counts the members found before the damage, and never raises.
        """
        if shard.kind != "tar":
            return len(self._scene_files(shard))
        count = 0
        try:
            with self.fs.open(self._path(shard.name), "rb") as f:
                for _ in tar_members(f, read=False):
                    count += 1
        except TAR_DAMAGE:
            pass
        return count

    # -- internals ------------------------------------------------------------------

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _url(self, rel: str) -> str:
        return f"{self._base}/{rel}" if rel else self._base

    def _file_info(self, path: str) -> tuple:
        """(size, version) of one file: mtime for local files (links followed), else the
        first of the store's ETag / version / generation / modification time."""
        if self._local:
            return _local_info(path)
        return _remote_info(self.fs.info(path))

    def _scene_files(self, shard: Shard) -> list[tuple[str, tuple]]:
        """Sorted (path relative to the shards root, (size, version)) of a dir or root
        shard's scenes."""
        if shard.kind == "root":
            entries = [
                (_basename(e["name"]), e)
                for e in self.fs.ls(self.root, detail=True)
                if e["type"] != "directory"
                and not (self._local and e.get("islink") and os.path.isdir(e["name"]))
            ]
            names = sorted(
                (n, e) for n, e in entries if not n.startswith((".", "_")) and is_scene(n)
            )
            if self._local:
                return [(n, _local_info(self._path(n))) for n, _ in names]
            return [(n, _remote_info(e)) for n, e in names]
        if shard.kind != "dir":
            raise ValueError(f"unknown shard kind {shard.kind!r} for shard {shard.name!r}")
        top = self._path(shard.name)
        found = []
        for rel, info in self._walk(top):
            # Only components below the shard count as hidden: the shards URL itself
            # may well sit under a dot-directory.
            if any(p.startswith(".") for p in rel.split("/")) or not is_scene(rel):
                continue
            found.append((f"{shard.name}/{rel}", info))
        return sorted(found)

    def _walk(self, top: str) -> Iterator[tuple[str, tuple]]:
        """(path relative to top, (size, version)) of every file below top."""
        if self._local:  # os.walk follows links to directories, fsspec's find does not
            for folder, dirs, files in os.walk(top, followlinks=True):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for name in files:
                    path = os.path.join(folder, name)
                    yield os.path.relpath(path, top).replace(os.sep, "/"), _local_info(path)
            return
        for path, info in self.fs.find(top, detail=True).items():
            yield path[len(top) :].lstrip("/"), _remote_info(info)

    def _iter_tar(self, shard: Shard) -> Iterator[SceneBytes | SceneError]:
        def error(member: str | None, reason: str) -> SceneError:
            return SceneError(shard.url, shard.name, member, reason)

        try:
            f = self.fs.open(self._path(shard.name), "rb")
        except Exception as exc:
            if is_transient(exc) or isinstance(exc, FileNotFoundError):
                # a vanished tar is not listed next time; a dead store is retried
                raise ShardReadError(f"shard {describe(shard.url, exc)}") from exc
            yield error(None, f"cannot open tar: {_one_line(exc)}")
            return
        last = None
        try:
            with f:
                # Streaming mode 'r|*': one sequential pass, no seeks, so a tar on S3/GCS
                # is fetched front to back with fsspec's read-ahead instead of one ranged
                # request per header; it also reads .tar.gz. Members must then be read
                # in archive order, before the next header, which is what we do.
                for member, problem, data in tar_members(f, read=True):
                    last = member
                    if not is_utf8(member.name):
                        yield error(printable(member.name), NOT_UTF8)
                        continue
                    if problem is not None:
                        yield error(member.name, problem)
                    else:
                        yield SceneBytes(shard.url, shard.name, member.name,
                                         member_label(member), data)
        except Exception as exc:
            if is_transient(exc):
                raise ShardReadError(f"shard {describe(shard.url, exc)}") from exc
            if not isinstance(exc, TAR_DAMAGE):
                raise
            where = f"after member {last.name!r}" if last is not None else "at the start"
            detail = _one_line(exc, with_type=isinstance(exc, OSError))
            yield error(None, f"truncated or corrupt tar {where}, rest of shard skipped: {detail}")


def read_scene(url: str, member: str | None, storage_options: dict | None = None) -> bytes:
    """The bytes of one indexed scene (its metadata's url and member): the file at ``url``,
    or that member of the tar at ``url`` (read in one pass up to it: a tar has no index).
    Raises RemoteError (one line) when the file or tar cannot be read, FileNotFoundError when
    the tar holds no such scene."""
    if member is None:
        return read_url(url, storage_options)
    fs, path = url_filesystem(url, storage_options)
    try:
        with fs.open(path, "rb") as f:
            for found, problem, data in tar_members(f, read=True):
                if found.name == member and problem is None:
                    return data
    except Exception as exc:
        if not isinstance(exc, (OSError, tarfile.TarError, CorruptTar)):
            raise
        raise RemoteError(describe(url, exc), url, is_transient(exc)) from exc
    raise FileNotFoundError(f"{url}: the tar holds no scene {member!r}")


def _local_info(path: str) -> tuple:
    """(size, mtime in ns) of a local file, links followed; (None, None) for a dangling link,
    whose reading then reports the error."""
    try:
        st = os.stat(path)
    except OSError:
        return None, None
    return st.st_size, st.st_mtime_ns


def _remote_info(info: dict) -> tuple:
    """(size, version) from an object store's listing entry."""
    for key in ("ETag", "etag", "VersionId", "version_id", "generation", "md5Hash",
                "mtime", "LastModified", "last_modified", "updated", "created"):
        if info.get(key) is not None:
            return info.get("size"), f"{key}={info[key]}"
    return info.get("size"), None


# --- small helpers -------------------------------------------------------------------


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _one_line(exc: BaseException, with_type: bool = True) -> str:
    # OSError messages are often just a path ("/x/y.jpg"), so the type name is kept.
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if with_type else lines[0]
