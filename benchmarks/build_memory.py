"""Peak memory of a full build as the number of shards grows (goal: flat).

    python benchmarks/build_memory.py [--shards 4,16,64] [--per-shard 8]

Each build runs in its own process over synthetic 256x256 PNG scenes (seeded noise), so
its peak resident set size (ru_maxrss) is its own. Baseline: the build with the fewest
shards; the project's figure is how much the peak grows with 4x and 16x the shards (goal:
<= 1.1 x, flat). Writes benchmarks/results/build-memory.json (--out).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import REPO, headline, machine, results_header, write_results

CHILD = r"""
import json, resource, sys, time
from dahash_index import runtime
runtime.configure_threads(2)
from dahash_index.build.indexer import build_index
from dahash_index.build.job import BuildOptions
start = time.perf_counter()
report = build_index(sys.argv[1], sys.argv[2], sys.argv[3], BuildOptions(), progress=False)
print(json.dumps({"rows": report.row_count, "seconds": time.perf_counter() - start,
                  "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def write_shards(root: Path, shards: int, per_shard: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for s in range(shards):
        (root / f"shard{s:04d}").mkdir(parents=True)
        for i in range(per_shard):
            pixels = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"shard{s:04d}" / f"scene{i}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="4,16,64")
    parser.add_argument("--per-shard", type=int, default=8)
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks" / "results" / "build-memory.json")
    args = parser.parse_args()

    from dahash_index.model.backbones import load_backbone
    from dahash_index.model.checkpoint import save_checkpoint
    from dahash_index.model.network import dahash_net

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "model.pt"
        save_checkpoint(model, dahash_net(64), load_backbone().spec, [], 0, {})
        for n in [int(s) for s in args.shards.split(",")]:
            shards = tmp / f"shards-{n}"
            write_shards(shards, n, args.per_shard)
            out = subprocess.run([sys.executable, "-c", CHILD, str(shards), str(tmp / f"i{n}"),
                                  str(model)], check=True, capture_output=True, text=True)
            results.append((n, json.loads(out.stdout.strip().splitlines()[-1])))

    base_n, base = results[0]
    print(f"machine: {machine()}; {args.per_shard} synthetic 256x256 scenes a shard, seed 0")
    for n, r in results:
        growth = r["peak_kib"] / base["peak_kib"]
        label = "baseline" if n == base_n else "project"
        print(f"{n:>5} shards {r['rows']:>6} rows: peak RSS {r['peak_kib'] / 1024:8.1f} MiB "
              f"({growth:.3f}x the {base_n}-shard build; {label}), {r['seconds']:.0f}s")
    figures = [headline(f"peak RSS, {base_n} shards (baseline)", [base["peak_kib"] / 1024],
                        "MiB", "reported")]
    for n, r in results[1:]:
        growth = r["peak_kib"] / base["peak_kib"]
        figures.append(headline(f"peak RSS, {n} shards / {base_n} shards", [growth], "x",
                                "<= 1.1 (flat)", growth <= 1.1))
    write_results(args.out, results_header(sys.argv) | {
        "seed": 0, "builds": [{"shards": n, **r} for n, r in results], "headline": figures})


if __name__ == "__main__":
    main()
