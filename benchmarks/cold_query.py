"""A query in a new process, where its time goes, and the same query through a running service.

    python benchmarks/cold_query.py [--index runs/ucmerced/index] [--repeat 3]

1. ``dahash-index query IMG --top 50`` as a new process (the image searched in its 4
   rotations, the default; and with ``--orientations 1`` warm), wall clock, twice: with the index's
   files (its model among them) and the backbone's cached weights in the page cache from the
   run before (warm), and with them evicted
   first (``posix_fadvise(DONTNEED)``: cold, as the first query after a reboot reads them).
2. The same steps timed inside one new process (warm): ``import torch``, the other imports
   (the CLI module and what a query needs), ``SceneIndex.open``, the model load, the first
   forward pass, the search with its metadata. The rest of the wall time is the
   interpreter's start and what the CLI does around them.
3. ``dahash-index query IMG --top 50 --server URL`` against ``dahash-index serve`` on
   127.0.0.1 (warm), wall clock.

The index defaults to runs/ucmerced/index (``make demo`` builds it); the query is a UC Merced
JPEG. Goals are judged on the median. Writes benchmarks/results/cold-query.json.
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
from _common import REPO, UCMERCED, evict, headline, machine, results_header, write_results

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
from dahash_index.model.orientations import DEFAULT_QUERY_ORIENTATIONS
encoded = index.encode_chips([sys.argv[2]], whole=True, orientations=DEFAULT_QUERY_ORIENTATIONS)
t.append(time.perf_counter())
index.query_codes(encoded.codes, top=50, owners=encoded.owners, vectors=encoded.vectors)
t.append(time.perf_counter())
print(json.dumps([b - a for a, b in zip(t, t[1:])]))
"""


def wall(command: list[str], repeat: int, cold: list[Path] | None = None) -> list[float]:
    """Wall seconds of each of ``repeat`` runs of ``command``; with the files under each of
    ``cold`` evicted from the page cache before each run."""
    times = []
    for _ in range(repeat):
        for root in cold or []:
            evict(root)
        t = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=REPO / "runs" / "ucmerced" / "index")
    parser.add_argument("--image", type=Path, default=UCMERCED / "harbor" / "harbor00.jpg")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks" / "results" / "cold-query.json")
    args = parser.parse_args()
    if not (args.index / "manifest.json").is_file():
        raise SystemExit(f"{args.index}: no index there (make demo builds it)")
    cli = shutil.which("dahash-index") or str(REPO / ".venv" / "bin" / "dahash-index")
    query = [cli, "query", str(args.image), "--index", str(args.index), "--top", "50"]

    wall(query, 1)  # the page cache holds what a query reads
    warm = wall(query, args.repeat)
    one_view = wall([*query, "--orientations", "1"], args.repeat)
    from dahash_index.model.backbones import backbone_cache_dir

    # the index holds its model; the backbone's weights are read from their cache
    cold = wall(query, args.repeat, [args.index, backbone_cache_dir()])
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

    figures = [
        headline("dahash-index query, new process, files in the page cache (warm)", warm,
                 "s", f"<= {GOALS['cold']:g} s"),
        headline("dahash-index query, new process, index, model and backbone evicted (cold)", cold,
                 "s", "reported"),
        headline("dahash-index query --orientations 1 (one backbone pass, not 4), warm",
                 one_view, "s", "reported"),
        headline("dahash-index query --server (warm service), wall", served, "s",
                 f"<= {GOALS['server']:g} s"),
    ]
    figures[0]["met"] = figures[0]["median"] <= GOALS["cold"]
    figures[3]["met"] = figures[3]["median"] <= GOALS["server"]
    names = ("import torch", "other imports (dahash_index.cli.main, api)", "SceneIndex.open",
             "model load (cached mapped backbone weights)",
             "first encode (decode + a forward pass per orientation, the default's)",
             "search + metadata")
    figures += [headline(f"new process, warm: {name}", phases[:, i], "s")
                for i, name in enumerate(names)]
    print(f"machine: {machine()}; index {args.index}, query {args.image.name}")
    for f in figures:
        print(f"{f['figure']:<72}{f['median']:>7.2f} s (median; min {f['min']:.2f})   "
              f"{f['goal']}{ {True: ' met', False: ' NOT met', None: ''}[f['met']]}")
    write_results(args.out, results_header(sys.argv) | {
        "index": str(args.index), "query": args.image.name, "headline": figures})


if __name__ == "__main__":
    main()
