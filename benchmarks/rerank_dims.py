"""How many dimensions the re-rank vector has, and what the shortlist costs, on UC Merced alone.

A seeded 10 of UC Merced's 21 classes play an archive B that no model was trained on, the
other 11 the training archive A (as ``rerank_choices.py``), for each of ``--splits``. Every
scene of B queries all the others; B's folder labels only score (mAP@20, mAP@all). Rows:

- float cosine on the backbone features;
- ``train``'s projection (fitted on A, ``model.rerank.fit_projection``) at 32, 64, 128 and
  256 dimensions, as floats and as the index stores them (int8, ``store.vectors``): the
  vectors alone;
- ``adapt``'s projection (fitted on B, shrinkage ``train.adapt.SHRINKAGE``) at 64 and 128;
- the network trained on A with the shipped preset (seed = the split), its codes re-ranked
  with ``full`` over shortlists of 100 .. 1,000 rows (B has 1,000): what the shortlist loses
  against the vectors alone, with 64 and 128 dimensions.

Features come from the project's feature cache (extracted on first use). aid-sample is never
read. Writes --out with the command, commit, date and machine.

    python benchmarks/rerank_dims.py [--splits 0,1,2] [--out benchmarks/results/rerank-dims.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from _common import UCMERCED, results_header, write_results

DIMS = (32, 64, 128, 256)
ADAPT_DIMS = (64, 128)
SHORTLISTS = (100, 200, 500, 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", default="0,1,2", help="seeds of the held-out classes")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "rerank-dims.json")
    args = parser.parse_args()
    splits = [int(s) for s in args.splits.split(",")]

    from dahash_index.model.backbones import load_backbone
    from dahash_index.model.codes import hash_codes
    from dahash_index.model.encoder import BackboneEncoder
    from dahash_index.model.rerank import RERANK_VIEWS, fit_invariant, fit_projection
    from dahash_index.store.vectors import decode_vectors, quantize_vectors
    from dahash_index.train.adapt import ADAPT_ORIENTATIONS, SHRINKAGE
    from dahash_index.train.data import scan_image_folder
    from dahash_index.train.evaluate import scene_outputs, training_features
    from dahash_index.train.features import cached_features
    from dahash_index.train.train import preset, train_hash_net
    from dahash_index.train.transfer import score_codes_all, score_float
    from dahash_index.train.workflow import oriented_features

    data = scan_image_folder(UCMERCED)
    encoder = BackboneEncoder(load_backbone("tf2015"))
    features = cached_features(encoder, data).features
    config = preset("dahash", bits=64)
    oriented = oriented_features(encoder, data, None,
                                 tuple(dict.fromkeys((*RERANK_VIEWS, *ADAPT_ORIENTATIONS))))
    labels = data.labels
    rows: dict[str, list[dict]] = {}

    def add(name: str, scores: dict) -> None:
        rows.setdefault(name, []).append({k: scores[k] for k in ("map@20", "map@all")})
        print(f"{name:<62} mAP@20 {scores['map@20']:.4f}  mAP@all {scores['map@all']:.4f}",
              flush=True)

    for split in splits:
        print(f"split {split}", flush=True)
        held_out = np.random.default_rng(split).permutation(len(data.classes))[:10]
        b = np.isin(labels, held_out)
        fit_a, in_b = np.flatnonzero(~b), np.flatnonzero(b)
        x, lb = features[in_b], labels[in_b]
        add("float cosine (backbone features)", score_float(x, lb))
        projections = {dim: fit_projection([features[fit_a]] + [oriented[k][fit_a]
                                                               for k in RERANK_VIEWS], dim)
                       for dim in DIMS}
        vectors = {}
        for dim, projection in projections.items():
            v = projection(x).astype(np.float32)
            vectors[dim] = decode_vectors(quantize_vectors(v))
            add(f"train's projection, {dim} dimensions, float", score_float(v, lb))
            add(f"train's projection, {dim} dimensions, int8", score_float(vectors[dim], lb))
        views = [x] + [oriented[k][in_b] for k in ADAPT_ORIENTATIONS]
        adapted = fit_invariant(views, max(ADAPT_DIMS), SHRINKAGE)
        for dim in ADAPT_DIMS:
            add(f"adapt's projection, {dim} dimensions, float",
                score_float((x - adapted.mean) @ adapted.weights[:, :dim], lb))
        a_labels = np.unique(labels[fit_a], return_inverse=True)[1]
        trained = train_hash_net(training_features(features, oriented, fit_a, config), a_labels,
                                 config, split, progress=False)
        codes = hash_codes(scene_outputs(trained.net, features, oriented, in_b, False))
        add("the network's codes, Hamming", score_codes_all(codes, lb))
        for dim in (64, 128):
            for shortlist in SHORTLISTS:
                add(f"codes re-ranked (full), shortlist {shortlist}, {dim} dimensions int8",
                    score_codes_all(codes, lb, vectors[dim], "full", shortlist))
    means = {name: {k: float(np.mean([r[k] for r in runs])) for k in ("map@20", "map@all")}
             for name, runs in rows.items()}
    print("mean over the splits:")
    for name, found in means.items():
        print(f"{name:<62} mAP@20 {found['map@20']:.4f}  mAP@all {found['map@all']:.4f}")
    record = results_header(sys.argv) | {
        "splits": splits, "archive_b_classes": 10, "preset": "dahash", "bits": 64,
        "rows": rows, "mean": means}
    write_results(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
