"""The evaluation protocol of METHOD.md section 5, and its report.

For every code length K and seed (the seed fixes both the 60/40 split and the network
initialisation), each variant is trained on the train part and scored:

- mAP@20, test vs test: each test scene queries the other test scenes.
- mAP@all, test vs train: each test scene queries the train scenes.
- precision@10/20/50/100 (test vs train) and a precision-recall curve over Hamming radii.

Hamming ranking goes through ``indexes.hamming_topk``, the search the index uses, which
orders ties by database order. Every mAP is reported twice: ties in database order, and
tie-aware (the expected AP over random orderings within a tie).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np
import torch

from dahash_index.model.codes import hash_codes
from dahash_index.model.orientations import AUGMENTATION_SETS, ORIENTATIONS
from dahash_index.model.rerank import (
    RECOMPRESSED,
    RERANK_ORIENTATIONS,
    RERANK_VIEWS,
    RerankProjection,
    fit_projection,
)
from dahash_index.train import lda, metrics
from dahash_index.train.data import novel_class_split, split_per_class
from dahash_index.train.ranking import hamming_rank_all, rerank_ranking
from dahash_index.train.train import TrainConfig, hash_outputs, preset, train_hash_net

PRECISION_KS = (10, 20, 50, 100)

# name -> how it changes the full method's config (METHOD.md's baselines and ablations).
# A variant that equals the full method for some preset (e.g. "no centre term" when the
# preset has none) is still trained: its row then measures the seed noise.
VARIANTS: dict[str, Callable[[TrainConfig], TrainConfig]] = {
    "full": lambda c: c,
    "attention: literal fusion": lambda c: replace(c, attention="dual-literal"),
    "attention: single SE": lambda c: replace(c, attention="single"),
    "attention: none": lambda c: replace(c, attention="none"),
    "loss: no triplet": lambda c: replace(c, triplet_weight=0.0),
    "loss: no isometric": lambda c: replace(c, alpha=0.0),
    "loss: no balance": lambda c: replace(c, beta=0.0),
    "loss: no centre term": lambda c: replace(c, centre_weight=0.0),
    "centre term γ = 1": lambda c: replace(c, centre_weight=1.0),
    "no standardisation": lambda c: replace(c, standardize=False),
    "no dropout": lambda c: replace(c, dropout=0.0, input_dropout=0.0),
    "orientations: 8 (whole group)": lambda c: replace(c, orientations=8),
    "orientations: 1 (none)": lambda c: replace(c, orientations=1),
    "query: mean of 8 orientations": lambda c: replace(c, average_orientations=True),
    "orientations: 8 + query mean of 8": lambda c: replace(c, orientations=8,
                                                           average_orientations=True),
    "early stopping (20 % validation)": lambda c: replace(c, validation_fraction=0.2),
    # MiLAN's published settings and training length (MHCLN's trainer: 10,000 iterations).
    "MiLAN": lambda c: preset("milan", bits=c.bits),
}
LDA_NAME = "LDA + cosine (float)"


def _scores(
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    distances: np.ndarray,
    ids: np.ndarray,
    k: int | None,
    exclude_self: np.ndarray | None,
    tie_aware: bool,
) -> dict[str, float]:
    out = {"map": metrics.mean_average_precision(
        query_labels, db_labels, ids, k=k, exclude_self=exclude_self)}
    if tie_aware:
        out["map_tie"] = metrics.mean_average_precision(
            query_labels, db_labels, ids, distances, k=k, tie_aware=True,
            exclude_self=exclude_self)
    return out


def score_codes(
    train_codes: np.ndarray,
    train_labels: np.ndarray,
    test_codes: np.ndarray,
    test_labels: np.ndarray,
    train_vectors: np.ndarray | None = None,
    test_vectors: np.ndarray | None = None,
    rerank: str = "none",
) -> dict:
    """All section-5 figures for packed codes (uint8 (n, K/8)) of the train and test parts;
    with the parts' re-rank vectors (unit rows (n, D)) and a ``rerank`` mode other than
    "none", also mAP@20 and mAP@all of the rankings re-ranked that way ("map@20_rerank",
    "map@all_rerank")."""
    bits = train_codes.shape[1] * 8
    self_ids = np.arange(len(test_codes))
    d_tt, i_tt = hamming_rank_all(test_codes, test_codes)
    d_tr, i_tr = hamming_rank_all(train_codes, test_codes)
    at20 = _scores(test_labels, test_labels, d_tt, i_tt, 20, self_ids, tie_aware=True)
    at_all = _scores(test_labels, train_labels, d_tr, i_tr, None, None, tie_aware=True)
    full = np.empty_like(d_tr)
    np.put_along_axis(full, i_tr, d_tr, axis=1)  # back to database order for the PR curve
    precision, recall = metrics.precision_recall_curve(test_labels, train_labels, full, bits)
    return {
        "map@20": at20["map"],
        "map@20_tie": at20["map_tie"],
        "map@all": at_all["map"],
        "map@all_tie": at_all["map_tie"],
        "precision@k": metrics.precision_at_k(test_labels, train_labels, i_tr, PRECISION_KS),
        "pr_curve": {"precision": precision.tolist(), "recall": recall.tolist()},
        "distinct_codes": distinct_codes_per_class(test_codes, test_labels),
    } | _reranked(d_tt, i_tt, d_tr, i_tr, train_labels, train_vectors, test_labels,
                  test_vectors, rerank)


def _reranked(d_tt, i_tt, d_tr, i_tr, train_labels, train_vectors, test_labels, test_vectors,
              rerank: str) -> dict:
    if rerank == "none" or train_vectors is None or test_vectors is None:
        return {}
    self_ids = np.arange(len(test_labels))
    _, i_tt = rerank_ranking(d_tt, i_tt, test_vectors, test_vectors, rerank)
    _, i_tr = rerank_ranking(d_tr, i_tr, test_vectors, train_vectors, rerank)
    return {
        "rerank": rerank,
        "map@20_rerank": metrics.mean_average_precision(test_labels, test_labels, i_tt, k=20,
                                                        exclude_self=self_ids),
        "map@all_rerank": metrics.mean_average_precision(test_labels, train_labels, i_tr),
    }


def distinct_codes_per_class(codes: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of the number of distinct codes among that class's scenes.

    codes (n, K/8) uint8, labels (n,). A class collapsed onto one code scores 1; the number
    of scenes of the class is the most it can score.
    """
    counts = [len(np.unique(codes[labels == c], axis=0)) for c in np.unique(labels)]
    return float(np.mean(counts))


