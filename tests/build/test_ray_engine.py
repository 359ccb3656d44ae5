"""The Ray engine (``build --engine ray``) against the local engine: same scenes, same codes.

- Synthetic scenes through the CLI (Ray started by the command on 127.0.0.1, every core, no
  dashboard): the rows and codes of the local engine, the undecodable scene skipped in one
  line, and no Ray chatter on the terminal (~1 min).
- Without the ray package: one line with the pip hint, nothing left behind.
- ``realdata``: 6 UC Merced classes, 40 scenes each (240 scenes, 6 class shards), built by
  both engines through the CLI: exactly the same (url, member) -> code mapping. Then 4 of
  those classes built through the Python API on a Ray started by the test (127.0.0.1, 2 CPUs,
  no dashboard) while an encoder actor is killed in the middle of a shard (an ``on_batch``
  hook, ``ExitOnce``): the build completes with the same codes, no shard lost or doubled. The
  local reference is built once per module. ``benchmarks/ray_build.py`` runs both engines
  over more of UC Merced.

Skipped, with the reason, where ray is not installed (the missing-ray test runs anyway).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import UCMERCED, link_ucmerced
from PIL import Image

from dahash_index.build.indexer import build_index
from dahash_index.build.job import BuildOptions
from dahash_index.store import IndexReader

SceneKey = tuple[str, str | None]


@pytest.fixture(scope="module")
def ray_module():
    return pytest.importorskip("ray", reason="ray not installed: pip install 'dahash-index[ray]'")


class ExitOnce:
    """An ``on_batch`` hook (it runs in the Ray actors): the first actor process to finish
    its ``after``-th batch exits on the spot, once per marker file (of every actor and every
    restart, the one that creates the marker wins), so a restarted actor does not die again."""

    def __init__(self, after: int, marker: Path) -> None:
        self.after = after
        self.marker = marker
        self.batches = 0

    def __call__(self, scenes: int) -> None:
        self.batches += 1
        if self.batches != self.after:
            return
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(1)


def codes_by_scene(index: Path) -> dict[SceneKey, bytes]:
    """(url, member) -> code of every row; refuses an index holding a scene twice."""
    reader = IndexReader.open(index)
    meta = reader.metadata(columns=["url", "member"])
    keys = list(zip(meta["url"].to_pylist(), meta["member"].to_pylist(), strict=True))
    assert len(set(keys)) == len(keys), f"{index} holds a scene twice"
    return {key: code.tobytes() for key, code in zip(keys, reader.codes(), strict=True)}


def by_shard_and_name(codes: dict[SceneKey, bytes], shards: set[str]) -> dict[tuple, bytes]:
    """The codes of the scenes of ``shards`` (class directories), keyed by where they are in
    the shard, so that the same scenes under another root compare equal."""
    return {(Path(url).parent.name, Path(url).name, member): code
            for (url, member), code in codes.items() if Path(url).parent.name in shards}


def errors(index: Path) -> list[dict]:
    return sorted(IndexReader.open(index).errors().to_pylist(), key=lambda e: e["url"])


def messages(stderr: str) -> list[str]:
    """stderr as the lines a user reads (tqdm redraws its bar with carriage returns)."""
    return [seg.strip() for line in stderr.split("\n") for seg in line.split("\r") if seg.strip()]


def write_scene(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(path)


# --- synthetic scenes, through the CLI ------------------------------------------------------


def test_cli_ray_engine_matches_local_on_synthetic_scenes(ray_module, tmp_path, quick_checkpoint,
                                                          run_cli, run_cli_process):
    shards = tmp_path / "shards"
    for i in range(5):
        write_scene(shards / "a" / f"s{i}.png", i)
    for i in range(3):
        write_scene(shards / "b" / f"t{i}.jpg", 10 + i)
    bad = shards / "b" / "broken.png"
    bad.write_bytes(b"not an image at all\n" * 8)

    local = run_cli("build", "--shards", shards, "--index", tmp_path / "L", "--model",
                    quick_checkpoint, check=True)
    # In a process of its own: what Ray prints goes to the terminal, not through click.
    ray = run_cli_process("build", "--shards", shards, "--index", tmp_path / "R", "--model",
                          quick_checkpoint, "--engine", "ray", check=True)

    assert "indexed 8 scenes from 2 shard(s) (0 already committed), 1 error(s)" in ray.stdout
    assert codes_by_scene(tmp_path / "R") == codes_by_scene(tmp_path / "L")
    assert errors(tmp_path / "R") == errors(tmp_path / "L")
    lines = messages(ray.stderr)
    named = [m for m in lines if str(bad) in m]
    assert len(named) == 1 and named[0].startswith(f"skipped {bad}: "), ray.stderr
    # The user sees what the local engine shows: no Ray start-up or worker chatter.
    assert not [m for m in lines if m not in messages(local.stderr)], ray.stderr
    assert not list((tmp_path / "R" / "staging").glob("*.result"))


def test_missing_ray_is_one_line_with_the_pip_hint(tmp_path, quick_checkpoint, run_cli_process,
                                                   cli_env):
    hidden = tmp_path / "no-ray" / "ray"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    write_scene(tmp_path / "shards" / "a" / "s0.png", 0)
    env = {**cli_env, "PYTHONPATH": os.pathsep.join(
        [str(hidden.parent), *filter(None, [cli_env.get("PYTHONPATH")])])}

    result = run_cli_process("build", "--shards", tmp_path / "shards", "--index",
                             tmp_path / "I", "--model", quick_checkpoint, "--engine", "ray",
                             env=env)

    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "pip install 'dahash-index[ray]'" in lines[0]
    assert not (tmp_path / "I").exists()  # refused before its first commit: nothing left


# --- UC Merced ------------------------------------------------------------------------------


CLASSES, PER_CLASS = 4, 33  # 2 batches a shard (32 and 1)


@pytest.fixture(scope="module")
def ucmerced_part(tmp_path_factory) -> Path:
    classes = sorted(p.name for p in UCMERCED.iterdir() if p.is_dir())[:CLASSES]
    return link_ucmerced(tmp_path_factory.mktemp("ucmerced-part"), PER_CLASS, classes)


@pytest.fixture(scope="module")
def local_reference(ucmerced_part, quick_checkpoint, run_cli) -> dict[SceneKey, bytes]:
    """The UC Merced part indexed by the local engine (the CLI's default), once per module."""
    index = ucmerced_part.parent / "local-index"
    run_cli("build", "--shards", ucmerced_part, "--index", index, "--model", quick_checkpoint,
            check=True)
    return codes_by_scene(index)


@pytest.mark.realdata
def test_cli_ray_engine_indexes_ucmerced_like_local(ray_module, local_reference, tmp_path,
                                                    ucmerced_part, quick_checkpoint,
                                                    run_cli_process):
    result = run_cli_process("build", "--shards", ucmerced_part, "--index", tmp_path / "R",
                             "--model", quick_checkpoint, "--engine", "ray", timeout=1800,
                             check=True)

    n = CLASSES * PER_CLASS
    assert f"indexed {n} scenes from {CLASSES} shard(s)" in result.stdout, result.stdout
    ray_codes = codes_by_scene(tmp_path / "R")
    assert len(local_reference) == n
    assert ray_codes.keys() == local_reference.keys()
    differ = [key for key, code in ray_codes.items() if code != local_reference[key]]
    assert not differ, f"{len(differ)} scenes got other codes, e.g. {differ[:3]}"


@pytest.fixture
def ray_here(ray_module):
    """Ray started by the test, as a user would in a notebook: this machine only."""
    ray_module.init(address="local", num_cpus=2, include_dashboard=False,
                    _node_ip_address="127.0.0.1", logging_level=logging.ERROR,
                    log_to_driver=False)
    yield ray_module
    ray_module.shutdown()


@pytest.mark.realdata
def test_killed_encoder_loses_and_doubles_nothing(ray_here, local_reference, tmp_path,
                                                  quick_checkpoint):
    from ray import cloudpickle

    classes = sorted(p.name for p in UCMERCED.iterdir() if p.is_dir())[:4]
    # Whole shards of the reference: the same batches as in the reference build.
    shards = link_ucmerced(tmp_path / "shards", PER_CLASS, classes)
    marker = tmp_path / "killed"
    # Shards of 40 scenes in batches of 32 (2 batches): the first actor to finish its 3rd
    # batch, the first of its 2nd shard, exits in the middle of that shard.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors cannot import tests
    report = build_index(str(shards), tmp_path / "I", quick_checkpoint,
                         BuildOptions(engine="ray", on_batch=ExitOnce(3, marker)),
                         progress=False)

    assert marker.exists(), "no encoder was killed"
    assert report.failed == [] and report.shards_indexed == 4, report
    got = by_shard_and_name(codes_by_scene(tmp_path / "I"), set(classes))
    assert len(got) == report.row_count == 4 * PER_CLASS
    assert got == by_shard_and_name(local_reference, set(classes))
    assert not list((tmp_path / "I" / "staging").glob("*.result"))  # no stray second copy
    assert ray_here.is_initialized()  # the runner leaves a Ray it did not start running
