"""How far codes made in TF32 or bf16, or on a GPU, are from fp32's on the CPU: the ground for
the GPU's precision and for nvJPEG.

    python benchmarks/precision_agreement.py (--model M | --random-weights) [--data DIR] \
        [--device cpu|cuda] [--precisions tf32,bf16] [--every 3] [--bf16-every 10] [--nvjpeg]

The reference: every ``--every``-th UC Merced scene decoded by Pillow and encoded by
``SceneEncoder`` on the CPU in fp32. Each precision of ``--precisions`` encodes the same
pixels on ``--device`` (on a CPU, TF32 is emulated: operands rounded to a 10-bit mantissa;
bf16 runs under torch.autocast, slow without native bf16: it gets every ``--bf16-every``-th
scene). Printed per precision: the share of code bits that differ from the reference and the
largest relative difference of the backbone features.

``--nvjpeg`` adds the device's JPEG decoder (``device_jpeg.decode_jpegs``: nvJPEG on a GPU,
libjpeg on a CPU): its pixels against Pillow's (largest and mean difference, share of pixels
that differ) and the codes of those pixels in the device's default precision. This is the
whole GPU build path against the CPU build.

Goal for the GPU's default precision: at most 0.1 % of bits. ``--random-weights`` (the
``random`` backbone and an untrained hash network) is for a machine that the real weights
cannot travel to: it measures the arithmetic, not the trained model's codes. The index's
mAP@all under a precision comes from ``benchmarks/index_vs_eval.py --precision``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import UCMERCED, machine, untrained_model

from dahash_index import runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--model", type=Path)
    weights.add_argument("--random-weights", action="store_true")
    parser.add_argument("--data", type=Path, default=UCMERCED)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--bf16-every", type=int, default=10)
    parser.add_argument("--precisions", default="tf32,bf16")
    parser.add_argument("--nvjpeg", action="store_true")
    args = parser.parse_args()
    runtime.configure_threads()

    import torch

    from dahash_index.model.encoder import check_device
    from dahash_index.model.precision import default_precision
    from dahash_index.scenes.decode import decode_scene
    from dahash_index.scenes.device_jpeg import decode_jpegs, defer_jpeg

    device = check_device(args.device)
    files = sorted(args.data.glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no JPEG scenes under {args.data}")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or untrained_model(Path(tmp) / "random.pt")
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"machine: {machine()}; device {name}; torch {torch.__version__}; model "
              f"{'random weights (seed 0)' if args.random_weights else model}; data {args.data}")
        print(f"{'what':<16} {'scenes':>7} {'bits differing':>26} {'max feature rel diff':>21} "
              f"{'img/s':>8}")
        reference: dict[int, tuple[np.ndarray, torch.Tensor]] = {}

        def compare(what: str, step: int, precision: str, images: list) -> None:
            if step not in reference:
                cpu = [decode_scene(p.read_bytes(), p.name)[0] for p in files[::step]]
                reference[step] = _codes_and_features(model, "cpu", "fp32", cpu)[:2]
            codes, features = reference[step]
            other, other_features, rate = _codes_and_features(model, device, precision, images)
            differ = int(np.unpackbits(codes ^ other).sum())
            total = codes.size * 8
            rel = float((other_features - features).abs().max() / features.abs().max())
            print(f"{what:<16} {len(images):>7} {differ:>7} of {total:>7} "
                  f"({100 * differ / total:.3f} %) {rel:>21.2e} {rate:>8.2f}")

        for precision in args.precisions.split(","):
            step = args.bf16_every if precision == "bf16" else args.every
            images = [decode_scene(p.read_bytes(), p.name)[0] for p in files[::step]]
            compare(f"{precision} on {device.type}", step, precision, images)
        if args.nvjpeg:
            selected = files[::args.every]
            items = [defer_jpeg(p.read_bytes(), p.name, 10**9) for p in selected]
            skipped = sum(item is None for item in items)
            pairs = [(p, item[0]) for p, item in zip(selected, items, strict=True) if item]
            decoded = decode_jpegs([item for _, item in pairs], device)
            pillow = [decode_scene(p.read_bytes(), p.name)[0] for p, _ in pairs]
            diffs = [np.abs(np.asarray(image.cpu()).astype(np.int16) - reference_pixels)
                     for image, reference_pixels in zip(decoded, pillow, strict=True)]
            print(f"device JPEG decoder on {device.type} against Pillow, {len(pairs)} scenes "
                  f"({skipped} left to the CPU): largest pixel difference "
                  f"{max(int(d.max()) for d in diffs)}, mean "
                  f"{float(np.mean([d.mean() for d in diffs])):.4f}, values differing "
                  f"{100 * float(np.mean([(d > 0).mean() for d in diffs])):.2f} %")
            if not skipped:
                precision = default_precision(device)
                compare(f"decoder+{precision}", args.every, precision, decoded)


def _codes_and_features(model: Path, device, precision: str, images: list):
    """-> (codes (N, K/8) uint8, backbone features (N, 2048) on the CPU, scenes/s)."""
    import torch

    from dahash_index.model.codes import hash_codes
    from dahash_index.model.encoder import SceneEncoder

    encoder = SceneEncoder.from_path(model, str(device), precision)
    size = encoder.batch_size
    if encoder.device.type == "cuda":
        encoder.features(images[:size])  # warm-up: cuDNN picks its kernels
        torch.cuda.synchronize()
    start = time.perf_counter()
    features = torch.cat([encoder.features(images[i:i + size])
                          for i in range(0, len(images), size)])
    with torch.no_grad():
        codes = hash_codes(encoder.net(features))  # a copy to the host: waits for the device
    rate = len(images) / (time.perf_counter() - start)
    return codes, features.cpu(), rate


if __name__ == "__main__":
    main()
