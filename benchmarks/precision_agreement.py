"""How far codes made in TF32 or bf16 are from fp32's: the ground for the GPU's precision.

    python benchmarks/precision_agreement.py --model runs/ucmerced/model.pt [--data DIR] \
        [--every 3] [--precisions tf32,bf16] [--bf16-every 10]

Encodes every ``--every``-th UC Merced scene with ``SceneEncoder`` on this machine's CPU in
fp32 and in each precision (TF32 emulated: operands rounded to a 10-bit mantissa; bf16 by
torch.autocast, slow without native bf16: it gets every ``--bf16-every``-th scene), and
prints the share of code bits that differ from fp32 and the largest relative difference of
the backbone features. Goal for the GPU's default precision: at most 0.1 % of bits. The
index's mAP@all under a precision comes from ``benchmarks/index_vs_eval.py --precision``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import UCMERCED, machine

from dahash_index import runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=UCMERCED)
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--bf16-every", type=int, default=10)
    parser.add_argument("--precisions", default="tf32,bf16")
    args = parser.parse_args()
    runtime.configure_threads(2)

    import torch

    from dahash_index.images import decode_scene

    files = sorted(args.data.glob("*/*.jpg"))
    print(f"machine: {machine()}; model {args.model}; UC Merced at {args.data}")
    print(f"{'precision':<10} {'scenes':>7} {'bits differing':>22} {'max feature rel diff':>21} "
          f"{'img/s':>7}")
    reference: dict[int, tuple[np.ndarray, torch.Tensor]] = {}
    for precision in args.precisions.split(","):
        step = args.bf16_every if precision == "bf16" else args.every
        images = [decode_scene(p.read_bytes(), p.name)[0] for p in files[::step]]
        if step not in reference:
            reference[step] = _codes_and_features(args.model, "fp32", images)[:2]
        codes, features = reference[step]
        other, other_features, rate = _codes_and_features(args.model, precision, images)
        differ = int(np.unpackbits(codes ^ other).sum())
        total = codes.size * 8
        rel = float((other_features - features).abs().max() / features.abs().max())
        print(f"{precision:<10} {len(images):>7} {differ:>7} of {total:>7} "
              f"({100 * differ / total:.3f} %) {rel:>21.2e} {rate:>7.2f}")


def _codes_and_features(model: Path, precision: str, images: list):
    """-> (codes (N, K/8) uint8, backbone features (N, 2048), scenes/s) on the CPU."""
    import torch

    from dahash_index.codes import hash_codes
    from dahash_index.encoder import SceneEncoder

    encoder = SceneEncoder.from_path(model, "cpu", precision)
    start = time.perf_counter()
    features = torch.cat([encoder.features(images[i:i + 32])
                          for i in range(0, len(images), 32)])
    with torch.no_grad():
        codes = hash_codes(encoder.net(features))
    return codes, features, len(images) / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
