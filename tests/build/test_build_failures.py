"""Nothing silently skipped, nothing poisoned: the reproductions of issue 8, each run as a user
runs it (the ``dahash-index`` command in a subprocess) on real UC Merced scenes, and the fault
injections. Each ends with exit code 0 and the right rows, or a one-line error and no
traceback, and with an index that ``dahash-index check`` passes.

The model is the untrained 64-bit network on the real tf2015 backbone (``quick_checkpoint``):
its codes are valid, which is all that indexing needs, and it loads in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    UCMERCED,
    UCMERCED_TIF,
    assert_one_line_failure,
    cli_command,
    free_port,
    messages,
)

from dahash_index.cli.query import PLAIN_HEADER
from dahash_index.model.checkpoint import load_checkpoint
from dahash_index.query.scene_index import SceneIndex
from dahash_index.store import IndexReader, IndexWriter, check_index

pytestmark = pytest.mark.realdata

CLASSES = ("agricultural", "beach", "forest")


def copy_scenes(folder: Path, label: str, n: int, first: int = 0) -> list[Path]:
    """n UC Merced scenes of class ``label`` copied into ``folder`` (a dir shard)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(first, first + n):
        src = UCMERCED / label / f"{label}{i:02d}.jpg"
        out.append(Path(shutil.copy(src, folder / src.name)))
    return out


