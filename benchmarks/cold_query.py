"""A query in a new process, where its time goes, and the same query through a running service.

    python benchmarks/cold_query.py [--index runs/ucmerced/index] [--repeat 3]

1. ``dahash-index query IMG --top 50`` as a new process, wall clock (best and median).
2. The same steps timed inside one new process: ``import torch``, the other imports (the
   CLI module and what a query needs), ``SceneIndex.open``, the model load, the first
   forward pass, the search with its metadata. The rest of the wall time is the
   interpreter's start and what the CLI does around them.
3. ``dahash-index query IMG --top 50 --server URL`` against ``dahash-index serve`` on
   127.0.0.1 (warm), wall clock.

The index defaults to runs/ucmerced/index (``make demo`` builds it); the query is a UC Merced
JPEG.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from _common import REPO, UCMERCED, machine

GOALS = {"cold": 3.0, "server": 0.5}

PHASES = r"""
import json, sys, time
t = [time.perf_counter()]
import torch  # noqa: F401  (the largest import, timed on its own)
t.append(time.perf_counter())
import dahash_index.cli.main  # what `dahash-index` imports before it runs a command
from dahash_index.query.scene_index import SceneIndex
t.append(time.perf_counter())
index = SceneIndex.open(sys.argv[1])
t.append(time.perf_counter())
index.encoder
t.append(time.perf_counter())
codes, _, _ = index.encode([sys.argv[2]])
t.append(time.perf_counter())
index.query_codes(codes, top=50)
t.append(time.perf_counter())
print(json.dumps([b - a for a, b in zip(t, t[1:])]))
"""


def wall(command: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=REPO / "runs" / "ucmerced" / "index")
    parser.add_argument("--image", type=Path, default=UCMERCED / "harbor" / "harbor00.jpg")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cli = shutil.which("dahash-index") or str(REPO / ".venv" / "bin" / "dahash-index")
    query = [cli, "query", str(args.image), "--index", str(args.index), "--top", "50"]

    cold = wall(query, args.repeat)
    phases = np.array([
        json.loads(subprocess.run([sys.executable, "-c", PHASES, str(args.index),
                                   str(args.image)], check=True, capture_output=True,
                                  text=True).stdout)
        for _ in range(args.repeat)
    ])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([cli, "serve", "--index", str(args.index), "--port", str(port)],
                              stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=5).read()
                break
            except OSError:
                time.sleep(0.2)
        remote = [cli, "query", str(args.image), "--top", "50", "--server", url]
        wall(remote, 1)  # the service loads its model on its first image
        served = wall(remote, args.repeat)
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(f"# benchmarks/cold_query.py --repeat {args.repeat}")
    print(f"machine: {machine()}; index {args.index.name} ({args.index}), query "
          f"{args.image.name}")
    print(f"{'figure':<56}{'best / median':>16}   goal")
    for what, times, goal in (("dahash-index query, new process, wall", cold, "cold"),
                              ("dahash-index query --server (warm service), wall", served,
                               "server")):
        best, median = min(times), float(np.median(times))
        print(f"{what:<56}{best:>7.2f} /{median:>5.2f} s   <= {GOALS[goal]:g} s "
              f"{'met' if best <= GOALS[goal] else 'NOT met'}")
    print("where a new process's time goes (median):")
    names = ("import torch", "other imports (dahash_index.cli.main, api)", "SceneIndex.open",
             "model load (cached mapped backbone weights)",
             "first encode (decode + forward)", "search + metadata")
    for name, seconds in zip(names, np.median(phases, axis=0), strict=True):
        print(f"  {name:<54}{seconds:>7.2f} s")


if __name__ == "__main__":
    main()