def score_lda(
    fit_features: np.ndarray,
    fit_labels: np.ndarray,
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
) -> dict:
    """The same figures for LDA-projected float features ranked by cosine (no ties): LDA is
    fitted on the fit part, the test part queries the train part (the database)."""
    w = lda.fit_lda(fit_features, fit_labels)
    train_z, test_z = train_features @ w, test_features @ w
    d_tt, i_tt = lda.cosine_ranking(test_z, test_z)
    d_tr, i_tr = lda.cosine_ranking(test_z, train_z)
    self_ids = np.arange(len(test_z))
    at20 = _scores(test_labels, test_labels, d_tt, i_tt, 20, self_ids, tie_aware=False)
    at_all = _scores(test_labels, train_labels, d_tr, i_tr, None, None, tie_aware=False)
    return {
        "map@20": at20["map"],
        "map@all": at_all["map"],
        "precision@k": metrics.precision_at_k(test_labels, train_labels, i_tr, PRECISION_KS),
    }


def needed_orientations(configs: list[TrainConfig]) -> tuple[int | str, ...]:
    """The views whose features ``configs`` need beyond orientation 0: the orientations they
    train on, all 8 for a model that codes a scene as their mean, and the views of the
    re-rank projection (``model.rerank.RERANK_VIEWS``: two orientations and the JPEG
    re-encoded scene, last)."""
    needed: set[int] = set(RERANK_ORIENTATIONS)
    for config in configs:
        needed.update(AUGMENTATION_SETS[config.orientations])
        if config.average_orientations:
            needed.update(ORIENTATIONS)
    return (*sorted(needed - {0}), RECOMPRESSED)


def _oriented(features: np.ndarray, oriented: dict | None, k: int | str) -> np.ndarray:
    if k == 0:
        return features
    if oriented is None or k not in oriented:
        raise ValueError(f"this config needs the features of view {k}")
    return oriented[k]


def training_features(features: np.ndarray, oriented: dict | None, index: np.ndarray,
                      config: TrainConfig) -> np.ndarray:
    """What ``train_hash_net`` takes for the scenes ``index`` under ``config``: their features
    (len(index), C), or (O, len(index), C) in the O orientations it trains on."""
    if config.orientations == 1:
        return features[index]
    return np.stack([_oriented(features, oriented, k)[index]
                     for k in AUGMENTATION_SETS[config.orientations]])


