"""Build throughput of the Ray engine vs the local engine: same scenes, model and machine.

    python benchmarks/ray_build.py [--classes 21] [--per-class 100] [--rounds 1]
                                   [--model runs/ucmerced/model.pt] [--ray-threads N]

Baseline: ``build_index`` with the local engine (this process reads, decodes in line and
encodes). Project: ``build_index`` with ``engine="ray"``, which starts Ray on this machine,
reads shards in Ray tasks, encodes them in an actor pool and commits here. Both are timed from
the call to the finalized index (model loads, Ray's start and stop included) into a fresh
index, alternately, ``--rounds`` times; the medians are compared. Goal on 2 cores:
Ray >= 0.8 x local. The two indexes must hold the same codes for the same scenes. Writes
benchmarks/results/ray-build.json (--out).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, UCMERCED, headline, machine, results_header, subset_shards, write_results

from dahash_index import runtime


def codes_by_scene(index: Path) -> dict[tuple[str, str | None], bytes]:
    """(url, member) -> code of every row of an index."""
    from dahash_index.store import IndexReader

    reader = IndexReader.open(index)
    meta = reader.metadata(columns=["url", "member"])
    keys = zip(meta["url"].to_pylist(), meta["member"].to_pylist(), strict=True)
    return {key: code.tobytes() for key, code in zip(keys, reader.codes(), strict=True)}


def timed_build(shards: Path, index: Path, model: Path, engine: str, batch_size: int) -> float:
    from dahash_index.build.indexer import build_index
    from dahash_index.build.job import BuildOptions

    shutil.rmtree(index, ignore_errors=True)
    start = time.perf_counter()
    build_index(str(shards), index, model, BuildOptions(batch_size=batch_size, engine=engine),
                progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--model", type=Path, default=REPO / "runs" / "ucmerced" / "model.pt",
                        help="checkpoint [default: the trained UC Merced model; an untrained "
                             "64-bit one when it is missing]")
    parser.add_argument("--ray-threads", type=int, default=None,
                        help="torch threads per Ray CPU actor (one actor per that many cores) "
                             "[default: the engine's]")
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks" / "results" / "ray-build.json")
    args = parser.parse_args()
    runtime.configure_threads()  # as the CLI does: passive OpenMP waits

    from dahash_index.build import ray_engine

    if args.ray_threads:
        ray_engine.CPU_THREADS = args.ray_threads

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = subset_shards(UCMERCED, args.classes, args.per_class, tmp / "shards")
        scenes = sum(1 for p in shards.rglob("*") if p.is_file())
        model, model_name = args.model, str(args.model)
        if not model.is_file():
            from dahash_index.model.backbones import load_backbone
            from dahash_index.model.checkpoint import save_checkpoint
            from dahash_index.model.network import dahash_net

            model, model_name = tmp / "model.pt", "untrained 64-bit (no trained model found)"
            save_checkpoint(model, dahash_net(64), load_backbone().spec, [], 0, {})

        seconds: dict[str, list[float]] = {"local": [], "ray": []}
        for _ in range(args.rounds):
            for engine in seconds:
                seconds[engine].append(timed_build(shards, tmp / engine, model, engine,
                                                   args.batch_size))
        same = codes_by_scene(tmp / "local") == codes_by_scene(tmp / "ray")

    rates = {e: [scenes / t for t in seconds[e]] for e in seconds}
    local, ray = (float(np.median(rates[e])) for e in ("local", "ray"))
    print(f"machine: {machine()}")
    print(f"data: {scenes} UC Merced scenes in {args.classes} shards; model {model_name}; "
          f"batch {args.batch_size}; Ray actors of {ray_engine.CPU_THREADS} torch thread(s); "
          f"median of {args.rounds} round(s)")
    print(f"{'local engine (baseline)':<36} {local:8.2f} scenes/s")
    print(f"{'ray engine (project)':<36} {ray:8.2f} scenes/s  ratio {ray / local:.3f} "
          "(goal >= 0.80)")
    print(f"codes identical for every scene: {same}")
    ratios = [r / b for r, b in zip(rates["ray"], rates["local"], strict=True)]
    write_results(args.out, results_header(sys.argv) | {
        "scenes": scenes, "model": model_name, "codes_identical": same, "headline": [
            headline("local engine (baseline)", rates["local"], "scenes/s", "reported"),
            headline("ray engine", rates["ray"], "scenes/s", "reported"),
            headline("ray / local, per round", ratios, "x", ">= 0.80",
                     bool(np.median(ratios) >= 0.8)),
            headline("codes identical for every scene", [int(same)], "", "1", same)]})


if __name__ == "__main__":
    main()
