"""Hyperparameter search on validation splits carved from the train part only.

    python -m trainer.tune --data ../shared/datasets/ucmerced --bits 64 --seeds 0,1 \
        --out docs/tuning-ucmerced.md

For each seed, the seeded 60/40 split's train part is split again per class 80/20 into
fit / validation; the test part is never touched. Each candidate is scored twice:

- seen classes: validation queries vs the fit part (mAP@all) and vs each other (mAP@20);
- novel classes: 5 seeded classes are left out of fitting; their validation scenes query
  their fit scenes (mAP@all) and each other (mAP@20), as the novel-class protocol of the
  evaluation does with the test part.

Ties are ranked in database order, as the index does; the tie-aware mAP@20 is shown beside
it. The LDA reference is scored on the same parts. The winner is what
``trainer/defaults/dahash.json`` ships.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dahash_index import runtime
from dahash_index.train.data import novel_class_split, split_per_class
from dahash_index.train.evaluate import needed_orientations, score_lda, train_and_score
from dahash_index.train.train import TrainConfig, preset
from dahash_index.train.workflow import labelled_features, oriented_features

# Candidates, each a set of overrides of the starting config (the shipped preset). Every
# figure of docs/tuning-ucmerced.md comes from running a list given with --candidates.
CANDIDATES: list[dict] = [
    {},
    {"centre_weight": 0.0},
    {"standardize": False},
    {"dropout": 0.0, "input_dropout": 0.0},
    {"orientations": 8},
]


def validation_parts(labels: np.ndarray, seed: int) -> dict[str, tuple[np.ndarray, ...]]:
    """(fit_idx, db_idx, query_idx) of the seen- and novel-class validation of one seed; all
    inside the seed's train part."""
    train_idx, _ = split_per_class(labels, seed)
    fit_local, val_local = split_per_class(labels[train_idx], seed, train_fraction=0.8)
    fit_idx, val_idx = train_idx[fit_local], train_idx[val_local]
    seen, unseen = novel_class_split(labels, seed)
    return {
        "seen": (fit_idx, fit_idx, val_idx),
        "novel": (fit_idx[np.isin(labels[fit_idx], seen)],
                  fit_idx[np.isin(labels[fit_idx], unseen)],
                  val_idx[np.isin(labels[val_idx], unseen)]),
    }


def _summary(runs: list[dict]) -> dict[str, float]:
    keys = ("map@all", "map@20", "map@20_tie", "distinct_codes", "train_seconds")
    return {k: float(np.mean([r[k] for r in runs])) for k in keys if k in runs[0]}


_DATA: dict = {}


def _init(features, oriented, labels, threads: int) -> None:
    torch.set_num_threads(threads)
    _DATA.update(features=features, oriented=oriented, labels=labels)


def _score(parts, config: TrainConfig, seed: int) -> dict:
    return train_and_score(_DATA["features"], _DATA["oriented"], _DATA["labels"], *parts,
                           config, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--steps", type=int, default=None, help="override every candidate's")
    parser.add_argument("--candidates", type=json.loads, default=None,
                        help="JSON list of override dicts to try instead of CANDIDATES")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--append", action="store_true", help="add to --out as a new round")
    args = parser.parse_args()
    runtime.configure_threads()
    seeds = [int(s) for s in args.seeds.split(",")]
    backbone, data, features = labelled_features(args.data, "tf2015", None, None)
    start_config = preset("dahash", bits=args.bits)
    if args.steps:
        start_config = replace(start_config, steps=args.steps)
    candidates = args.candidates or CANDIDATES
    configs = [replace(start_config, **overrides).validate() for overrides in candidates]
    oriented = oriented_features(backbone, data, None, needed_orientations(configs))
    labels = data.labels
    parts = {seed: validation_parts(labels, seed) for seed in seeds}

    command = " ".join(["python -m trainer.tune", *sys.argv[1:]])
    lines = [
        f"# Hyperparameter search, {args.data.name}, K = {args.bits}",
        "",
        f"Command: `{command}`",
        "",
        f"Validation (module docstring of `trainer/tune.py`): seeds {seeds}; the test part is "
        "never used. Seen: validation scenes of all classes vs the fit part (mAP@all) and vs "
        "each other (mAP@20). Novel: 5 seeded classes left out of fitting, their validation "
        "scenes vs their fit scenes and vs each other. Ties in database order; 'tie' is the "
        "tie-aware mAP@20; 'codes/class' the mean number of distinct codes among a class's "
        "validation scenes. Ranked by the mean of the four db-order figures. Each candidate "
        "overrides the starting config:",
        "",
        f"`{json.dumps(start_config.to_dict())}`",
        "",
        "| candidate | seen mAP@all | seen mAP@20 (tie) | novel mAP@all | novel mAP@20 (tie) "
        "| codes/class | mean | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lda = {name: [] for name in ("seen", "novel")}
    for seed in seeds:
        for name, (fit_idx, db_idx, query_idx) in parts[seed].items():
            lda[name].append(score_lda(features[fit_idx], labels[fit_idx], features[db_idx],
                                       labels[db_idx], features[query_idx], labels[query_idx]))
    lda_row = {name: _summary(runs) for name, runs in lda.items()}
    lines.append(_row("LDA + cosine (float reference)", lda_row))
    print(lines[-1], flush=True)
    previous = args.out.read_text() + "\n" if args.append and args.out else ""
    if previous:
        lines[0] = "## Another round"

    tasks = [(i, seed, name, part) for i in range(len(configs)) for seed in seeds
             for name, part in parts[seed].items()]
    threads = max(1, torch.get_num_threads() // args.jobs)
    scored = []
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init,
                             initargs=(features, oriented, labels, threads)) as pool:
        futures = [pool.submit(_score, part, configs[i], seed) for i, seed, _, part in tasks]
        for i, overrides in enumerate(candidates):
            runs = {"seen": [], "novel": []}
            for (j, _, name, _), future in zip(tasks, futures, strict=True):
                if j == i:
                    runs[name].append(future.result())
            summary = {name: _summary(r) for name, r in runs.items()}
            scored.append((_mean_figure(summary), overrides))
            lines.append(_row(f"`{json.dumps(overrides)}`", summary))
            print(lines[-1], flush=True)
            if args.out:
                _write(args.out, previous, lines)
    best = max(scored, key=lambda r: r[0])
    lines += ["", f"Best: `{json.dumps(best[1])}` (mean of the four figures {best[0]:.4f})."]
    print(lines[-1])
    if args.out:
        _write(args.out, previous, lines)


def _mean_figure(summary: dict) -> float:
    return float(np.mean([summary[p][k] for p in ("seen", "novel")
                          for k in ("map@all", "map@20")]))


def _row(name: str, s: dict) -> str:
    codes = f"{s['seen']['distinct_codes']:.1f}" if "distinct_codes" in s["seen"] else "–"
    tie = {p: f" ({s[p]['map@20_tie']:.4f})" if "map@20_tie" in s[p] else "" for p in s}
    seconds = f"{s['seen']['train_seconds']:.0f}" if "train_seconds" in s["seen"] else "–"
    return (f"| {name} | {s['seen']['map@all']:.4f} | {s['seen']['map@20']:.4f}{tie['seen']} | "
            f"{s['novel']['map@all']:.4f} | {s['novel']['map@20']:.4f}{tie['novel']} | {codes} | "
            f"{_mean_figure(s):.4f} | {seconds} |")


def _write(path: Path, previous: str, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(previous + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
