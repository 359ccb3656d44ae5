"""The transfer protocol (METHOD.md §7): a model trained on archive A codes archive B.

For each seed, the network is trained on every scene of A. Every scene of B then queries all
the others (itself excluded), and only then are B's labels read, to score the rankings:
mAP@all and mAP@20, each with Hamming ties in database order and tie-aware. The rows:

- the model's codes (Hamming distance), and re-ranked by its re-rank vectors, inside ties
  and over a shortlist of the 500 nearest (``query --rerank ties|full``);
- the codes of the model after ``adapt`` on B (no label of B), alone and re-ranked;
- float cosine on the backbone features;
- PCA-sign and ITQ codes fitted on B;
- LDA fitted on A, cosine on B's projected features.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dahash_index.model.codes import hash_codes
from dahash_index.model.rerank import RERANKS, RerankProjection
from dahash_index.train import lda, metrics
from dahash_index.train.adapt import adapt_model
from dahash_index.train.evaluate import scene_outputs, training_features
from dahash_index.train.ranking import hamming_rank_all, rerank_ranking
from dahash_index.train.train import TrainConfig, train_hash_net
from dahash_index.train.unsupervised import fit_itq, fit_pca_sign

FLOAT = "float cosine (backbone features)"


def score_all(labels: np.ndarray, distances: np.ndarray, ids: np.ndarray,
              tie_aware: bool = True) -> dict[str, float]:
    """mAP@all and mAP@20 of rankings of every scene by every other: distances and ids
    (n, n), row i the ranking for scene i (itself included, and left out here)."""
    self_ids = np.arange(len(labels))
    out = {}
    for name, k in (("map@all", None), ("map@20", 20)):
        out[name] = metrics.mean_average_precision(labels, labels, ids, k=k,
                                                   exclude_self=self_ids)
        if tie_aware:
            out[f"{name}_tie"] = metrics.mean_average_precision(
                labels, labels, ids, distances, k=k, tie_aware=True, exclude_self=self_ids)
    return out


def score_codes_all(codes: np.ndarray, labels: np.ndarray, vectors: np.ndarray | None = None,
                    rerank: str = "none", shortlist: int = 500) -> dict[str, float]:
    """``score_all`` of packed codes (n, K/8) ranked by Hamming distance, then (with
    ``vectors``) as ``rerank`` says."""
    d, ids = hamming_rank_all(codes, codes)
    if vectors is None or rerank == "none":
        return score_all(labels, d, ids)
    d, ids = rerank_ranking(d, ids, vectors, vectors, rerank, shortlist)
    return score_all(labels, d, ids, tie_aware=False)


def score_float(features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    d, ids = lda.cosine_ranking(features, features)
    return score_all(labels, d, ids, tie_aware=False)


def run_transfer(
    features_a: np.ndarray,
    labels_a: np.ndarray,
    oriented_a: dict | None,
    features_b: np.ndarray,
    labels_b: np.ndarray,
    views_b: list[np.ndarray],
    base: TrainConfig,
    bits_list: list[int],
    seeds: list[int],
    fit_rerank: Callable[[np.ndarray, dict | None, np.ndarray, bool], RerankProjection],
    log: Callable[[str], None] = print,
) -> dict:
    """results[str(K)][row name] = per-seed score dicts (``score_all``), and
    results["float"] / results["lda"]: the references (per seed, though they do not depend
    on it). views_b: B's features under the augmentations ``adapt`` uses (views_b[0] is
    ``features_b``). fit_rerank: how a trained model's re-rank projection is fitted
    (``workflow.fit_rerank``)."""
    everything = np.arange(len(features_a))
    lda_w = lda.fit_lda(features_a, labels_a)
    # Neither depends on a seed: one figure, listed once per seed like the other rows.
    results: dict = {"float": [score_float(features_b, labels_b)] * len(seeds),
                     "lda": [score_float(features_b @ lda_w, labels_b)] * len(seeds)}
    log(f"transfer {FLOAT}: mAP@20 {results['float'][0]['map@20']:.4f} "
        f"mAP@all {results['float'][0]['map@all']:.4f}")
    for bits in bits_list:
        rows: dict[str, list] = {}
        for seed in seeds:
            config = TrainConfig.from_dict({**base.to_dict(), "bits": bits}).validate()
            trained = train_hash_net(training_features(features_a, oriented_a, everything,
                                                       config),
                                     labels_a, config, seed, progress=False)
            projection = fit_rerank(features_a, oriented_a, everything,
                                    config.average_orientations)
            outputs = scene_outputs(trained.net, features_b, None, np.arange(len(features_b)),
                                    False)
            codes = hash_codes(outputs)
            adapted = adapt_model(bits, views_b, seed)
            found = {}
            for name, model_codes, vectors in (
                    ("the model's codes", codes, projection(features_b)),
                    ("after adapt on B", adapted.codes(features_b), adapted.rerank(features_b))):
                found[name] = score_codes_all(model_codes, labels_b)
                for rerank in RERANKS[1:]:
                    found[f"{name}, re-ranked ({rerank})"] = score_codes_all(
                        model_codes, labels_b, vectors.astype(np.float32), rerank)
            found["ITQ fitted on B"] = score_codes_all(
                fit_itq(features_b, bits, seed=seed).codes(features_b), labels_b)
            found["PCA-sign fitted on B"] = score_codes_all(
                fit_pca_sign(features_b, bits).codes(features_b), labels_b)
            for name, scores in found.items():
                rows.setdefault(name, []).append(scores)
                log(f"transfer K={bits} seed {seed} {name}: mAP@20 {scores['map@20']:.4f} "
                    f"mAP@all {scores['map@all']:.4f}")
        results[str(bits)] = rows
    return results
