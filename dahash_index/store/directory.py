"""An index directory's life outside commits: creating it, locking it, cleaning it up."""

from __future__ import annotations

import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from dahash_index.files import atomic_write, fsync_dir, sha256_file
from dahash_index.model.identity import ModelIdentity, missing_model
from dahash_index.store.faiss_file import remove_unreferenced
from dahash_index.store.layout import MANIFEST, MODEL, SHARD_FILES, IndexStoreError, now
from dahash_index.store.manifest import HISTORY, Manifest, new_manifest, write_manifest
from dahash_index.store.staging import STAGING, remove_unfinished


def create_index_dir(
    directory: Path,
    model: ModelIdentity,
    kind: str,
    nlist: int | None,
    extra: Mapping | None,
) -> None:
    """Make a new index directory: built beside it, then renamed into place, so that a crash
    never leaves a half-made index where the next open would refuse it as a foreign folder."""
    if model.path is None or not Path(model.path).is_file():
        raise IndexStoreError(missing_model(model.path or "the model"))
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.creating-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        for folder in SHARD_FILES.values():
            (tmp / folder).mkdir()
        with open(model.path, "rb") as src:
            atomic_write(tmp / MODEL, lambda f: shutil.copyfileobj(src, f, 1 << 20))
        # Hash the copy, not the original: the index must hold the file its codes came from.
        if sha256_file(tmp / MODEL) != model.sha256:
            raise IndexStoreError(f"{model.path}: the checkpoint changed while it was in use")
        write_manifest(tmp, new_manifest(model.bits, model.sha256, model.backbone,
                                          model.backbone_sha256, kind, nlist, extra, now()))
        fsync_dir(tmp)
        os.rename(tmp, directory)  # replaces a missing or empty directory, atomically
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if (directory / MANIFEST).is_file():
            return  # another process created it first; the caller opens theirs
        raise
    fsync_dir(directory.parent)


def remove_leftovers(directory: Path, manifest: Manifest) -> None:
    """Delete what no committed manifest references: parts of interrupted commits, .tmp files,
    FAISS files replaced by a later finalize, parts of retired shards. Called only after
    reading that manifest, with the writer's lock held."""
    keep = {rel for entry in manifest.shards.values() for _, rel in entry.files()}
    for sub in SHARD_FILES.values():
        (directory / sub).mkdir(exist_ok=True)  # an older index lacks lookup/, vectors/, ...
        for f in (directory / sub).iterdir():
            stale = f.suffix in (".parquet", ".arrow", ".npy", ".bin", ".tmp")
            if stale and f"{sub}/{f.name}" not in keep and f.is_file():
                f.unlink()
    remove_unfinished(directory / STAGING)
    remove_unreferenced(directory, manifest)
    # copies of manifests a crashed commit wrote but never committed
    for copy in (directory / HISTORY).glob("*.json"):
        if not copy.stem.isdigit() or int(copy.stem) > manifest.generation:
            copy.unlink(missing_ok=True)
    for f in directory.iterdir():
        if f.is_file() and f.suffix == ".tmp":
            f.unlink()


def lock_index_dir(directory: Path, wait: float) -> int:
    """An exclusive lock on the directory (a file descriptor to close), waiting up to ``wait``
    seconds for another writer. Two writers would delete each other's in-flight files; flock
    is released by the kernel even when the holder is SIGKILLed."""
    fd = os.open(directory, os.O_RDONLY)
    deadline = time.monotonic() + max(wait, 0.0)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                waited = f" (waited {wait:g} s)" if wait > 0 else ""
                raise IndexStoreError(
                    f"{directory}: another build is writing to this index{waited}; let it "
                    "finish, or wait for it with --wait SECONDS"
                ) from None
            time.sleep(0.2)
