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
tar becomes a :class:`SceneError` in the stream and the iteration goes on.
"""

from __future__ import annotations

import lzma
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from dahash_index.images import SCENE_SUFFIXES

TAR_SUFFIXES: tuple[str, ...] = (".tar", ".tgz", ".tar.gz")
ROOT_SHARD = "."


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
class SceneError:
    """A scene (or the rest of a tar) that could not be read."""

    url: str
    shard: str
    member: str | None
    reason: str  # one line


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
        self.fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.root = root.rstrip("/") or root
        try:
            is_dir = self.fs.isdir(self.root)
            exists = is_dir or self.fs.exists(self.root)
        except OSError:
            raise
        except Exception as exc:  # object-store clients raise their own types (botocore's
            # NoCredentialsError, EndpointConnectionError, ...), which callers cannot know
            raise OSError(f"cannot list shards URL {url}: {_one_line(exc)}") from exc
        if not is_dir:
            if exists:
                raise FileNotFoundError(f"shards URL is not a directory: {url}")
            raise FileNotFoundError(f"shards URL not found: {url}")
        self._local = isinstance(self.fs, LocalFileSystem)
        # Non-local URLs are rebuilt from what the caller typed (fs.unstrip_protocol
        # would turn 'memory://x' into 'memory:///x' and drop chained protocols).
        self._base = os.path.normpath(self.root) if self._local else url.rstrip("/")

    def list_shards(self) -> list[Shard]:
        """All shards under the URL, sorted by name (the root shard '.' first)."""
        shards = []
        has_loose = False
        for entry in self.fs.ls(self.root, detail=True):
            name = _basename(entry["name"])
            # Object stores may list a 'prefix/' marker object as the prefix itself.
            if entry["name"].rstrip("/") == self.root or name.startswith((".", "_")):
                continue
            if entry["type"] == "directory":
                shards.append(Shard(name, self._url(name), "dir"))
            elif _is_tar(name):
                shards.append(Shard(name, self._url(name), "tar"))
            elif _is_scene(name):
                has_loose = True
        if has_loose:
            shards.append(Shard(ROOT_SHARD, self._base, "root"))
        return sorted(shards, key=lambda s: s.name)

    def iter_scenes(self, shard: Shard) -> Iterator[SceneBytes | SceneError]:
        """Yield every scene of a shard, or a SceneError where one cannot be read.

        Dir and root shards come in sorted path order. Tar shards come in archive order,
        which is just as deterministic: sorting would mean holding the whole tar in
        memory or seeking around in it, and tars are read as one stream.
        """
        if shard.kind == "tar":
            yield from self._iter_tar(shard)
            return
        for rel in self._scene_paths(shard):
            url = self._url(rel)
            parts = PurePosixPath(rel).parts
            label = parts[-2] if len(parts) > 1 else None
            try:
                data = self.fs.cat_file(self._path(rel))
            except OSError as exc:  # fsspec maps permission/I/O/vanished files to OSError
                yield SceneError(url, shard.name, None, f"cannot read file: {_one_line(exc)}")
                continue
            yield SceneBytes(url, shard.name, None, label, data)

    def count_scenes(self, shard: Shard) -> int:
        """How many items ``iter_scenes`` yields for the shard, read errors aside.

        Cheap for dir shards (one listing); a tar is streamed through once, reading
        headers (data is skipped, but over a network it is still transferred). A corrupt
        tar counts the members found before the damage, and never raises.
        """
        if shard.kind != "tar":
            return len(self._scene_paths(shard))
        count = 0
        try:
            with self.fs.open(self._path(shard.name), "rb") as f:
                for _ in _tar_members(f, read=False):
                    count += 1
        except _TAR_DAMAGE:
            pass
        return count

    # -- internals ------------------------------------------------------------------

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _url(self, rel: str) -> str:
        return f"{self._base}/{rel}" if rel else self._base

    def _scene_paths(self, shard: Shard) -> list[str]:
        """Sorted paths of a dir or root shard's scenes, relative to the shards root."""
        if shard.kind == "root":
            names = [
                _basename(e["name"])
                for e in self.fs.ls(self.root, detail=True)
                if e["type"] != "directory"
            ]
            return sorted(n for n in names if not n.startswith((".", "_")) and _is_scene(n))
        if shard.kind != "dir":
            raise ValueError(f"unknown shard kind {shard.kind!r} for shard {shard.name!r}")
        top = self._path(shard.name)
        rels = []
        for path in self.fs.find(top):
            rel = path[len(top) :].lstrip("/")
            # Only components below the shard count as hidden: the shards URL itself
            # may well sit under a dot-directory.
            if any(p.startswith(".") for p in rel.split("/")) or not _is_scene(rel):
                continue
            rels.append(f"{shard.name}/{rel}")
        return sorted(rels)

    def _iter_tar(self, shard: Shard) -> Iterator[SceneBytes | SceneError]:
        def error(member: str | None, reason: str) -> SceneError:
            return SceneError(shard.url, shard.name, member, reason)

        try:
            f = self.fs.open(self._path(shard.name), "rb")
        except OSError as exc:
            yield error(None, f"cannot open tar: {_one_line(exc)}")
            return
        last = None
        try:
            with f:
                # Streaming mode 'r|*': one sequential pass, no seeks, so a tar on S3/GCS
                # is fetched front to back with fsspec's read-ahead instead of one ranged
                # request per header; it also reads .tar.gz. Members must then be read
                # in archive order, before the next header, which is what we do.
                for member, problem, data in _tar_members(f, read=True):
                    last = member
                    if problem is not None:
                        yield error(member.name, problem)
                    else:
                        yield SceneBytes(shard.url, shard.name, member.name, _label(member), data)
        except _TAR_DAMAGE as exc:
            where = f"after member {last.name!r}" if last is not None else "at the start"
            detail = _one_line(exc, with_type=isinstance(exc, OSError))
            yield error(None, f"truncated or corrupt tar {where}, rest of shard skipped: {detail}")


