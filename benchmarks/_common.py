"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("DAHASH_INDEX_DATASETS") or REPO.parent / "shared" / "datasets")
UCMERCED = DATASETS / "ucmerced"


def machine() -> str:
    """One line naming the machine the figures came from."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    python = platform.python_version()
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} cores, Python {python}"


def subset_shards(root: Path, classes: int, per_class: int, out: Path) -> Path:
    """A shards directory of symlinks: the first `per_class` scenes of the first `classes`
    classes of an image-folder dataset, one shard per class."""
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir())[:classes]:
        (out / class_dir.name).mkdir(parents=True, exist_ok=True)
        for scene in sorted(class_dir.iterdir())[:per_class]:
            link = out / class_dir.name / scene.name
            if not link.exists():
                link.symlink_to(scene)
    return out


def untrained_model(path: Path, backbone: str = "random", seed: int = 0) -> Path:
    """A checkpoint of an untrained 64-bit hash network on ``backbone`` (``random``: TF's
    graph with seeded random weights, for machines the real weights cannot travel to)."""
    import torch

    from dahash_index.model.backbones import load_backbone
    from dahash_index.model.checkpoint import save_checkpoint
    from dahash_index.model.network import dahash_net

    torch.manual_seed(seed)
    save_checkpoint(path, dahash_net(64), load_backbone(backbone).spec, [], 0, {})
    return path


def results_header(argv: list[str]) -> dict:
    """What every results file starts with: the command, the commit, the date, the machine."""
    import subprocess
    from datetime import datetime, timezone

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.strip()
        # Only changes to code count: a doc edited while a benchmark runs changes no figure.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                "dahash_index", "benchmarks/*.py", "pyproject.toml"],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
        commit += " (uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    script = Path(argv[0]).resolve()
    if script.is_relative_to(REPO):  # the same command wherever it was started from
        argv = [str(script.relative_to(REPO)), *argv[1:]]
    return {"command": "python " + " ".join(argv), "commit": commit,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine()}


def write_results(path: Path, record: dict) -> None:
    """Write a results file (JSON, results_header first) and say where."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")


def evict(root: Path) -> int:
    """Drop every file under ``root`` from the page cache (``posix_fadvise(DONTNEED)``, after
    an fsync so that no dirty page stays), so that the next read comes from the disk: a cold
    case. -> the number of files. Pages mapped by a running process stay until it unmaps."""
    count = 0
    for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        count += 1
    return count


def headline(figure: str, runs: list[float], unit: str, goal: str = "",
             met: bool | None = None, scale: float = 1.0) -> dict:
    """One figure of a results file as ``benchmarks/report.py`` renders it: every run, the
    median (what a goal is judged on) and the minimum, times ``scale`` (e.g. 1e3 for ms)."""
    values = [float(r) * scale for r in runs]
    return {"figure": figure, "unit": unit, "runs": values,
            "median": float(np.median(values)) if values else None,
            "min": min(values) if values else None, "goal": goal,
            "met": None if met is None else bool(met)}  # a numpy bool is no JSON
