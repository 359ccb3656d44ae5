"""Shared fixtures: where the real datasets are, the ``dahash-index`` command as a user runs it,
model checkpoints (an untrained one in seconds, a trained one on UC Merced), and a local
S3-compatible server (moto).

Nothing here is autouse: test files that do not ask for a fixture are unaffected.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import (
    DATASETS,
    GOOD,
    UCMERCED,
    cli_command,
    have_datasets,
    link_ucmerced,
    save_scene,
    write_geotiff,
)


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory) -> dict[str, str]:
    """Environment for ``dahash-index`` subprocesses: a private DAHASH_INDEX_HOME (defaults
    never touch the user's), dummy AWS credentials, no AWS profile / endpoint / instance
    metadata lookups (everything stays offline)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        DAHASH_INDEX_HOME=str(tmp_path_factory.mktemp("dahash-home")),
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def pytest_collection_modifyitems(config, items) -> None:
    """The one skip for the real data: tests marked ``realdata`` read ../shared/datasets, and
    say so when it is absent."""
    if have_datasets():
        return
    skip = pytest.mark.skip(reason=f"real data not found at {DATASETS} (../shared/datasets "
                                   "beside the repository, or $DAHASH_INDEX_DATASETS)")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


@dataclass
class CliResult:
    """What a ``dahash-index`` run left: exit status and the two streams (text)."""

    returncode: int
    stdout: str
    stderr: str


def _in_process(args: list[str], env: dict[str, str]) -> CliResult:
    """``dahash-index ARGS`` in this process (click's CliRunner) with exactly ``env`` as the
    environment; an exception the command lets out exits 1 with its traceback on stderr, as
    the console script would."""
    from click.testing import CliRunner

    from dahash_index.cli import main

    unset = {k: None for k in os.environ if k not in env}
    result = CliRunner().invoke(main, args, env={**unset, **env}, catch_exceptions=True)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return CliResult(result.exit_code, result.stdout, stderr)


def _in_subprocess(args: list[str], env: dict[str, str], timeout: float) -> CliResult:
    done = subprocess.run([*cli_command(), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    return CliResult(done.returncode, done.stdout, done.stderr)


def _cli_runner(cli_env: dict[str, str], process: bool):
    def run(*args: object, timeout: float = 600, env: dict | None = None,
            check: bool = False) -> CliResult:
        argv = [str(a) for a in args]
        result = (_in_subprocess(argv, env or cli_env, timeout) if process
                  else _in_process(argv, env or cli_env))
        if check and result.returncode != 0:
            raise AssertionError(
                f"dahash-index {' '.join(argv)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    return run


@pytest.fixture(scope="session")
def run_cli(cli_env):
    """run_cli(*args, env=..., check=...) -> CliResult of ``dahash-index ARGS``, run in this
    process (click's CliRunner): what the command prints and its exit status, without a new
    interpreter and torch import per call."""
    return _cli_runner(cli_env, process=False)


@pytest.fixture(scope="session")
def run_cli_process(cli_env):
    """run_cli_process(*args, timeout=..., env=..., check=...) -> CliResult of the
    ``dahash-index`` console script in a process of its own: for what only a process shows
    (its exit at once, signals, imports, a cold start, concurrent writers)."""
    return _cli_runner(cli_env, process=True)


@contextlib.contextmanager
def running_service(index: Path, env: dict[str, str], *options: str, timeout: float = 120
                    ) -> Iterator[str]:
    """``dahash-index serve --index INDEX [OPTIONS]`` on a free port of 127.0.0.1, as a user
    starts it; yields its URL once it answers (any HTTP status), and stops it on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([*cli_command(), "serve", "--index", str(index), "--port",
                               str(port), *options], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=10).close()
                break
            except urllib.error.HTTPError:
                break  # it answers (401 without the token)
            except OSError:
                assert server.poll() is None, server.stderr.read()
                assert time.monotonic() < deadline, f"the service did not start in {timeout} s"
                time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


# --- checkpoints ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tf2015_spec():
    """The spec of the real tf2015 backbone (loading it takes a couple of seconds)."""
    from dahash_index.model.backbones import load_backbone

    return load_backbone("tf2015").spec


def _untrained_checkpoint(path: Path, spec, seed: int) -> Path:
    import torch

    from dahash_index.model.checkpoint import save_checkpoint
    from dahash_index.model.network import dahash_net

    torch.manual_seed(seed)
    save_checkpoint(path, dahash_net(64), spec, ["a", "b"], 0, {})
    return path


def _tiny_checkpoint(path: Path, bits: int, seed: int) -> Path:
    """A checkpoint on a stand-in backbone spec: for the store, never for encoding scenes."""
    import torch

    from dahash_index.model.backbones import BackboneSpec
    from dahash_index.model.checkpoint import save_checkpoint
    from dahash_index.model.network import dahash_net

    torch.manual_seed(seed)
    spec = BackboneSpec("tf2015", "0" * 64, (0.5,) * 3, (0.5,) * 3)
    save_checkpoint(path, dahash_net(bits=bits), spec, ["a", "b"], 0, {})
    return path


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Three tiny checkpoints: "a" and "b" (16 bits, other weights), "wide" (64 bits)."""
    d = tmp_path_factory.mktemp("ckpt")
    return {
        "a": _tiny_checkpoint(d / "a.pt", 16, 0),
        "b": _tiny_checkpoint(d / "b.pt", 16, 1),
        "wide": _tiny_checkpoint(d / "wide.pt", 64, 2),
    }


@pytest.fixture(scope="session")
def quick_checkpoint(tmp_path_factory, tf2015_spec) -> Path:
    """An untrained 64-bit network on the real tf2015 backbone: valid codes, made in seconds."""
    return _untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "quick.pt", tf2015_spec, 0)


@pytest.fixture(scope="session")
def arithmetic_checkpoint(tmp_path_factory) -> Path:
    """An untrained 64-bit network on the tf2015 backbone, or on the ``random`` one (the same
    graph) where tf2015's weights are not installed: a GPU machine they cannot travel to.
    For tests of the encoding's arithmetic (devices, precisions), never of retrieval."""
    from dahash_index.model.backbones import BackboneError, load_backbone

    try:
        spec = load_backbone("tf2015").spec
    except BackboneError:
        spec = load_backbone("random").spec
    return _untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "arith.pt", spec, 0)


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory, tf2015_spec) -> Path:
    """Another untrained checkpoint (other weights, so another model checksum)."""
    return _untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "other.pt", tf2015_spec, 1)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, run_cli) -> Path:
    """A 64-bit model trained with ``dahash-index train`` and the shipped preset on 24 scenes
    of each of UC Merced's 21 classes (504 scenes; with the views the preset trains on and
    the re-rank projection is fitted on, each scene's mirror image and 90° turn, 1,512
    backbone passes when the feature cache, $DAHASH_INDEX_CACHE or
    ~/.cache/dahash-index/features, is cold). The step count is pinned so that a longer
    preset cannot slow the tests down."""
    if not UCMERCED.is_dir():
        pytest.skip(f"real data not found at {UCMERCED} (../shared/datasets)")
    root = tmp_path_factory.mktemp("trained")
    data = link_ucmerced(root / "data", per_class=24)
    result = run_cli("train", "--data", data, "--bits", "64", "--out", root / "model.pt",
                     "--set", "steps=800", check=True)
    assert (root / "model.pt").is_file(), result.stdout
    print(result.stdout.strip().splitlines()[-1])
    return root / "model.pt"