def scene_outputs(net, features: np.ndarray, oriented: dict | None, index: np.ndarray,
                  average_orientations: bool) -> np.ndarray:
    """Hash outputs (len(index), K) of the scenes ``index``: from their features (N, C), or
    from the mean over their 8 orientations (``oriented``: orientation -> (N, C)) when the
    model codes a scene that way."""
    if average_orientations:
        return hash_outputs(net, np.mean([_oriented(features, oriented, k)[index]
                                          for k in ORIENTATIONS], axis=0))
    return hash_outputs(net, features[index])


def fit_rerank(features: np.ndarray, oriented: dict | None, index: np.ndarray,
               average_orientations: bool) -> RerankProjection:
    """The re-rank projection of a model (``model.rerank``), fitted without labels on the
    scenes ``index``: their features, and as other views of the same scenes those of
    ``RERANK_VIEWS`` (oriented: view -> (N, C)). A model that codes a scene as
    the mean of its 8 orientations gets its vectors from that mean, and so is fitted on it
    (one view: a whitened PCA)."""
    if average_orientations:
        return fit_projection([np.mean([_oriented(features, oriented, k)[index]
                                        for k in ORIENTATIONS], axis=0)])
    return fit_projection([features[index]] + [_oriented(features, oriented, k)[index]
                                               for k in RERANK_VIEWS])


def rerank_vectors(features: np.ndarray, oriented: dict | None, fit_idx: np.ndarray,
                   db_idx: np.ndarray, query_idx: np.ndarray,
                   average_orientations: bool) -> dict[str, np.ndarray]:
    """The re-rank vectors of the database and query scenes, by the projection fitted on
    ``fit_idx`` as ``train`` fits it: {"train_vectors": (len(db_idx), D), "test_vectors":
    (len(query_idx), D)} float32. They depend on the split, not on the network, so one
    evaluation computes them once per split (the fit costs seconds, a short training less)."""
    projection = fit_rerank(features, oriented, fit_idx, average_orientations)
    scene = (np.mean([_oriented(features, oriented, k) for k in ORIENTATIONS], axis=0)
             if average_orientations else features)
    return {"train_vectors": projection(scene[db_idx]).astype(np.float32),
            "test_vectors": projection(scene[query_idx]).astype(np.float32)}


def train_and_score(
    features: np.ndarray,
    oriented: dict | None,
    labels: np.ndarray,
    fit_idx: np.ndarray,
    db_idx: np.ndarray,
    query_idx: np.ndarray,
    config: TrainConfig,
    seed: int,
    rerank: str = "none",
    vectors: dict[str, np.ndarray] | None = None,
) -> dict:
    """Train one network on ``fit_idx`` and score the codes of ``query_idx`` against those of
    ``db_idx`` (the standard protocol: fit = db = the train part, queries = the test part);
    with ``rerank``, also the rankings re-ranked by the model's re-rank vectors (fitted on
    ``fit_idx`` as ``train`` fits them; ``vectors``: those of ``rerank_vectors``, when the
    caller has them already).

    features (N, C) float32; oriented: orientation -> (N, C) float32 features, or None (needed
    by configs that train on or average other orientations: ``needed_orientations``).
    """
    fit_features = training_features(features, oriented, fit_idx, config)
    start = time.perf_counter()
    trained = train_hash_net(fit_features, labels[fit_idx], config, seed, progress=False)
    seconds = time.perf_counter() - start
    db_codes, query_codes = (
        hash_codes(scene_outputs(trained.net, features, oriented, idx,
                                 config.average_orientations))
        for idx in (db_idx, query_idx)
    )
    if rerank == "none":
        vectors = {}
    elif vectors is None:
        vectors = rerank_vectors(features, oriented, fit_idx, db_idx, query_idx,
                                 config.average_orientations)
    result = score_codes(db_codes, labels[db_idx], query_codes, labels[query_idx], **vectors,
                         rerank=rerank)
    result["train_seconds"] = seconds
    result["best_step"] = trained.best_step
    return result


# Set in each worker process of a parallel evaluation (read-only there).
_WORKER_DATA: dict = {}


