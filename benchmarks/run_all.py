"""Run the benchmarks, then rewrite docs/benchmarks.md's measured section from their results.

    python benchmarks/run_all.py [--quick]      # make bench: --quick

Each benchmark writes its results file (command, commit, date, machine, every run, median
and min) under benchmarks/results/; ``report.py`` then renders them all. ``--quick`` runs a
subset at sizes that take minutes (about 10 on the 2-core development machine); without it,
the sizes the goals are stated at (hours: scale.py at 100 M rows needs ~60 GB of disk).
Benchmarks that need the trained model or its index (``make demo``: runs/ucmerced/model.pt,
runs/ucmerced/index) or ../shared/datasets are skipped, with a line saying so, when those
are absent.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from _common import REPO, UCMERCED

MODEL = REPO / "runs" / "ucmerced" / "model.pt"
INDEX = REPO / "runs" / "ucmerced" / "index"

# (script and arguments, what it needs: "index" make demo's index, "model" the trained model
# and UC Merced, "data" UC Merced, None nothing)
QUICK = [
    (["search.py", "--repeat", "5"], None),
    (["lookup_batch.py", "--parts", "2", "--repeat", "5"], None),
    (["scale.py", "--rows", "1000000", "--repeat", "5"], "model"),
    (["train_time.py", "--repeat", "3"], "data"),
    (["feature_extraction.py", "--repeat", "3"], "data"),
    (["build_throughput.py", "--rounds", "3"], "data"),
    (["cold_query.py", "--repeat", "5"], "index"),
    (["rerank_blend.py"], "model"),  # seconds with make demo's feature caches
]
FULL = [
    *QUICK[3:],
    (["search.py", "--repeat", "5"], None),
    (["search.py", "--rows", "10000000", "--repeat", "3", "--out",
      str(REPO / "benchmarks" / "results" / "search-10m.json")], None),
    (["lookup_batch.py", "--parts", "10", "--repeat", "7"], None),
    (["scale.py", "--rows", "10000000", "--repeat", "7"], "model"),
    (["scale.py", "--rows", "100000000", "--repeat", "7"], "model"),
    (["serve.py"], "model"),
    (["soak.py"], "model"),
    (["ray_build.py", "--rounds", "3"], "data"),
    (["build_memory.py"], None),
    (["scene_checks.py", "--model", str(MODEL)], "model"),
    (["scene_checks.py", "--model", str(MODEL), "--orientations", "4", "--rerank",
      "near,full,ties", "--out", str(REPO / "benchmarks" / "results" / "scene-checks-o4.json")],
     "model"),  # as query searches by default: in the 4 rotations
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the subset of minutes")
    args = parser.parse_args()
    here = REPO / "benchmarks"
    failed = []
    for argv, needs in QUICK if args.quick else FULL:
        if needs == "index" and not (INDEX / "manifest.json").is_file():
            print(f"skipped {' '.join(argv)}: needs {INDEX} (make demo)")
            continue
        if needs == "model" and not (MODEL.is_file() and UCMERCED.is_dir()):
            print(f"skipped {' '.join(argv)}: needs {MODEL} (make demo) and {UCMERCED}")
            continue
        if needs == "data" and not UCMERCED.is_dir():
            print(f"skipped {' '.join(argv)}: needs {UCMERCED}")
            continue
        print(f"== {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(here / argv[0]), *argv[1:]], cwd=REPO)
        print(f"   {time.perf_counter() - start:.0f} s, exit {done.returncode}", flush=True)
        if done.returncode:
            failed.append(argv[0])
    subprocess.run([sys.executable, str(here / "report.py")], cwd=REPO, check=True)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