def make_tar(path: Path, label: str, n: int) -> Path:
    """A tar shard of n UC Merced scenes of class ``label``, under '<label>/' inside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            name = f"{label}{i:02d}.jpg"
            tar.add(UCMERCED / label / name, arcname=f"{label}/{name}")
    return path


def build(run_cli, shards, index, model, *extra, check=False):
    return run_cli("build", "--shards", shards, "--index", index, "--model", model, *extra,
                   check=check)


def assert_index_holds(index: Path, expected: dict[str, int]) -> IndexReader:
    """``check`` passes and the index holds exactly ``expected`` (shard URL -> rows), each
    scene once."""
    report = check_index(index)
    assert report.ok, [str(d) for d in report.damage]
    reader = IndexReader.open(index)
    m = reader.manifest
    assert {url: e.rows for url, e in m.shards.items()} == expected
    meta = reader.metadata()
    assert meta.num_rows == sum(expected.values())
    keys = list(zip(meta["url"].to_pylist(), meta["member"].to_pylist(), strict=True))
    assert len(set(keys)) == len(keys)  # no scene twice
    assert reader.faiss_index().ntotal == meta.num_rows
    return reader


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = [m for m in messages(result.stderr) if not m.startswith("build:")]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- 1. shard identity is content and URL -------------------------------------------------


def test_truncated_tar_fixed_is_indexed_again(tmp_path, run_cli, quick_checkpoint):
    root, index = tmp_path / "m", tmp_path / "I"
    good = make_tar(tmp_path / "c.tar", "beach", 6)
    root.mkdir()
    (root / "t.tar").write_bytes(good.read_bytes()[:30000])
    first = build(run_cli, root, index, quick_checkpoint, check=True)
    assert "indexed 0 scenes" in first.stdout
    assert "truncated or corrupt tar" in first.stderr

    shutil.copy(good, root / "t.tar")
    again = build(run_cli, root, index, quick_checkpoint, check=True)
    assert "indexed 6 scenes from 1 shard(s), 1 of them again" in again.stdout, again.stdout
    assert "changed since it was indexed" in again.stderr
    reader = assert_index_holds(index, {str(root / "t.tar"): 6})
    assert reader.errors().num_rows == 0  # the old errors went with the old version


def test_same_shard_name_under_another_root_is_another_shard(tmp_path, run_cli,
                                                            quick_checkpoint):
    index = tmp_path / "I"
    copy_scenes(tmp_path / "a" / "x", "beach", 3)
    copy_scenes(tmp_path / "b" / "x", "forest", 4)
    build(run_cli, tmp_path / "a", index, quick_checkpoint, check=True)
    result = build(run_cli, tmp_path / "b", index, quick_checkpoint, check=True)
    assert "indexed 4 scenes from 1 shard(s) (0 already committed)" in result.stdout
    assert_index_holds(index, {str(tmp_path / "a" / "x"): 3, str(tmp_path / "b" / "x"): 4})


def test_changed_shard_replaces_its_rows_in_one_commit(tmp_path, run_cli, quick_checkpoint):
    shards, index = tmp_path / "shards", tmp_path / "I"
    copy_scenes(shards / "a", "beach", 4)
    copy_scenes(shards / "b", "forest", 3)
    build(run_cli, shards, index, quick_checkpoint, check=True)
    before = SceneIndex.open(index)
    old_ids = before.reader.row_ids()

    # Shard 'a' changes: one scene replaced by another class's, one added.
    (shards / "a" / "beach00.jpg").unlink()
    copy_scenes(shards / "a", "agricultural", 2)
    result = build(run_cli, shards, index, quick_checkpoint, check=True)
    assert "indexed 5 scenes from 1 shard(s), 1 of them again (1 already committed)" in (
        result.stdout
    )
    reader = assert_index_holds(index, {str(shards / "b"): 3, str(shards / "a"): 5})
    urls = reader.metadata()["url"].to_pylist()
    assert str(shards / "a" / "beach00.jpg") not in urls
    assert str(shards / "a" / "agricultural01.jpg") in urls
    # New row ids for the new version; the old version's are gone, never reused.
    assert reader.row_ids().min() == 4 and reader.row_ids().max() == 11
    with pytest.raises(ValueError, match="row id 0 is not in this index"):
        reader.metadata(np.array([0]))

    # A reader opened before answers from its state until it refreshes; never both versions.
    assert before.row_count == 7 and before.refresh() and before.row_count == 8
    hits = before.query_codes(reader.codes(), top=8)
    assert set(hits["row_id"].to_pylist()) <= set(reader.row_ids().tolist())
    assert not set(hits["row_id"].to_pylist()) & set(old_ids[:4].tolist())


# --- 2. bad build parameters never reach the index -----------------------------------------


def test_bad_nlist_is_refused_before_anything(tmp_path, run_cli, quick_checkpoint):
    copy_scenes(tmp_path / "shards" / "a", "beach", 2)
    result = build(run_cli, tmp_path / "shards", tmp_path / "I", quick_checkpoint,
                   "--kind", "ivf", "--nlist", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr  # click's usage error
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: Invalid value for '--nlist': 0 is not in the range x>=1."
    )
    assert not (tmp_path / "I").exists()


def test_nlist_larger_than_the_index_searches_exactly(tmp_path, run_cli, quick_checkpoint):
    shards, index = tmp_path / "shards", tmp_path / "I"
    scenes = copy_scenes(shards / "a", "beach", 2)
    result = build(run_cli, shards, index, quick_checkpoint, "--kind", "ivf", "--nlist", "1000",
                   check=True)
    assert "too few codes to train its IVF yet" in result.stderr
    assert_index_holds(index, {str(shards / "a"): 2})
    hits = run_cli("query", scenes[0], "--index", index, "--top", "2", "--nprobe", "3",
                   check=True)
    assert str(scenes[0]) in hits.stdout and "Traceback" not in hits.stderr
    again = build(run_cli, shards, index, quick_checkpoint, "--kind", "ivf", "--nlist", "1000",
                  check=True)
    assert "(1 already committed)" in again.stdout


def test_bands_that_do_not_fit_are_refused_before_anything(tmp_path, run_cli,
                                                          quick_checkpoint):
    shards, index = tmp_path / "shards", tmp_path / "I"
    shutil.copytree(UCMERCED_TIF / "beach", shards / "beach")
    result = build(run_cli, shards, index, quick_checkpoint, "--bands", "5,6,7")
    assert_one_line_failure(result, "--bands 5,6,7 does not fit", "band 5 requested, file has 3")
    assert not index.exists()

    # The same into an existing index: refused, and the index is left as it was.
    copy_scenes(tmp_path / "other" / "a", "forest", 2)
    build(run_cli, tmp_path / "other", index, quick_checkpoint, check=True)
    manifest = (index / "manifest.json").read_bytes()
    result = build(run_cli, shards, index, quick_checkpoint, "--bands", "5,6,7")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (index / "manifest.json").read_bytes() == manifest
    # Without the bad bands (and the index's own, none): fine.
    build(run_cli, shards, index, quick_checkpoint, check=True)
    assert IndexReader.open(index).row_count == 2 + len(list((shards / "beach").iterdir()))


def test_parameters_of_an_index_without_rows_are_not_binding(tmp_path, run_cli,
                                                             quick_checkpoint):
    shards, index = tmp_path / "shards", tmp_path / "I"
    (shards / "bad").mkdir(parents=True)
    (shards / "bad" / "x.jpg").write_bytes(b"not a jpeg")
    build(run_cli, shards, index, quick_checkpoint, "--kind", "ivf", check=True)
    assert IndexReader.open(index).manifest.kind == "ivf"  # 0 rows so far
    shutil.rmtree(shards / "bad")
    copy_scenes(shards / "good", "beach", 2)
    build(run_cli, shards, index, quick_checkpoint, check=True)  # flat now: allowed
    assert IndexReader.open(index).manifest.kind == "flat"


# --- 4. remote URLs: one line each ----------------------------------------------------------


def test_remote_query_failures_are_one_line(tmp_path, run_cli, quick_checkpoint, cli_env,
                                            s3_endpoint, s3_client):
    index = tmp_path / "I"
    copy_scenes(tmp_path / "shards" / "a", "beach", 2)
    build(run_cli, tmp_path / "shards", index, quick_checkpoint, check=True)
    no_creds = {k: v for k, v in cli_env.items() if not k.startswith("AWS_")}
    no_creds.update(AWS_EC2_METADATA_DISABLED="true",
                    AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
                    AWS_CONFIG_FILE=str(tmp_path / "none"))
    result = run_cli("query", "s3://bucket/a.jpg", "--index", index, env=no_creds)
    assert one_line(result) == (
        "Error: s3://bucket/a.jpg: no credentials found (set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, or an AWS profile)"
    )
    dead = f"http://127.0.0.1:{free_port()}"
    result = run_cli("query", "s3://bucket/a.jpg", "--index", index, "--endpoint-url", dead)
    assert one_line(result).startswith(
        f"Error: s3://bucket/a.jpg: cannot connect to endpoint {dead}"
    )

    s3_client.create_bucket(Bucket="queries")
    scene = UCMERCED / "beach" / "beach00.jpg"
    s3_client.put_object(Bucket="queries", Key="beach00.jpg", Body=scene.read_bytes())
    missing = run_cli("query", "s3://queries/nope.jpg", "--index", index,
                      "--endpoint-url", s3_endpoint)
    assert one_line(missing) == "Error: s3://queries/nope.jpg: not found"
    found = run_cli("query", "s3://queries/beach00.jpg", "--index", index, "--top", "1",
                    "--endpoint-url", s3_endpoint, check=True)
    assert "# s3://queries/beach00.jpg" in found.stdout


def test_protocol_without_its_package_gets_an_install_hint(tmp_path, run_cli,
                                                          quick_checkpoint):
    pytest.importorskip("fsspec")
    try:
        import gcsfs  # noqa: F401

        pytest.skip("gcsfs is installed here")
    except ImportError:
        pass
    result = build(run_cli, "gs://x/y", tmp_path / "I", quick_checkpoint)
    assert one_line(result) == (
        "Error: gs://x/y: reading gs:// URLs needs the gcsfs package (pip install gcsfs)"
    )


# --- 5. symlinks and empty roots --------------------------------------------------------------


def test_symlinked_shards_are_followed_and_an_empty_root_is_an_error(tmp_path, run_cli,
                                                                    quick_checkpoint):
    real, root, index = tmp_path / "real", tmp_path / "root", tmp_path / "I"
    copy_scenes(real / "b", "forest", 3)
    make_tar(real / "t.tar", "beach", 2)
    root.mkdir()
    (root / "b").symlink_to(real / "b")
    (root / "t.tar").symlink_to(real / "t.tar")
    result = build(run_cli, root, index, quick_checkpoint, check=True)
    assert "indexed 5 scenes from 2 shard(s)" in result.stdout
    assert_index_holds(index, {str(root / "b"): 3, str(root / "t.tar"): 2})

    empty = tmp_path / "empty"
    empty.mkdir()
    result = build(run_cli, empty, tmp_path / "J", quick_checkpoint)
    assert_one_line_failure(result, f"no shards under {empty}")
    assert not (tmp_path / "J").exists()


# --- 6. live readers, a second writer ---------------------------------------------------------


def test_a_second_build_waits_or_fails_with_a_hint(tmp_path, run_cli, quick_checkpoint):
    shards, index = tmp_path / "shards", tmp_path / "I"
    copy_scenes(shards / "a", "beach", 2)
    build(run_cli, shards, index, quick_checkpoint, check=True)
    copy_scenes(shards / "b", "forest", 2)

    # another build, as far as anyone knows
    holder = IndexWriter.open(index, load_checkpoint(quick_checkpoint).identity)
    result = build(run_cli, shards, index, quick_checkpoint, "--wait", "1")
    assert_one_line_failure(result, "another build is writing to this index (waited 1 s)",
                            "--wait SECONDS")
    threading.Timer(2.0, holder.close).start()
    result = build(run_cli, shards, index, quick_checkpoint, "--wait", "60", check=True)
    assert "indexed 2 scenes from 1 shard(s) (1 already committed)" in result.stdout


def test_reload_auto_sees_new_shards(tmp_path, run_cli, quick_checkpoint, monkeypatch):
    import dahash_index.query.scene_index as api

    shards, index = tmp_path / "shards", tmp_path / "I"
    copy_scenes(shards / "a", "beach", 2)
    build(run_cli, shards, index, quick_checkpoint, check=True)
    auto = SceneIndex.open(index, reload="auto")
    fixed = SceneIndex.open(index)
    code = auto.reader.codes()[:1]
    copy_scenes(shards / "b", "forest", 3)
    build(run_cli, shards, index, quick_checkpoint, check=True)

    monkeypatch.setattr(api, "RELOAD_INTERVAL_S", 0.0)
    assert auto.query_codes(code, top=10).num_rows == 5 and auto.row_count == 5
    assert fixed.query_codes(code, top=10).num_rows == 2  # its state, until refresh()
    assert fixed.refresh() and not fixed.refresh()
    assert fixed.query_codes(code, top=10).num_rows == 5


# --- 7. the smaller items --------------------------------------------------------------------


def test_query_arguments_are_checked_before_the_model_loads(tmp_path, run_cli,
                                                           quick_checkpoint):
    shards, index = tmp_path / "shards", tmp_path / "I"
    scenes = copy_scenes(shards / "a", "beach", 1)
    build(run_cli, shards, index, quick_checkpoint, check=True)
    both = run_cli("query", scenes[0], "--index", index, "--top", "5", "--radius", "3")
    assert both.returncode == 2 and "give --top or --radius, not both" in both.stderr
    zero = run_cli("query", scenes[0], "--index", index, "--top", "0")
    assert zero.returncode == 2 and "Invalid value for '--top': 0 is not in the range" in (
        zero.stderr
    )
    with pytest.raises(ValueError, match="top must be an integer >= 1, got 0"):
        SceneIndex.open(index).query(["never-read.jpg"], top=0)


def test_empty_index_and_no_hits_say_so(tmp_path, run_cli, quick_checkpoint):
    shards, index = tmp_path / "shards", tmp_path / "I"
    (shards / "bad").mkdir(parents=True)
    (shards / "bad" / "x.jpg").write_bytes(b"not a jpeg")
    build(run_cli, shards, index, quick_checkpoint, check=True)
    scene = UCMERCED / "beach" / "beach00.jpg"
    result = run_cli("query", scene, "--index", index, check=True)
    assert f"Warning: {index} holds no rows yet" in result.stderr
    assert result.stdout.splitlines() == [PLAIN_HEADER, f"# {scene}: no hits"]


def test_missing_model_suggests_train(tmp_path, run_cli):
    copy_scenes(tmp_path / "shards" / "a", "beach", 1)
    result = build(run_cli, tmp_path / "shards", tmp_path / "I", tmp_path / "nope.pt")
    assert_one_line_failure(result, "model checkpoint not found",
                            f"dahash-index train --data DIR --out {tmp_path / 'nope.pt'}")


def test_top_level_help_shows_every_command_whole(run_cli):
    out = run_cli("--help", check=True).stdout
    for name in ("build", "check", "eval", "info", "query", "train"):
        line = next(x for x in out.splitlines() if x.strip().startswith(name + " "))
        assert not line.rstrip().endswith("..."), line


def test_damaged_part_fails_info_and_check_and_repair_rebuilds_it(tmp_path, run_cli,
                                                                 quick_checkpoint):
    shards, index = tmp_path / "shards", tmp_path / "I"
    copy_scenes(shards / "a", "beach", 2)
    copy_scenes(shards / "b", "forest", 3)
    build(run_cli, shards, index, quick_checkpoint, check=True)
    assert "ok: " in run_cli("check", index, check=True).stdout
    part = index / IndexReader.open(index).manifest.shards[str(shards / "b")].part
    part.write_bytes(part.read_bytes()[:-200])  # truncated

    info = run_cli("info", index)
    assert info.returncode == 1 and "Traceback" not in info.stderr
    assert f"damaged: {part.relative_to(index).as_posix()}: unreadable" in info.stderr
    checked = run_cli("check", index)
    assert checked.returncode == 1
    assert f"damaged: {part.relative_to(index).as_posix()}: checksum differs" in checked.stderr
    repaired = run_cli("check", index, "--repair", check=True)
    assert "dropped 1 shard(s)" in repaired.stdout
    assert_index_holds(index, {str(shards / "a"): 2})
    build(run_cli, shards, index, quick_checkpoint, check=True)
    assert_index_holds(index, {str(shards / "a"): 2, str(shards / "b"): 3})


# --- fault injection --------------------------------------------------------------------------


def wait_for_commits(index: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(json.loads((index / "manifest.json").read_text())["shards"]) >= n:
                return
        except (OSError, ValueError):
            pass
        if proc.poll() is not None:
            raise AssertionError(f"build ended first: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError("no commit in time")


def test_s3_server_stopping_mid_shard(tmp_path, run_cli, quick_checkpoint, cli_env):
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="stops")
    for label in CLASSES:
        for i in range(8):
            name = f"{label}{i:02d}.jpg"
            s3.put_object(Bucket="stops", Key=f"shards/{label}/{name}",
                          Body=(UCMERCED / label / name).read_bytes())
    index = tmp_path / "I"
    command = [*cli_command(), "build", "--shards", "s3://stops/shards", "--index", str(index),
               "--model", str(quick_checkpoint), "--endpoint-url", endpoint,
               "--batch-size", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env)
    try:
        wait_for_commits(index, 1, proc)
        server.stop()  # mid-build: the next shard's reads fail
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err
    assert "could not be read and were not indexed" in err
    failures = [m for m in messages(err) if m.startswith("Error: shard s3://stops/shards/")]
    assert failures and all("cannot connect to endpoint" in m for m in failures), err
    committed = IndexReader.open(index).manifest.shards
    assert 1 <= len(committed) < len(CLASSES)
    assert_index_holds(index, {url: 8 for url in committed})  # every committed shard whole

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()  # the same in-process store: the objects are still there
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=cli_env,
                                timeout=300)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    assert_index_holds(index, {f"s3://stops/shards/{c}": 8 for c in CLASSES})


def test_enospc_while_committing(tmp_path, quick_checkpoint, monkeypatch):
    import errno

    from click.testing import CliRunner

    import dahash_index.store.writer as writer_module
    from dahash_index.cli.main import main

    shards, index = tmp_path / "shards", tmp_path / "I"
    for label in CLASSES:
        copy_scenes(shards / label, label, 2)
    real_write = writer_module.atomic_write
    calls = {"parts": 0}

    def full_disk(path, write):
        if Path(path).parent.name == "parts":
            calls["parts"] += 1
            if calls["parts"] == 2:  # the second shard's part: the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write(path, write)

    monkeypatch.setattr(writer_module, "atomic_write", full_disk)
    args = ["build", "--shards", str(shards), "--index", str(index), "--model",
            str(quick_checkpoint)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "No space left on device" in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: ")
    assert_index_holds(index, {str(shards / CLASSES[0]): 2})
    assert not [p for p in index.rglob("*.tmp")]

    monkeypatch.setattr(writer_module, "atomic_write", real_write)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert_index_holds(index, {str(shards / c): 2 for c in CLASSES})


_KILL_BEFORE_MANIFEST = """
import os, signal, sys
import dahash_index.files as files