def _init_worker(features: np.ndarray, oriented: dict | None, labels: np.ndarray,
                 threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER_DATA.update(features=features, oriented=oriented, labels=labels)


def _train_and_score_in_worker(fit_idx, db_idx, query_idx, config: TrainConfig,
                               seed: int, rerank: str, vectors: dict | None) -> dict:
    return train_and_score(_WORKER_DATA["features"], _WORKER_DATA["oriented"],
                           _WORKER_DATA["labels"], fit_idx, db_idx, query_idx, config, seed,
                           rerank, vectors)


def protocol_parts(labels: np.ndarray, seed: int, protocol: str) -> tuple[np.ndarray, ...]:
    """(fit_idx, db_idx, query_idx) of one seed for a protocol in ``PROTOCOLS``.

    standard: the per-class 60/40 split; fit on and search the train part, query with the
    test part. novel: the same split, but 5 seeded classes are left out of fitting; the
    database is their train part and the queries their test part.
    """
    train_idx, test_idx = split_per_class(labels, seed)
    if protocol == "standard":
        return train_idx, train_idx, test_idx
    seen, unseen = novel_class_split(labels, seed)
    return (train_idx[np.isin(labels[train_idx], seen)],
            train_idx[np.isin(labels[train_idx], unseen)],
            test_idx[np.isin(labels[test_idx], unseen)])


PROTOCOLS = ("standard", "novel")


def run_evaluation(
    features: np.ndarray,
    labels: np.ndarray,
    base: TrainConfig,
    bits_list: list[int],
    seeds: list[int],
    variants: list[str],
    oriented: dict | None = None,
    protocols: tuple[str, ...] = ("standard",),
    novel_variants: list[str] | None = None,
    log: Callable[[str], None] = print,
    jobs: int = 1,
    rerank: str = "none",
) -> dict:
    """results[protocol][str(K)][variant] = list of per-seed score dicts, and
    results[protocol]["lda"] the LDA reference per seed.

    features (N, C) float32; oriented: orientation -> (N, C) or None. ``novel_variants`` (default
    ``variants``) are the variants run under the novel-class protocol. jobs > 1 trains that
    many networks at once in worker processes, sharing the machine's cores between them
    (small networks use many cores poorly); results do not depend on it. rerank: also score
    each model's rankings re-ranked that way (``score_codes``).
    """
    results: dict = {}
    tasks = []
    for protocol in protocols:
        results[protocol] = {"lda": []}
        names = variants if protocol == "standard" else (novel_variants or variants)
        for seed in seeds:
            fit_idx, db_idx, query_idx = protocol_parts(labels, seed, protocol)
            scores = score_lda(features[fit_idx], labels[fit_idx], features[db_idx],
                               labels[db_idx], features[query_idx], labels[query_idx])
            results[protocol]["lda"].append(scores)
            log(f"{protocol} seed {seed} {LDA_NAME}: mAP@20 {scores['map@20']:.4f} "
                f"mAP@all {scores['map@all']:.4f}")
        tasks += [(protocol, bits, name, seed,
                   VARIANTS[name](replace(base, bits=bits)).validate(),
                   protocol_parts(labels, seed, protocol))
                  for bits in bits_list for name in names for seed in seeds]
    split_vectors: dict = {}  # (protocol, seed, average_orientations) -> rerank_vectors
    if rerank != "none":
        for protocol, _, _, seed, config, parts in tasks:
            key = (protocol, seed, config.average_orientations)
            if key not in split_vectors:
                split_vectors[key] = rerank_vectors(features, oriented, *parts,
                                                    config.average_orientations)

    def vectors_of(protocol: str, seed: int, config: TrainConfig) -> dict | None:
        return split_vectors.get((protocol, seed, config.average_orientations))

    executor = None
    if jobs > 1:
        threads = max(1, torch.get_num_threads() // jobs)
        executor = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_worker,
                                       initargs=(features, oriented, labels, threads))
        futures = [executor.submit(_train_and_score_in_worker, *parts, config, seed, rerank,
                                   vectors_of(protocol, seed, config))
                   for protocol, _, _, seed, config, parts in tasks]
        outcomes = (f.result() for f in futures)
    else:
        outcomes = (train_and_score(features, oriented, labels, *parts, config, seed, rerank,
                                    vectors_of(protocol, seed, config))
                    for protocol, _, _, seed, config, parts in tasks)
    try:
        for (protocol, bits, name, seed, _, _), scores in zip(tasks, outcomes, strict=True):
            results[protocol].setdefault(str(bits), {}).setdefault(name, []).append(scores)
            again = (f"; re-ranked ({rerank}) mAP@20 {scores['map@20_rerank']:.4f} mAP@all "
                     f"{scores['map@all_rerank']:.4f}" if "map@20_rerank" in scores else "")
            log(f"{protocol} K={bits} seed {seed} {name}: mAP@20 {scores['map@20']:.4f} "
                f"mAP@all {scores['map@all']:.4f}{again} ({scores['train_seconds']:.0f}s)")
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    return results
