"""Reading tar shards (WebDataset style) in one streaming pass, strictly: a damaged header
past the first member is an error, not the end of the archive, and members that escape the
shard, links and devices are reported, never read."""

from __future__ import annotations

import lzma
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import IO

from dahash_index.scenes.scene import SCENE_SUFFIXES

TAR_SUFFIXES: tuple[str, ...] = (".tar", ".tgz", ".tar.gz")


def is_tar(name: str) -> bool:
    return name.lower().endswith(TAR_SUFFIXES)


def is_scene(name: str) -> bool:
    return name.lower().endswith(SCENE_SUFFIXES)


class CorruptTar(Exception):
    """A damaged header past the first member, which tarfile would take for the end."""


class StrictTarInfo(tarfile.TarInfo):
    # tarfile treats an unreadable or cut-off header after the first member as the end
    # of the archive, silently dropping the rest of a damaged shard. An all-zero block
    # (the real end marker) or a clean EOF still ends it normally.
    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tarfile_)
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError) as exc:
            raise CorruptTar(f"bad header ({exc})") from None


# What a damaged tar can raise while streaming: tarfile's own errors, our header check,
# and the decompressors' errors, which tarfile passes through unwrapped mid-member.
TAR_DAMAGE = (OSError, EOFError, tarfile.TarError, zlib.error, lzma.LZMAError, CorruptTar)


# The tarfile reading the shard is opened and iterated only here, in one place, so that
# counting and reading apply the same rules.
def tar_members(
    f: IO[bytes], read: bool
) -> Iterator[tuple[tarfile.TarInfo, str | None, bytes | None]]:
    """Yield (member, problem, data) for each member that is a scene or must be reported.

    problem is None for a scene, whose bytes are in data when ``read`` (else None).
    Directories, non-scene files and hidden names are skipped silently. Raises
    tarfile.TarError / OSError / CorruptTar on damage, truncated member data included.
    """
    with tarfile.open(fileobj=f, mode="r|*", tarinfo=StrictTarInfo) as tf:
        for member in tf:
            if member.isdir():
                continue
            # Safety first, before any suffix filter: '../x' or '/etc/passwd' are signs of
            # a hostile or broken tar worth reporting even when they are not scenes.
            problem = unsafe_member(member)
            if problem is not None:
                yield member, problem, None
                continue
            parts = PurePosixPath(member.name).parts
            if any(p.startswith(".") for p in parts) or not is_scene(member.name):
                continue  # AppleDouble '._x.jpg', '.DS_Store', sidecars, ...
            # In stream mode the data must be read now, before tarfile moves on to the
            # next header; a cut-off member raises ReadError here.
            data = tf.extractfile(member).read() if read else None
            yield member, None, data


def unsafe_member(member: tarfile.TarInfo) -> str | None:
    name = member.name
    if name.startswith("/") or ".." in PurePosixPath(name).parts:
        return f"tar member name escapes the shard: {name}"
    if member.issym() or member.islnk():
        return f"tar member is a link: {name} -> {member.linkname}"
    if not member.isfile():
        return f"tar member is not a regular file (device or FIFO): {name}"
    return None


def member_label(member: tarfile.TarInfo) -> str | None:
    parts = PurePosixPath(member.name).parts
    return parts[-2] if len(parts) > 1 else None
