"""Build throughput (read, decode, encode, commit) vs the bare backbone forward, same scenes.

    python benchmarks/build_throughput.py [--classes 4] [--per-class 64] [--threads 2]

Baseline: the backbone's forward alone over the scenes pre-decoded into batches of 32.
Project: ``dahash_index.indexer.build_index`` on the same scenes as shards (one per class),
into a fresh flat index, timed from the call to the committed, finalized index. Goal: at
least 90 % of the baseline's scenes/s. The model-load time is printed separately.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import UCMERCED, machine, subset_shards

from dahash_index import runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    runtime.configure_threads(args.threads)

    from dahash_index.backbones import image_to_tensor, load_backbone
    from dahash_index.checkpoint import save_checkpoint
    from dahash_index.encoder import SceneEncoder
    from dahash_index.images import decode_scene
    from dahash_index.indexer import BuildOptions, build_index
    from dahash_index.network import dahash_net

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
        start = time.perf_counter()
        for x in batches:
            backbone(x)
        bare = len(scenes) / (time.perf_counter() - start)
        del backbone

        start = time.perf_counter()
        SceneEncoder.from_path(model)
        load_seconds = time.perf_counter() - start

        start = time.perf_counter()
        report = build_index(str(shards), tmp / "index", model,
                             BuildOptions(batch_size=args.batch_size), progress=False)
        seconds = time.perf_counter() - start
        assert report.row_count == len(scenes), report

    project = len(scenes) / seconds
    steady = len(scenes) / (seconds - load_seconds)
    print(f"machine: {machine()}; torch threads {args.threads}; {len(scenes)} UC Merced scenes "
          f"in {args.classes} shards, batch {args.batch_size}")
    print(f"{'bare backbone forward (baseline)':<44} {bare:8.2f} scenes/s")
    print(f"{'build_index, end to end (project)':<44} {project:8.2f} scenes/s  "
          f"ratio {project / bare:.3f}")
    print(f"{'build_index, less model load ' + f'({load_seconds:.1f}s)':<44} {steady:8.2f} "
          f"scenes/s  ratio {steady / bare:.3f} (goal >= 0.90)")


if __name__ == "__main__":
    main()
