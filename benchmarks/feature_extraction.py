"""Feature extraction (decode workers + backbone) vs the bare backbone forward, same batches.

    python benchmarks/feature_extraction.py [--scenes 256] [--batch-size 32] [--threads 2]

Baseline: the frozen backbone's forward alone over pre-decoded, pre-resized batches.
Project: ``trainer.features.extract_features`` over the same files (decoding in a worker
process, batching, the forward). Goal: project >= 90 % of the baseline's images/s.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import UCMERCED, machine

from dahash_index import runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
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

    start = time.perf_counter()
    for x in batches:
        backbone(x)
    bare = len(paths) / (time.perf_counter() - start)

    start = time.perf_counter()
    extract_features(BackboneEncoder(backbone, "cpu"), data.root, paths,
                     batch_size=args.batch_size, progress=False)
    project = len(paths) / (time.perf_counter() - start)

    print(f"machine: {machine()}; torch threads {args.threads}; {len(paths)} UC Merced scenes, "
          f"batch {args.batch_size}")
    print(f"{'bare backbone forward (baseline)':<40} {bare:8.2f} img/s")
    print(f"{'extract_features (project)':<40} {project:8.2f} img/s")
    print(f"{'ratio (goal >= 0.90)':<40} {project / bare:8.3f}")


if __name__ == "__main__":
    main()
