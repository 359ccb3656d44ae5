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

import json
import multiprocessing
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import indexes
from dahash_index.codes import hash_codes
from trainer import lda, metrics
from trainer.train import TrainConfig, hash_outputs, preset, train_hash_net

PRECISION_KS = (10, 20, 50, 100)

# name -> how it changes the full method's config (METHOD.md's baselines and ablations).
VARIANTS: dict[str, Callable[[TrainConfig], TrainConfig]] = {
    "full": lambda c: c,
    "attention: literal fusion": lambda c: replace(c, attention="dual-literal"),
    "attention: single SE": lambda c: replace(c, attention="single"),
    "attention: none": lambda c: replace(c, attention="none"),
    "loss: no triplet": lambda c: replace(c, triplet_weight=0.0),
    "loss: no isometric": lambda c: replace(c, alpha=0.0),
    "loss: no balance": lambda c: replace(c, beta=0.0),
    # MiLAN's published settings, trained for the same number of steps as the full method.
    "MiLAN": lambda c: preset("milan", bits=c.bits, steps=c.steps),
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


def _hamming_rank_all(db_codes: np.ndarray, query_codes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every database row for every query, by (Hamming distance, row): (d int32, ids int64)."""
    index = indexes.new_index(db_codes.shape[1] * 8, "flat")
    indexes.add_codes(index, db_codes, np.arange(len(db_codes), dtype=np.int64))
    return indexes.hamming_topk(index, query_codes, len(db_codes))


def score_codes(
    train_codes: np.ndarray,
    train_labels: np.ndarray,
    test_codes: np.ndarray,
    test_labels: np.ndarray,
) -> dict:
    """All section-5 figures for packed codes (uint8 (n, K/8)) of the train and test parts."""
    bits = train_codes.shape[1] * 8
    self_ids = np.arange(len(test_codes))
    d_tt, i_tt = _hamming_rank_all(test_codes, test_codes)
    d_tr, i_tr = _hamming_rank_all(train_codes, test_codes)
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
    }


def score_lda(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
) -> dict:
    """The same figures for LDA-projected float features ranked by cosine (no ties)."""
    w = lda.fit_lda(train_features, train_labels)
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


def train_and_score(
    features: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    config: TrainConfig,
    seed: int,
) -> dict:
    """Train one network on the train part and score its codes."""
    start = time.perf_counter()
    net, _ = train_hash_net(features[train_idx], labels[train_idx], config, seed, progress=False)
    seconds = time.perf_counter() - start
    train_codes = hash_codes(hash_outputs(net, features[train_idx]))
    test_codes = hash_codes(hash_outputs(net, features[test_idx]))
    result = score_codes(train_codes, labels[train_idx], test_codes, labels[test_idx])
    result["train_seconds"] = seconds
    return result


# Set in each worker process of a parallel evaluation (read-only there).
_WORKER_DATA: dict = {}


def _init_worker(features: np.ndarray, labels: np.ndarray, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER_DATA.update(features=features, labels=labels)


def _train_and_score_in_worker(train_idx, test_idx, config: TrainConfig, seed: int) -> dict:
    return train_and_score(_WORKER_DATA["features"], _WORKER_DATA["labels"], train_idx,
                           test_idx, config, seed)


def run_evaluation(
    features: np.ndarray,
    labels: np.ndarray,
    base: TrainConfig,
    bits_list: list[int],
    seeds: list[int],
    variants: list[str],
    split: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    log: Callable[[str], None] = print,
    jobs: int = 1,
) -> dict:
    """results[str(K)][variant] = list of per-seed score dicts; plus the LDA reference.

    jobs > 1 trains that many networks at once in worker processes, sharing the machine's
    cores between them (small networks use many cores poorly); results do not depend on it.
    """
    results: dict = {"lda": []}
    splits = {seed: split(labels, seed) for seed in seeds}
    for seed in seeds:
        train_idx, test_idx = splits[seed]
        scores = score_lda(features[train_idx], labels[train_idx], features[test_idx],
                           labels[test_idx])
        results["lda"].append(scores)
        log(f"seed {seed} {LDA_NAME}: mAP@20 {scores['map@20']:.4f} "
            f"mAP@all {scores['map@all']:.4f}")
    tasks = [(bits, name, seed, VARIANTS[name](replace(base, bits=bits)).validate())
             for bits in bits_list for name in variants for seed in seeds]
    executor = None
    if jobs > 1:
        threads = max(1, torch.get_num_threads() // jobs)
        executor = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_worker,
                                       initargs=(features, labels, threads))
        futures = [executor.submit(_train_and_score_in_worker, *splits[seed], config, seed)
                   for _, _, seed, config in tasks]
        outcomes = (f.result() for f in futures)
    else:
        outcomes = (train_and_score(features, labels, *splits[seed], config, seed)
                    for _, _, seed, config in tasks)
    try:
        for (bits, name, seed, _), scores in zip(tasks, outcomes, strict=True):
            results.setdefault(str(bits), {}).setdefault(name, []).append(scores)
            log(f"K={bits} seed {seed} {name}: mAP@20 {scores['map@20']:.4f} "
                f"mAP@all {scores['map@all']:.4f} ({scores['train_seconds']:.0f}s)")
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    return results


def _mean_std(runs: list[dict], key: str) -> str:
    values = np.array([r[key] for r in runs], dtype=float)
    return f"{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.4f}"


def _precision(runs: list[dict], k: int) -> str:
    values = np.array([r["precision@k"][k] for r in runs], dtype=float)
    return f"{values.mean():.3f}"


def write_report(
    results: dict,
    out_dir: Path,
    command: str,
    dataset: str,
    base: TrainConfig,
    seeds: list[int],
    extra: str = "",
    report: Path | None = None,
) -> Path:
    """Write ``results.json`` and one ``pr-K.png`` per K into ``out_dir``, and the Markdown
    report to ``report`` (default ``out_dir/report.md``), which links the PNGs relatively."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = report or out_dir / "report.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    bits_list = [key for key in results if key != "lda"]
    lines = [
        f"# Retrieval evaluation: {dataset}",
        "",
        f"Command: `{command}`",
        "",
        f"Seeds {seeds} (each fixes the per-class 60/40 split and the initialisation); every "
        "figure is mean ± sample std over the seeds. Machine: "
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}.",
        "",
        "- **mAP@20 (test vs test)**: every test scene queries the other test scenes.",
        "- **mAP@all (test vs train)**: every test scene queries the train part.",
        "- *db order*: Hamming ties ranked in database order (as the index returns them); "
        "*tie-aware*: expected AP over random orderings within ties.",
        "- P@k: precision of the first k train scenes returned for a test scene (db order).",
        "",
        f"Full method's config: `{json.dumps(base.to_dict())}`",
        "",
    ]
    if extra:
        lines += [extra, ""]
    for bits in bits_list:
        lines += [
            f"## K = {bits}",
            "",
            "| method | mAP@20 db order | mAP@20 tie-aware | mAP@all db order | "
            "mAP@all tie-aware | P@10 | P@20 | P@50 | P@100 | train s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, runs in results[bits].items():
            seconds = np.mean([r["train_seconds"] for r in runs])
            lines.append(
                f"| {name} | {_mean_std(runs, 'map@20')} | {_mean_std(runs, 'map@20_tie')} | "
                f"{_mean_std(runs, 'map@all')} | {_mean_std(runs, 'map@all_tie')} | "
                + " | ".join(_precision(runs, k) for k in PRECISION_KS)
                + f" | {seconds:.0f} |"
            )
        lda_runs = results["lda"]
        lines.append(
            f"| {LDA_NAME} | {_mean_std(lda_runs, 'map@20')} | (no ties) | "
            f"{_mean_std(lda_runs, 'map@all')} | (no ties) | "
            + " | ".join(_precision(lda_runs, k) for k in PRECISION_KS)
            + " | – |"
        )
        png = Path(os.path.relpath(out_dir / f"pr-{bits}.png", report.parent)).as_posix()
        lines += ["", f"![precision-recall, K = {bits}]({png})", ""]
        curves = {
            name: (np.array(runs[0]["pr_curve"]["precision"]),
                   np.array(runs[0]["pr_curve"]["recall"]))
            for name, runs in results[bits].items()
        }
        metrics.plot_pr_curves(curves, str(out_dir / f"pr-{bits}.png"),
                               f"{dataset}, K = {bits}, seed {seeds[0]}")
    report.write_text("\n".join(lines) + "\n")
    (out_dir / "results.json").write_text(json.dumps(
        {"command": command, "dataset": dataset, "seeds": seeds, "config": base.to_dict(),
         "results": results}, indent=1))
    return report
