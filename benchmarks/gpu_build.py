"""The build on one accelerator against the limit of that accelerator, over the same scenes.

    python benchmarks/gpu_build.py [--data DIR] [--scenes 10000] [--tiff-scenes 1000] \
        [--query-files 2000] [--random-weights] [--device cuda] [--precision P] \
        [--batch-size N] [--workers N] [--work DIR]

Makes its own archive from UC Merced (``--data``, the JPEG image folder): ``--scenes`` JPEG
scenes replicated round-robin into ``--shards`` folder shards, and ``--tiff-scenes`` of them
re-encoded as uncompressed RGB TIFFs in ``--tiff-shards`` shards. Then prints, one run:

- the pipeline limit: every JPEG's bytes already in RAM, ``torchvision.io.decode_jpeg`` on
  the device in batches, resize there, the backbone and hash network in the build's
  precision; no shard reading, no metadata, no index;
- ``indexer.build_index`` end to end on the JPEG shards, into a fresh flat index (model
  load, reading, decoding, encoding, commits), and its ratio to the limit;
- the same build on the TIFF shards;
- ``SceneIndex.query`` with ``--query-files`` JPEG files, top 10.

Goals on one H100/H200: JPEG build >= 0.80 of the limit and >= 4,500 scenes/s; TIFF build
>= 2,000 scenes/s; query >= 3,000 images/s. ``--random-weights`` uses the ``random``
backbone (TF's graph, seeded random weights: the same speed) where the real weights cannot
be installed. The machine needs torch, torchvision, pyarrow, pillow, click, fsspec, and faiss
and rasterio (from wheels: ``pip install --no-deps faiss_gpu-*.whl rasterio-*.whl``).
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import tempfile
import time
from pathlib import Path

from _common import UCMERCED, machine, untrained_model

from dahash_index import runtime


def make_archive(data: Path, out: Path, scenes: int, shards: int, tiffs: int,
                 tiff_shards: int) -> tuple[Path, Path, list[Path]]:
    """-> (JPEG shards root, TIFF shards root, the JPEG files in shard order)."""
    import numpy as np
    from PIL import Image

    sources = sorted(data.glob("*/*.jpg"))
    if not sources:
        raise SystemExit(f"no JPEG scenes under {data}")
    jpegs, tiff_root, files = out / "jpeg", out / "tiff", []
    for i in range(scenes):
        source = sources[i % len(sources)]
        path = jpegs / f"shard{i % shards:03d}" / f"{i:06d}_{source.name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
        files.append(path)
    for i in range(tiffs):
        source = sources[i % len(sources)]
        path = tiff_root / f"shard{i % tiff_shards:03d}" / f"{i:06d}_{source.stem}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(Image.open(source).convert("RGB"))).save(path)
    return jpegs, tiff_root, files


def pipeline_limit(files: list[Path], encoder, batch_size: int) -> float:
    """Scenes/s of GPU decode + resize + network over the files' bytes held in RAM."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in files]
    batches = [encoded[i:i + batch_size] for i in range(0, len(encoded), batch_size)]

    def run(selected: list) -> None:
        def decoded():
            for batch in selected:
                images = decode_jpeg(batch, mode=ImageReadMode.RGB, device=encoder.device)
                yield None, [image.permute(1, 2, 0) for image in images]

        for _ in encoder.encode_batches(decoded()):
            pass

    run(batches[:2])  # warm-up: cuDNN picks its kernels, nvJPEG its buffers
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(batches)
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=UCMERCED)
    parser.add_argument("--scenes", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--tiff-scenes", type=int, default=1_000)
    parser.add_argument("--tiff-shards", type=int, default=4)
    parser.add_argument("--query-files", type=int, default=2_000)
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--work", type=Path, default=None,
                        help="where the archive and indexes go [default: a temporary folder]")
    args = parser.parse_args()
    runtime.configure_threads()

    import torch

    from dahash_index.build.indexer import build_index
    from dahash_index.build.job import BuildOptions
    from dahash_index.model.encoder import SceneEncoder
    from dahash_index.query.scene_index import SceneIndex

    work = Path(tempfile.mkdtemp(dir=args.work))
    try:
        jpegs, tiffs, files = make_archive(args.data, work / "archive", args.scenes,
                                           args.shards, args.tiff_scenes, args.tiff_shards)
        model = untrained_model(work / "model.pt",
                                "random" if args.random_weights else "tf2015")

        encoder = SceneEncoder.from_path(model, args.device, args.precision)
        batch_size = args.batch_size or encoder.batch_size
        device_name = (torch.cuda.get_device_name(encoder.device)
                       if encoder.device.type == "cuda" else "CPU")
        limit = pipeline_limit(files, encoder, batch_size)
        del encoder
        options = BuildOptions(device=args.device, precision=args.precision,
                               batch_size=args.batch_size, workers=args.workers)

        rates = {}
        for name, root, count in (("jpeg", jpegs, args.scenes), ("tiff", tiffs, args.tiff_scenes)):
            if not count:
                continue
            start = time.perf_counter()
            report = build_index(str(root), work / f"index-{name}", model, options,
                                 progress=False)
            rates[name] = report.scenes / (time.perf_counter() - start)
            assert report.scenes == count and report.errors == 0, report

        index = SceneIndex.open(work / "index-jpeg", device=args.device,
                                precision=args.precision)
        queries = [str(p) for p in files[:args.query_files]]
        index.query(queries[:batch_size], top=10)  # warm-up: the encoder is loaded
        start = time.perf_counter()
        table = index.query(queries, top=10)
        query_rate = len(queries) / (time.perf_counter() - start)
        assert table["error"].null_count == table.num_rows
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{datetime.date.today()}; machine: {machine()}; device: {device_name}; torch "
          f"{torch.__version__}; precision {index.encoder.precision}; batch {batch_size}; "
          f"weights {'random' if args.random_weights else 'tf2015'}")
    print(f"{'what':<58} {'scenes/s':>10}")
    print(f"{'pipeline limit (bytes in RAM, device decode, resize, net)':<58} {limit:>10.1f}")
    if "jpeg" in rates:
        print(f"{f'build, {args.scenes} JPEG scenes in {args.shards} shards':<58} "
              f"{rates['jpeg']:>10.1f}")
        print(f"{'  ratio to the pipeline limit (goal >= 0.80)':<58} "
              f"{rates['jpeg'] / limit:>10.2f}")
    if "tiff" in rates:
        print(f"{f'build, {args.tiff_scenes} TIFF scenes in {args.tiff_shards} shards':<58} "
              f"{rates['tiff']:>10.1f}")
    print(f"{f'SceneIndex.query, {len(queries)} JPEG files, top 10':<58} {query_rate:>10.1f}")


if __name__ == "__main__":
    main()
