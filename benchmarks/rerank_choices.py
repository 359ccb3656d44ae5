"""How the re-rank projection and ``adapt`` were chosen, on UC Merced alone (never aid-sample).

A seeded 10 of UC Merced's 21 classes play an archive B that no model was trained on, the
other 11 the training archive A. Every scene of B queries all the others, and B's folder
labels only score (mAP@all, mAP@20). Rows: float cosine on the backbone features, whitened
PCA, the invariant projection (``model.rerank.fit_invariant``) on the views of each scene
(itself, its mirror image, its 90° rotation, and with ``jpeg`` the scene re-encoded as JPEG
at a quality drawn per scene from 30..90) for several shrinkages, fitted on B (as ``adapt``
does) and on A (as ``train`` does); ITQ and PCA-sign; ITQ on the invariant projection
(``adapt``'s codes). And, over all 2,100 scenes with the projection fitted on a 60 % train
part, how often a scene's 90° rotation, and its JPEG quality 50 copy, finds the scene at rank 1
by the vectors alone (overall and for the 40 % test part the fit never saw). Features come
from the project's feature cache (extracted on first use).

    python benchmarks/rerank_choices.py [--seed 0] [--out benchmarks/results/rerank-choices.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from _common import UCMERCED, results_header, write_results


def ranked(score: np.ndarray) -> np.ndarray:
    """Every row ranked by descending ``score`` (n, n), itself last."""
    score = score.astype(np.float64).copy()
    np.fill_diagonal(score, -np.inf)
    return np.argsort(-score, axis=1, kind="stable")


def maps(order: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    relevant = labels[order[:, :-1]] == labels[:, None]
    out = {}
    for name, k in (("map@all", None), ("map@20", 20)):
        rel = relevant if k is None else relevant[:, :k]
        hits = np.cumsum(rel, axis=1)
        precision = hits / np.arange(1, rel.shape[1] + 1)
        found = np.maximum(rel.sum(1), 1)
        out[name] = float(np.mean((precision * rel).sum(1) / found))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "rerank-choices.json")
    args = parser.parse_args()

    from dahash_index.model.backbones import load_backbone
    from dahash_index.model.codes import unpack_codes
    from dahash_index.model.encoder import BackboneEncoder
    from dahash_index.model.rerank import RECOMPRESS_QUALITIES, fit_invariant, fit_pca, unit_rows
    from dahash_index.train.adapt import adapt_model
    from dahash_index.train.data import scan_image_folder, split_per_class
    from dahash_index.train.features import cached_features
    from dahash_index.train.unsupervised import fit_itq, fit_pca_sign

    data = scan_image_folder(UCMERCED)
    extractor = BackboneEncoder(load_backbone("tf2015"))
    f = {k: cached_features(extractor, data, orientation=k).features for k in (0, 4, 1)}
    f["jpeg"] = cached_features(extractor, data, recompress=RECOMPRESS_QUALITIES).features
    jpeg50 = cached_features(extractor, data, recompress=(50, 50)).features
    labels = data.labels
    held_out = np.random.default_rng(args.seed).permutation(len(data.classes))[:10]
    b = np.isin(labels, held_out)
    lb, x = labels[b], f[0][b]
    rows: dict[str, dict] = {}

    def vectors(name: str, v: np.ndarray) -> None:
        u = unit_rows(np.asarray(v, np.float64))
        rows[name] = maps(ranked(u @ u.T), lb)

    def codes(name: str, packed: np.ndarray) -> None:
        bits = unpack_codes(packed).astype(np.int32)
        same = bits @ bits.T + (1 - bits) @ (1 - bits).T  # K - Hamming distance
        rows[name] = maps(ranked(same + 1e-9 * -np.arange(len(same))[None, :]), lb)

    vectors("float cosine (backbone features)", x)
    vectors("whitened PCA-64 fitted on B", fit_pca(x, 64)(x))
    for views in ((0, 4), (0, 4, 1), (0, 4, 1, "jpeg")):
        for shrinkage in (0.3, 1.0, 3.0):
            name = f"views {views}, shrinkage {shrinkage}"
            vectors(f"invariant-64 fitted on B, {name}",
                    fit_invariant([f[k][b] for k in views], 64, shrinkage)(x))
            vectors(f"invariant-64 fitted on A, {name}",
                    fit_invariant([f[k][~b] for k in views], 64, shrinkage)(x))
    codes("ITQ-64 fitted on B", fit_itq(x, 64, seed=args.seed).codes(x))
    codes("PCA-sign-64 fitted on B", fit_pca_sign(x, 64).codes(x))
    codes("adapt: ITQ on the invariant projection (views 0, 4, 1)",
          adapt_model(64, [f[k][b] for k in (0, 4, 1)], args.seed).codes(x))
    copies = {}
    train, test = split_per_class(labels, args.seed)
    for views in ((0, 4), (0, 4, 1), (0, 4, 1, "jpeg")):
        p = fit_invariant([f[k][train] for k in views], 64, 1.0)
        db = unit_rows(p(f[0]).astype(np.float32))
        for copy, features in (("90° rotation", f[1]), ("JPEG quality 50", jpeg50)):
            score = unit_rows(p(features).astype(np.float32)) @ db.T
            rank = (score > np.diag(score)[:, None]).sum(1) + 1
            copies[f"{copy}, views {views}"] = {
                "rank1": float(np.mean(rank == 1)), "top5": float(np.mean(rank <= 5)),
                "rank1_test_part": float(np.mean(rank[test] == 1))}
    for name, found in rows.items():
        print(f"{name:<66} mAP@all {found['map@all']:.4f}  mAP@20 {found['map@20']:.4f}")
    for name, found in copies.items():
        print(f"{name}, vectors alone: rank 1 {found['rank1']:.4f} (test part "
              f"{found['rank1_test_part']:.4f}), top 5 {found['top5']:.4f}")
    record = results_header(sys.argv) | {"seed": args.seed,
                                         "held_out_classes": [data.classes[i] for i in held_out],
                                         "archive_b": rows, "changed_copies": copies}
    write_results(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
