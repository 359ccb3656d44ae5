"""Build throughput (read, decode, encode, commit) vs the bare backbone forward, same scenes.

    python benchmarks/build_throughput.py [--classes 8] [--per-class 64] [--rounds 3] [--workers N]

Baseline: the backbone's forward alone over the scenes pre-decoded into batches of 32.
Project: ``dahash_index.build.indexer.build_index`` on the same scenes as shards (one per class),
into a fresh flat index with the default options, timed from the call to the committed,
finalized index: model load, reading, decoding, encoding, commits. Goal: at least 90 % of
the baseline's scenes/s. The two are timed in turn, ``--rounds`` times, so that a slow spell
of the machine falls on both sides; the goal is judged on the median of the rounds' ratios.
Writes benchmarks/results/build-throughput.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import REPO, UCMERCED, headline, machine, results_header, subset_shards, write_results

from dahash_index import runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None,
                        help="decode processes for the build [default: the build's default]")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks" / "results" / "build-throughput.json")
    args = parser.parse_args()
    runtime.configure_threads(args.threads)

    from dahash_index.build.indexer import build_index
    from dahash_index.build.job import BuildOptions
    from dahash_index.model.backbones import image_to_tensor, load_backbone
    from dahash_index.model.checkpoint import save_checkpoint
    from dahash_index.model.encoder import SceneEncoder
    from dahash_index.model.network import dahash_net
    from dahash_index.scenes.decode import decode_scene

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = subset_shards(UCMERCED, args.classes, args.per_class, tmp / "shards")
        scenes = sorted(shards.rglob("*.jpg"))
        backbone = load_backbone()
        model = tmp / "model.pt"
        save_checkpoint(model, dahash_net(64), backbone.spec, [], 0, {})

        inputs = [image_to_tensor(decode_scene(p.read_bytes(), p.name)[0]) for p in scenes]
        batches = [torch.stack(inputs[i:i + args.batch_size])
                   for i in range(0, len(inputs), args.batch_size)]
        backbone(batches[0])  # warm-up

        bare_seconds, build_seconds, load_seconds = [], [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            with torch.no_grad():
                for x in batches:
                    backbone(x)
            bare_seconds.append(time.perf_counter() - start)

            start = time.perf_counter()
            SceneEncoder.from_path(model)
            load_seconds.append(time.perf_counter() - start)

            shutil.rmtree(tmp / "index", ignore_errors=True)
            start = time.perf_counter()
            report = build_index(str(shards), tmp / "index", model,
                                 BuildOptions(batch_size=args.batch_size,
                                              workers=args.workers), progress=False)
            build_seconds.append(time.perf_counter() - start)
            assert report.row_count == len(scenes), report

    n = len(scenes)
    bare = n / np.array(bare_seconds)
    project = n / np.array(build_seconds)
    steady = n / (np.array(build_seconds) - np.array(load_seconds))
    setup = (f"torch threads {args.threads}; {n} UC Merced scenes in {args.classes} shards, "
             f"batch {args.batch_size}, decode workers "
             f"{'default' if args.workers is None else args.workers}; {args.rounds} rounds")
    ratios = project / bare
    heads = [headline("bare backbone forward (baseline)", bare, "scenes/s"),
             headline("build_index, end to end (project)", project, "scenes/s"),
             headline("  project / baseline", ratios, "x", ">= 0.90",
                      met=bool(np.median(ratios) >= 0.90)),
             headline("build_index, less the model load", steady, "scenes/s"),
             headline("  less the model load / baseline", steady / bare, "x")]
    print(f"machine: {machine()}; {setup}")
    for h in heads:
        print(f"{h['figure']:<40} {h['median']:8.3f} {h['unit']} (median of {args.rounds}; "
              f"min {h['min']:.3f}) {h['goal']}")
    write_results(args.out, results_header(sys.argv) | {"setup": setup, "headline": heads})


if __name__ == "__main__":
    main()
