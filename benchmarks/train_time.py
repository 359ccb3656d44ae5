"""Wall time to train a K = 64 model from cached features with the shipped defaults.

    python benchmarks/train_time.py [--bits 64] [--seed 0] [--threads 2] [--repeat 3]

Baseline: the goal of 60 s on this machine, judged on the median of the runs. Uses the UC
Merced feature cache (built on first use; with the 8 orientations when the preset trains on
them) and the seed-0 60/40 split's train part (1260 scenes). Writes
benchmarks/results/train-time.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from _common import REPO, UCMERCED, headline, machine, results_header, write_results

from dahash_index import runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks" / "results" / "train-time.json")
    args = parser.parse_args()
    runtime.configure_threads(args.threads)

    from dahash_index.train.data import split_per_class
    from dahash_index.train.evaluate import needed_orientations, training_features
    from dahash_index.train.train import preset, train_hash_net
    from dahash_index.train.workflow import labelled_features, oriented_features

    backbone, data, features = labelled_features(UCMERCED, "tf2015", None, None)
    train_idx, _ = split_per_class(data.labels, args.seed)
    config = preset("dahash", bits=args.bits)
    oriented = oriented_features(backbone, data, None, needed_orientations([config]))
    train_features = training_features(features, oriented, train_idx, config)
    runs = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        train_hash_net(train_features, data.labels[train_idx], config, args.seed,
                       progress=False)
        runs.append(time.perf_counter() - start)
    setup = (f"torch threads {args.threads}; K={args.bits}, seed {args.seed}, "
             f"{len(train_idx)} train scenes, {config.steps} steps ({config.sampler})")
    print(f"machine: {machine()}; {setup}")
    print(f"{'goal (baseline)':<28} {60.0:8.1f} s")
    figure = headline(f"train_hash_net, K = {args.bits}, from cached features", runs, "s",
                      "<= 60 s", met=None)
    figure["met"] = figure["median"] <= 60
    print(f"{'train_hash_net (project)':<28} {figure['median']:8.1f} s (median of "
          f"{args.repeat}; min {figure['min']:.1f})")
    write_results(args.out, results_header(sys.argv) | {"setup": setup, "seed": args.seed,
                                                        "headline": [figure]})


if __name__ == "__main__":
    main()