# --- tar helpers ---------------------------------------------------------------------


class _CorruptTar(Exception):
    """A damaged header past the first member, which tarfile would take for the end."""


class _StrictTarInfo(tarfile.TarInfo):
    # tarfile treats an unreadable or cut-off header after the first member as the end
    # of the archive, silently dropping the rest of a damaged shard. An all-zero block
    # (the real end marker) or a clean EOF still ends it normally.
    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tarfile_)
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError) as exc:
            raise _CorruptTar(f"bad header ({exc})") from None


# What a damaged tar can raise while streaming: tarfile's own errors, our header check,
# and the decompressors' errors, which tarfile passes through unwrapped mid-member.
_TAR_DAMAGE = (OSError, EOFError, tarfile.TarError, zlib.error, lzma.LZMAError, _CorruptTar)


# The tarfile reading the shard is opened and iterated only here, in one place, so that
# counting and reading apply the same rules.
def _tar_members(
    f: IO[bytes], read: bool
) -> Iterator[tuple[tarfile.TarInfo, str | None, bytes | None]]:
    """Yield (member, problem, data) for each member that is a scene or must be reported.

    problem is None for a scene, whose bytes are in data when ``read`` (else None).
    Directories, non-scene files and hidden names are skipped silently. Raises
    tarfile.TarError / OSError / _CorruptTar on damage, truncated member data included.
    """
    with tarfile.open(fileobj=f, mode="r|*", tarinfo=_StrictTarInfo) as tf:
        for member in tf:
            if member.isdir():
                continue
            # Safety first, before any suffix filter: '../x' or '/etc/passwd' are signs of
            # a hostile or broken tar worth reporting even when they are not scenes.
            problem = _unsafe_member(member)
            if problem is not None:
                yield member, problem, None
                continue
            parts = PurePosixPath(member.name).parts
            if any(p.startswith(".") for p in parts) or not _is_scene(member.name):
                continue  # AppleDouble '._x.jpg', '.DS_Store', sidecars, ...
            # In stream mode the data must be read now, before tarfile moves on to the
            # next header; a cut-off member raises ReadError here.
            data = tf.extractfile(member).read() if read else None
            yield member, None, data


def _unsafe_member(member: tarfile.TarInfo) -> str | None:
    name = member.name
    if name.startswith("/") or ".." in PurePosixPath(name).parts:
        return f"tar member name escapes the shard: {name}"
    if member.issym() or member.islnk():
        return f"tar member is a link: {name} -> {member.linkname}"
    if not member.isfile():
        return f"tar member is not a regular file (device or FIFO): {name}"
    return None


def _label(member: tarfile.TarInfo) -> str | None:
    parts = PurePosixPath(member.name).parts
    return parts[-2] if len(parts) > 1 else None


# --- small helpers -------------------------------------------------------------------


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _is_scene(name: str) -> bool:
    return name.lower().endswith(SCENE_SUFFIXES)


def _is_tar(name: str) -> bool:
    return name.lower().endswith(TAR_SUFFIXES)


def _one_line(exc: BaseException, with_type: bool = True) -> str:
    # OSError messages are often just a path ("/x/y.jpg"), so the type name is kept.
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if with_type else lines[0]
