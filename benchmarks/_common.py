"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

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
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
        commit += " (uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"command": "python " + " ".join(argv), "commit": commit,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine()}


def write_results(path: Path, record: dict) -> None:
    """Write a results file (JSON, results_header first) and say where."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")
