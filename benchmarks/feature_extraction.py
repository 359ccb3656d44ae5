"""Feature extraction (decode workers + backbone) vs the bare backbone forward, same batches.

    python benchmarks/feature_extraction.py [--scenes 256] [--batch-size 32] [--threads 2]
                                            [--repeat 3]

Baseline: the frozen backbone's forward alone over pre-decoded, pre-resized batches.
Project: ``trainer.features.extract_features`` over the same files (decoding in a worker
process, batching, the forward). Goal: project >= 90 % of the baseline's images/s, judged on
the median of the rounds' ratios (each round times both). Writes
benchmarks/results/feature-extraction.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import REPO, UCMERCED, headline, machine, results_header, write_results

from dahash_index import runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks" / "results" / "feature-extraction.json")
    args = parser.parse_args()
    runtime.configure_threads(args.threads)

    from dahash_index.model.backbones import image_to_tensor, load_backbone
    from dahash_index.model.encoder import BackboneEncoder
    from dahash_index.scenes.decode import decode_scene
    from dahash_index.train.data import scan_image_folder
    from dahash_index.train.features import extract_features

    data = scan_image_folder(UCMERCED)
    step = max(1, len(data.paths) // args.scenes)
    paths = data.paths[::step][: args.scenes]
    backbone = load_backbone()
    inputs = [image_to_tensor(decode_scene((data.root / p).read_bytes(), p)[0]) for p in paths]
    batches = [torch.stack(inputs[i:i + args.batch_size])
               for i in range(0, len(inputs), args.batch_size)]
    backbone(batches[0])  # warm-up: oneDNN picks its kernels on the first call

    bare, project = [], []
    for _ in range(args.repeat):
        start = time.perf_counter()
        with torch.no_grad():
            for x in batches:
                backbone(x)
        bare.append(len(paths) / (time.perf_counter() - start))
        start = time.perf_counter()
        extract_features(BackboneEncoder(backbone, "cpu"), data.root, paths,
                         batch_size=args.batch_size, progress=False)
        project.append(len(paths) / (time.perf_counter() - start))
    ratios = np.array(project) / np.array(bare)
    setup = (f"torch threads {args.threads}; {len(paths)} UC Merced scenes, batch "
             f"{args.batch_size}")
    heads = [headline("bare backbone forward (baseline)", bare, "img/s"),
             headline("extract_features (project)", project, "img/s"),
             headline("  project / baseline", ratios, "x", ">= 0.90",
                      met=bool(np.median(ratios) >= 0.90))]
    print(f"machine: {machine()}; {setup}")
    for h in heads:
        print(f"{h['figure']:<40} {h['median']:8.3f} {h['unit']} (median of {args.repeat}; "
              f"min {h['min']:.3f}) {h['goal']}")
    write_results(args.out, results_header(sys.argv) | {"setup": setup, "headline": heads})


if __name__ == "__main__":
    main()
