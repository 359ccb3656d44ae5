"""Hyperparameter search on a validation split carved from the train part only.

    python -m trainer.tune --data ../shared/datasets/ucmerced --bits 64 \
        --out docs/tuning-ucmerced.md

For each seed, the seeded 60/40 split's train part is split again per class 80/20 into
fit / validation; the test part is never touched. Candidates are scored by validation
mAP@all (validation queries vs the fit part) and mAP@20 (validation vs validation), for
each candidate in ``CANDIDATES``. The winner is what ``trainer/defaults/dahash.json`` ships.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from dahash_index import runtime
from dahash_index.codes import hash_codes
from trainer.data import split_per_class
from trainer.evaluate import score_codes
from trainer.train import TrainConfig, hash_outputs, preset, train_hash_net
from trainer.workflow import labelled_features

# Candidates, each a set of overrides of the starting config (the untuned shipped preset).
# Chosen by hand from short exploratory runs; every figure of docs/tuning-ucmerced.md comes
# from running this list.
CANDIDATES: list[dict] = [
    {},
    {"lr": 3e-4},
    {"per_class": 8},
    {"alpha": 1.0, "beta": 1.0},
    {"margin_fraction": 0.125},
    {"margin_fraction": 0.5},
    {"sampler": "random"},
    {"sampler": "batch-all"},
    {"steps": 1500},
]


def validation_score(features, labels, config: TrainConfig, seeds: list[int]) -> dict:
    """Mean validation figures over seeds for one config."""
    rows = []
    for seed in seeds:
        train_idx, _ = split_per_class(labels, seed)
        fit_local, val_local = split_per_class(labels[train_idx], seed, train_fraction=0.8)
        fit_idx, val_idx = train_idx[fit_local], train_idx[val_local]
        net, log = train_hash_net(features[fit_idx], labels[fit_idx], config, seed,
                                  progress=False)
        codes = hash_codes(hash_outputs(net, features))
        s = score_codes(codes[fit_idx], labels[fit_idx], codes[val_idx], labels[val_idx])
        rows.append((s["map@all"], s["map@20"], log[-1]["seconds"]))
    mean = np.mean(rows, axis=0)
    return {"map@all": mean[0], "map@20": mean[1], "seconds": mean[2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--steps", type=int, default=None, help="override every candidate's")
    parser.add_argument("--candidates", type=json.loads, default=None,
                        help="JSON list of override dicts to try instead of CANDIDATES")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--append", action="store_true", help="add to --out as a new round")
    args = parser.parse_args()
    runtime.configure_threads()
    seeds = [int(s) for s in args.seeds.split(",")]
    _, data, features = labelled_features(args.data, "tf2015", None, None)
    start_config = preset("dahash", bits=args.bits)
    if args.steps:
        start_config = replace(start_config, steps=args.steps)
    command = " ".join(["python -m trainer.tune", *sys.argv[1:]])
    lines = [
        f"# Hyperparameter search, {args.data.name}, K = {args.bits}",
        "",
        f"Command: `{command}`",
        "",
        f"Validation: per seed in {seeds}, the 60/40 split's train part split again 80/20 per "
        "class (fit / validation); the test part is never used. Scores: validation queries "
        "against the fit part (mAP@all) and against each other (mAP@20), ties in database "
        "order, at the end of training. Each candidate overrides the starting config:",
        "",
        f"`{json.dumps(start_config.to_dict())}`",
        "",
        "| candidate | val mAP@all | val mAP@20 | train s |",
        "|---|---|---|---|",
    ]
    scored = []
    previous = args.out.read_text() + "\n" if args.append and args.out else ""
    if previous:
        lines[0] = "## Another round"
    for overrides in args.candidates or CANDIDATES:
        config = replace(start_config, **overrides)
        score = validation_score(features, data.labels, config, seeds)
        scored.append((score["map@all"], score["map@20"], overrides))
        row = (f"| `{json.dumps(overrides)}` | {score['map@all']:.4f} | {score['map@20']:.4f} "
               f"| {score['seconds']:.0f} |")
        print(row, flush=True)
        lines.append(row)
        if args.out:
            _write(args.out, previous, lines)
    best = max(scored, key=lambda r: (r[0], r[1]))
    lines += ["", f"Best: `{json.dumps(best[2])}` (val mAP@all {best[0]:.4f}, "
              f"mAP@20 {best[1]:.4f})."]
    print(lines[-1])
    if args.out:
        _write(args.out, previous, lines)


def _write(path: Path, previous: str, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(previous + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
