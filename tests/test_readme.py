"""The README's walk-through and its Python example, run as a new user runs them, on a small
copy of UC Merced laid out as the README's ``my-labelled-scenes/`` and ``my-archive/``.

Every command of the walk-through's shell block runs in this process (click's CliRunner)
with the environment the block exports, with two exceptions said here: ``train`` gets
``--set steps=60`` (the shipped 800 steps would add a minute to the suite; the command is
otherwise the README's), and ``serve``, which would not return, is asked for ``--help``.
The walk-through's second block (``adapt``) runs after the first, in the same environment.
The set-up block (``make demo``, ``make test``) is what CI itself runs.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from helpers import link_ucmerced

from dahash_index.cli.query import PLAIN_HEADER

README = Path(__file__).resolve().parents[1] / "README.md"
CLASSES = ("agricultural", "beach", "buildings", "forest", "freeway", "harbor", "overpass",
           "river")


def fenced(section: str, language: str) -> str:
    """The first ```language block after the README heading ``section``."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(text, start)
    assert match, f"no {language} block under {section!r}"
    return match.group(1)


def test_the_readme_is_short_and_starts_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    setup = fenced("Set-up (fresh clone, fresh machine)", "sh")
    assert [line.split()[:2] for line in setup.splitlines()] == [["make", "demo"],
                                                                 ["make", "test"]]


@pytest.fixture
def scenes(tmp_path) -> Path:
    """tmp_path with my-labelled-scenes/ (8 classes x 10) and my-archive/ (8 shards x 5)."""
    link_ucmerced(tmp_path / "my-labelled-scenes", 10, list(CLASSES))
    link_ucmerced(tmp_path / "my-archive", 5, list(CLASSES))
    return tmp_path


@pytest.mark.realdata
def test_the_walk_through_runs_as_written(scenes, run_cli, cli_env, monkeypatch):
    monkeypatch.chdir(scenes)
    env = dict(cli_env)
    outputs = {}
    lines = (fenced("A first index of your own scenes", "sh").splitlines()
             + fenced("An archive without labels", "sh").splitlines())
    for line in lines:
        words = shlex.split(line, comments=True)
        if not words or words[0] == ".":  # blank, or activating the .venv these tests run in
            continue
        if words[0] == "export":
            key, _, value = words[1].partition("=")
            env[key] = value.replace("$PWD", os.getcwd())
            continue
        assert words[0] == "dahash-index", line
        args = words[1:]
        if args[0] == "train":
            args += ["--set", "steps=60"]
        if args[0] == "serve":
            args = ["serve", "--help"]
        result = run_cli(*args, env=env)
        assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
        outputs.setdefault(args[0], result.stdout)  # the walk-through's, not adapt's build
    header, *hits = outputs["query"].splitlines()
    assert header == PLAIN_HEADER and f"\n{PLAIN_HEADER}\n" in README.read_text()
    assert hits[0] == "# my-archive/beach/beach00.jpg"
    assert len(hits) == 6 and all(re.match(r"\s+\d+\s+\d+\s+[01]\.\d{4}\s+\d+ /", h)
                                  for h in hits[1:])
    assert "beach00.jpg" in hits[1]  # the scene itself first: re-ranking breaks its tie
    assert re.search(r"^rows +40 from 8 committed shard\(s\)$", outputs["info"], re.M)
    # the walk-through's model keeps 128-d re-rank vectors, stored as int8
    assert re.search(r"^re-rank +every row keeps a re-rank vector \(128-d int8; query --rerank\)$",
                     outputs["info"], re.M)

    # The Python example, as written, against the index just built.
    exec(compile(fenced("The Python API", "python"), "README.md", "exec"), {})
