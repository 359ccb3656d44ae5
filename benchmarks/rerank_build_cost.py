"""What the re-rank vectors cost a build: time and bytes a row, with vs without them.

    python benchmarks/rerank_build_cost.py [--model runs/ucmerced/model.pt] [--classes 4]
        [--per-class 50] [--rounds 3]

Baseline: ``build_index`` of a UC Merced subset (one shard per class) with the model less its
re-rank projection (codes only). Project: the same build with the model as trained (codes and
a re-rank vector a row). The two are built in turn, ``--rounds`` times, into fresh indexes;
the figures are medians. Goal (issue 20): the project build takes at most 1.1 x the
baseline's time, and the vectors add at most 128 bytes a row. Seed: none drawn (the model's
weights are fixed). Writes --out with the command, commit, date and machine.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, UCMERCED, machine, results_header, subset_shards, write_results

from dahash_index import runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "runs/ucmerced/model.pt")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks/results/rerank-build-cost.json")
    args = parser.parse_args()
    runtime.configure_threads(args.threads)

    import torch

    from dahash_index.build.indexer import build_index
    from dahash_index.build.job import BuildOptions
    from dahash_index.model.checkpoint import load_checkpoint
    from dahash_index.store import IndexReader

    checkpoint = load_checkpoint(args.model)
    if checkpoint.rerank is None:
        sys.exit(f"{args.model}: has no re-rank projection to measure")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = subset_shards(UCMERCED, args.classes, args.per_class, tmp / "shards")
        bare = tmp / "codes-only.pt"
        payload = torch.load(args.model, map_location="cpu", weights_only=True)
        del payload["rerank"]
        torch.save(payload, bare)
        models = {"codes only (baseline)": bare, "codes + re-rank vectors": args.model}
        seconds: dict[str, list[float]] = {name: [] for name in models}
        vector_bytes = payload = 0
        rows = 0
        for _ in range(args.rounds):
            for name, model in models.items():
                index = tmp / "index"
                shutil.rmtree(index, ignore_errors=True)
                start = time.perf_counter()
                report = build_index(str(shards), index, model, BuildOptions(), progress=False)
                seconds[name].append(time.perf_counter() - start)
                rows = report.row_count
                if model == args.model:
                    entries = IndexReader.open(index).manifest.shards.values()
                    files = [index / e.vectors for e in entries]
                    vector_bytes = sum(f.stat().st_size for f in files)
                    payload = sum(np.load(f, mmap_mode="r").nbytes for f in files)

    base, with_vectors = (statistics.median(seconds[name]) for name in models)
    result = results_header(sys.argv) | {
        "rows": rows, "rounds": args.rounds,
        "seconds": seconds,
        "median_seconds": {"codes only": base, "with vectors": with_vectors},
        "time_ratio": with_vectors / base, "time_goal": 1.1,
        "vector_bytes_per_row": payload / rows, "file_bytes_per_row": vector_bytes / rows,
        "bytes_goal": 128,
    }
    print(f"machine: {machine()}; {rows} UC Merced scenes in {args.classes} shards; median of "
          f"{args.rounds} rounds")
    print(f"{'build, codes only (baseline)':<34} {base:7.1f} s")
    print(f"{'build, codes + re-rank vectors':<34} {with_vectors:7.1f} s  ratio "
          f"{with_vectors / base:.3f} (goal <= 1.10)")
    print(f"{'re-rank vectors':<34} {payload / rows:7.1f} bytes a row (goal <= 128); "
          f"{vector_bytes / rows:.1f} with each shard's .npy header")
    write_results(args.out, result)


if __name__ == "__main__":
    main()