# --- a small index of synthetic scenes (untrained model), built once ---------------------------


@pytest.fixture(scope="session")
def small(tmp_path_factory, quick_checkpoint, run_cli):
    """Two committed dir shards ('good', 'more') of synthetic scenes, built with the CLI (folder
    labels: later builds of the index keep them)."""
    root = tmp_path_factory.mktemp("small")
    shards = root / "shards"
    for rel, seed in GOOD.items():
        save_scene(shards / rel, seed)
    index = root / "index"
    result = run_cli(
        "build", "--shards", shards, "--index", index, "--model", quick_checkpoint,
        "--label-from", "folder", check=True
    )
    assert f"{index} holds {len(GOOD)} rows" in result.stdout, result.stdout
    return {"root": root, "shards": shards, "index": index, "model": quick_checkpoint}


# Two folders of small GeoTIFFs in two UTM zones, a row of scenes each, dated apart: what the
# page's map and filters need (labels from the folders).
GEO_FOLDERS = {"coast": ("EPSG:32633", 500_000, "2021:06:{day:02d} 10:00:00"),
               "hills": ("EPSG:32632", 600_000, "2022:03:{day:02d} 10:00:00")}
GEO_PER_FOLDER = 6


@pytest.fixture(scope="session")
def geo_index(tmp_path_factory, quick_checkpoint, run_cli) -> dict:
    """An index (built with the CLI, --label-from folder) of GEO_FOLDERS' scenes."""
    root = tmp_path_factory.mktemp("geo")
    for f, (folder, (crs, east, date)) in enumerate(GEO_FOLDERS.items()):
        for i in range(GEO_PER_FOLDER):
            write_geotiff(root / "shards" / folder / f"{folder}{i}.tif", 48, 48,
                          (10.0, 0.0, east + 2000.0 * i, 0.0, -10.0, 5_000_000.0), {},
                          {"TIFFTAG_DATETIME": date.format(day=10 + i)}, 10 * f + i, crs=crs)
    run_cli("build", "--shards", root / "shards", "--index", root / "index", "--model",
            quick_checkpoint, "--bands", "3,2,1", "--label-from", "folder", check=True)
    return {"root": root, "shards": root / "shards", "index": root / "index"}


# --- a local S3-compatible server ----------------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint():
    """http://127.0.0.1:PORT of a moto S3 server running in this process (offline)."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] not installed")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3_client(s3_endpoint):
    boto3 = pytest.importorskip("boto3")
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