real_replace = os.replace
parts = []

def replace(src, dst):
    dst = os.fspath(dst)
    if dst.endswith(".parquet") and "/parts/" in dst:
        parts.append(dst)
    if dst.endswith("manifest.json") and len(parts) == 2:  # second shard's part is written
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)

files.os.replace = replace
from dahash_index.cli.main import main
sys.argv = ["dahash-index", *sys.argv[1:]]
main()
"""


def test_killed_between_part_and_manifest(tmp_path, run_cli, quick_checkpoint, cli_env):
    shards, index = tmp_path / "shards", tmp_path / "I"
    for label in CLASSES:
        copy_scenes(shards / label, label, 2)
    args = ["build", "--shards", str(shards), "--index", str(index), "--model",
            str(quick_checkpoint)]
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILL_BEFORE_MANIFEST), *args],
                            capture_output=True, text=True, env=cli_env, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert_index_holds(index, {str(shards / CLASSES[0]): 2})
    result = build(run_cli, shards, index, quick_checkpoint, check=True)
    assert "(1 already committed)" in result.stdout
    assert_index_holds(index, {str(shards / c): 2 for c in CLASSES})


def _decode_workers(pid: int) -> list[int]:
    """Pids of the spawned decode processes of process ``pid`` (not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and "spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def test_decode_worker_dying(tmp_path, quick_checkpoint, cli_env):
    shards, index = tmp_path / "shards", tmp_path / "I"
    for label in CLASSES:
        copy_scenes(shards / label, label, 6)
    command = [*cli_command(), "build", "--shards", str(shards), "--index", str(index),
               "--model", str(quick_checkpoint), "--workers", "1", "--batch-size", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env)
    try:
        wait_for_commits(index, 1, proc)
        workers = _decode_workers(proc.pid)
        assert workers, "no decode process found"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "a decode process died" in err or "indexed 18 scenes" not in out
    assert_index_holds(index, {str(shards / c): 6 for c in CLASSES})


def test_reload_auto_keeps_answering_when_a_new_state_is_damaged(tmp_path, run_cli,
                                                               quick_checkpoint, monkeypatch,
                                                               caplog):
    import dahash_index.query.scene_index as api

    shards, index = tmp_path / "shards", tmp_path / "I"
    copy_scenes(shards / "a", "beach", 2)
    build(run_cli, shards, index, quick_checkpoint, check=True)
    live = SceneIndex.open(index, reload="auto")
    code = live.reader.codes()[:1]
    copy_scenes(shards / "b", "forest", 3)
    build(run_cli, shards, index, quick_checkpoint, check=True)
    part = index / IndexReader.open(index).manifest.shards[str(shards / "b")].part
    good = part.read_bytes()
    part.write_bytes(good[:-100])

    monkeypatch.setattr(api, "RELOAD_INTERVAL_S", 0.0)
    assert live.query_codes(code, top=10).num_rows == 2  # the old state, and a warning
    assert "cannot reload" in caplog.text
    part.write_bytes(good)
    assert live.query_codes(code, top=10).num_rows == 5  # tried again, and now it reads
