"""Hyperparameter search on a validation split carved from the train part only.

    python -m trainer.tune --data ../shared/datasets/ucmerced --bits 64 \
        --out docs/tuning-ucmerced.md

For each seed, the seeded 60/40 split's train part is split again per class 80/20 into
fit / validation; the test part is never touched. Candidates are scored by validation
mAP@all (validation queries vs the fit part) and mAP@20 (validation vs validation). The
search is coordinate-wise: one option at a time, keeping the best value, in the order of
``SEARCH``. The winner is what ``trainer/defaults/dahash.json`` ships.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from dahash_index.codes import hash_codes
from trainer.data import split_per_class
from trainer.evaluate import score_codes
from trainer.train import TrainConfig, hash_outputs, preset, train_hash_net
from trainer.workflow import labelled_features

SEARCH: list[tuple[str, list]] = [
    ("sampler", ["random", "batch-all", "semi-hard"]),
    ("margin_fraction", [0.1, 0.25, 0.5]),
    ("lr", [1e-4, 3e-4, 1e-3]),
    ("steps", [1000, 2000, 4000]),
    ("alpha", [0.0, 0.1, 1.0]),
    ("beta", [0.0, 0.1, 1.0]),
    ("dropout", [0.0, 0.2, 0.5]),
    ("weight_decay", [0.0, 1e-5, 1e-4]),
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
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    _, data, features = labelled_features(args.data, "tf2015", None, None)
    labels = data.labels
    best = preset("dahash", bits=args.bits)
    lines = [
        f"# Hyperparameter search, {args.data.name}, K = {args.bits}",
        "",
        f"Command: `python -m trainer.tune --data {args.data} --bits {args.bits} "
        f"--seeds {args.seeds}`",
        "",
        f"Validation: per seed in {seeds}, the 60/40 split's train part split again 80/20 per "
        "class; the test part is never used. Score = mean validation mAP@all (+ mAP@20 as "
        "tie-break) over the seeds. Coordinate-wise search from the starting config:",
        "",
        f"`{json.dumps(best.to_dict())}`",
        "",
        "| option | value | val mAP@all | val mAP@20 | train s |",
        "|---|---|---|---|---|",
    ]
    best_score = validation_score(features, labels, best, seeds)
    for option, values in SEARCH:
        scored = {}
        for value in values:
            candidate = replace(best, **{option: value})
            start = time.perf_counter()
            scored[value] = validation_score(features, labels, candidate, seeds)
            s = scored[value]
            print(f"{option}={value}: val mAP@all {s['map@all']:.4f} mAP@20 {s['map@20']:.4f} "
                  f"({time.perf_counter() - start:.0f}s)", flush=True)
            lines.append(f"| {option} | {value} | {s['map@all']:.4f} | {s['map@20']:.4f} | "
                         f"{s['seconds']:.0f} |")
        value = max(scored, key=lambda v: (scored[v]["map@all"], scored[v]["map@20"]))
        best, best_score = replace(best, **{option: value}), scored[value]
    lines += ["", f"Chosen: `{json.dumps(best.to_dict())}`", "",
              f"Validation mAP@all {best_score['map@all']:.4f}, "
              f"mAP@20 {best_score['map@20']:.4f}."]
    print(lines[-3])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
