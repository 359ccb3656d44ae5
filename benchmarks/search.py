"""Batch search over an index of 1,000,000 random 64-bit codes: the API vs a bare FAISS call.

    python benchmarks/search.py [--rows 1000000] [--queries 1000] [--top 50] [--threads 2]

Baseline: ``faiss.IndexBinaryFlat.search`` on the same codes (k = top), nothing else.
Project: ``SceneIndex.query_codes`` on an on-disk index of the same codes: the search with
ties ordered by row id, the metadata lookup of every hit, and the result table. Goal: the
project within 10 % of the baseline's time. Seed 0. The two are timed in turn, best of
``--repeat`` rounds each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine

from dahash_index import runtime


def best_of_interleaved(runs: int, *fns) -> list[float]:
    """Best wall time of each function over ``runs`` rounds, calling them in turn each round so
    that a slow spell of the machine hits all of them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(runs):
        for j, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[j] = min(best[j], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--top", type=int, default=50)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    runtime.configure_threads(args.threads)

    import faiss

    from dahash_index.model.backbones import BackboneSpec
    from dahash_index.model.checkpoint import load_checkpoint, save_checkpoint
    from dahash_index.model.network import dahash_net
    from dahash_index.query.scene_index import SceneIndex
    from dahash_index.store import IndexWriter

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(args.rows, 8), dtype=np.uint8)
    queries = rng.integers(0, 256, size=(args.queries, 8), dtype=np.uint8)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "model.pt"
        spec = BackboneSpec("tf2015", "0" * 64, (0.5,) * 3, (0.5,) * 3)
        save_checkpoint(model, dahash_net(64), spec, [], 0, {})
        writer = IndexWriter.open(tmp / "index", load_checkpoint(model).identity)
        for shard, part in enumerate(np.array_split(np.arange(args.rows), args.shards)):
            rows = [{"url": f"s3://archive/{shard}/{i}.tif", "shard": str(shard), "width": 256,
                     "height": 256, "bands": 3, "dtype": "uint8"} for i in part]
            writer.commit_shard(str(shard), f"s3://archive/{shard}", codes[part], rows, [])
        writer.finalize()
        writer.close()

        bare_index = faiss.IndexBinaryFlat(64)
        bare_index.add(codes)
        index = SceneIndex.open(tmp / "index")
        index.query_codes(queries[:10], top=args.top)  # warm-up: loads the metadata once
        bare, project = best_of_interleaved(
            args.repeat,
            lambda: bare_index.search(queries, args.top),
            lambda: index.query_codes(queries, top=args.top),
        )
        table = index.query_codes(queries, top=args.top)
        assert table.num_rows == args.queries * args.top

    print(f"machine: {machine()}; FAISS threads {args.threads}; {args.rows} random 64-bit codes, "
          f"{args.queries} queries, top {args.top}, best of {args.repeat}")
    print(f"{'faiss IndexBinaryFlat.search (baseline)':<44} {bare * 1000:9.1f} ms")
    print(f"{'SceneIndex.query_codes (project)':<44} {project * 1000:9.1f} ms  "
          f"ratio {project / bare:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    main()
