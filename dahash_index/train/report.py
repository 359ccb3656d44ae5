"""The Markdown report, ``results.json`` and PR curves of an evaluation (``trainer.evaluate``).

Every figure is mean ± sample std over the seeds. Two diagnostics say whether codes keep
resolution within a class: the number of distinct codes among a class's test scenes, and the
gap between the tie-aware and the database-order mAP@20 (a large gap means many scenes share
one code, so the order inside a tie decides the ranking).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

from dahash_index.train import metrics
from dahash_index.train.evaluate import LDA_NAME, PRECISION_KS
from dahash_index.train.train import TrainConfig
from dahash_index.train.transfer import FLOAT as FLOAT_NAME


def _values(runs: list[dict], key: str) -> np.ndarray:
    return np.array([r[key] for r in runs], dtype=float)


def _mean_std(values: np.ndarray) -> str:
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.4f} ± {std:.4f}"


def _precision(runs: list[dict], k: int) -> str:
    # results.json turns the int keys of precision@k into strings
    values = [r["precision@k"].get(k, r["precision@k"].get(str(k))) for r in runs]
    return f"{np.mean(values):.3f}"


def _method_row(name: str, runs: list[dict], precision: bool, reranked: bool) -> str:
    tie = "map@20_tie" in runs[0]
    cells = [name, _mean_std(_values(runs, "map@20"))]
    if tie:
        gap = _values(runs, "map@20_tie") - _values(runs, "map@20")
        cells += [_mean_std(_values(runs, "map@20_tie")), f"{gap.mean():+.4f}",
                  _mean_std(_values(runs, "map@all")), _mean_std(_values(runs, "map@all_tie"))]
    else:
        cells += ["(no ties)", "–", _mean_std(_values(runs, "map@all")), "(no ties)"]
    if reranked:
        cells += ([_mean_std(_values(runs, "map@20_rerank")),
                   _mean_std(_values(runs, "map@all_rerank"))] if "map@20_rerank" in runs[0]
                  else ["–", "–"])
    if precision:
        cells += [_precision(runs, k) for k in PRECISION_KS]
    cells.append(f"{_values(runs, 'distinct_codes').mean():.1f}" if tie else "–")
    cells.append(f"{_values(runs, 'train_seconds').mean():.0f}" if tie else "–")
    return "| " + " | ".join(cells) + " |"


def _table(results: dict, bits: str, precision: bool) -> list[str]:
    head = ["method", "mAP@20 db order", "mAP@20 tie-aware", "tie gap", "mAP@all db order",
            "mAP@all tie-aware"]
    modes = {r.get("rerank") for runs in results[bits].values() for r in runs} - {None}
    if modes:
        head += [f"mAP@20 re-ranked ({'/'.join(sorted(modes))})", "mAP@all re-ranked"]
    if precision:
        head += [f"P@{k}" for k in PRECISION_KS]
    head += ["codes/class", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [_method_row(name, runs, precision, bool(modes))
              for name, runs in results[bits].items()]
    lines.append(_method_row(LDA_NAME, results["lda"], precision, bool(modes)))
    return lines


def merge_previous(results: dict, out_dir: Path, command: str, dataset: str,
                   base: TrainConfig, seeds: list[int]) -> tuple[dict, list[str]]:
    """``results`` merged over those of ``out_dir/results.json`` (same dataset, seeds and
    full-method config, else ValueError), and the commands of both runs, oldest first. A
    variant measured again at the same protocol and K replaces the older measurement."""
    path = out_dir / "results.json"
    if not path.is_file():
        return results, [command]
    old = json.loads(path.read_text())
    if (old["dataset"], old["seeds"], old["config"]) != (dataset, seeds, base.to_dict()):
        raise ValueError(f"{path}: another dataset, seeds or full-method config; write to "
                         "another --out or drop --merge")
    merged = old["results"]
    for protocol, by_bits in results.items():
        for key, value in by_bits.items():
            if not key.isdigit():  # a reference (lda, float) or a name: the newer one
                merged.setdefault(protocol, {})[key] = value
            else:
                merged.setdefault(protocol, {}).setdefault(key, {}).update(value)
    for by_bits in merged.values():  # K in ascending order, the references first
        ordered = dict(sorted(by_bits.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit()
                              else -1))
        by_bits.clear()
        by_bits.update(ordered)
    return merged, old.get("commands", [old.get("command")]) + [command]


def write_report(
    results: dict,
    out_dir: Path,
    commands: list[str],
    dataset: str,
    base: TrainConfig,
    seeds: list[int],
    extra: str = "",
    report: Path | None = None,
) -> Path:
    """Write ``results.json`` and one ``pr-K.png`` per K into ``out_dir``, and the Markdown
    report to ``report`` (default ``out_dir/report.md``), which links the PNGs relatively.

    results: ``run_evaluation``'s dict, results[protocol][str(K) or "lda"].
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    report = report or out_dir / "report.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Retrieval evaluation: {dataset}",
        "",
        "Command" + ("s (merged with `--merge`)" if len(commands) > 1 else "") + ": "
        + ", ".join(f"`{c}`" for c in commands),
        "",
        f"Seeds {seeds} (each fixes the per-class 60/40 split, the initialisation and, in the "
        "novel-class protocol, the held-out classes); every figure is mean ± sample std over "
        f"the seeds. Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}.",
        "",
        "- **mAP@20 (test vs test)**: every test scene queries the other test scenes.",
        "- **mAP@all (test vs train)**: every test scene queries the train part.",
        "- *db order*: Hamming ties ranked in database order (as the index returns them); "
        "*tie-aware*: expected AP over random orderings within ties; *tie gap*: tie-aware "
        "minus db-order mAP@20.",
        "- P@k: precision of the first k train scenes returned for a test scene (db order).",
        "- codes/class: distinct codes among a class's test scenes, averaged over classes.",
        "",
        f"Full method's config: `{json.dumps(base.to_dict())}`",
        "",
    ]
    if extra:
        lines += [extra, ""]
    standard = results.get("standard", {})
    for bits in [key for key in standard if key != "lda"]:
        lines += [f"## K = {bits}", ""] + _table(standard, bits, precision=True)
        png = Path(os.path.relpath(out_dir / f"pr-{bits}.png", report.parent)).as_posix()
        lines += ["", f"![precision-recall, K = {bits}]({png})", ""]
        curves = {
            name: (np.array(runs[0]["pr_curve"]["precision"]),
                   np.array(runs[0]["pr_curve"]["recall"]))
            for name, runs in standard[bits].items()
        }
        metrics.plot_pr_curves(curves, str(out_dir / f"pr-{bits}.png"),
                               f"{dataset}, K = {bits}, seed {seeds[0]}")
    novel = results.get("novel", {})
    if novel:
        lines += [
            "## Novel classes",
            "",
            "Each seed holds 5 seeded classes out of training (`trainer.data.novel_class_split`)"
            "; the model (and LDA) is fitted on the train part of the other classes. Retrieval "
            "is among the held-out classes only: their test scenes query their train scenes "
            "(mAP@all) and each other (mAP@20).",
            "",
        ]
        for bits in [key for key in novel if key != "lda"]:
            lines += [f"### K = {bits}", ""] + _table(novel, bits, precision=False) + [""]
    transfer = results.get("transfer")
    if transfer:
        lines += _transfer_section(transfer)
    report.write_text("\n".join(lines) + "\n")
    (out_dir / "results.json").write_text(json.dumps(
        {"commands": commands, "dataset": dataset, "seeds": seeds, "config": base.to_dict(),
         "results": results}, indent=1))
    return report


def _transfer_section(transfer: dict) -> list[str]:
    """The transfer protocol's tables (``train.transfer``): one per K."""
    target = transfer.get("target", "B")
    lines = [
        f"## Transfer: a model trained on {transfer.get('source', 'A')} codes {target}",
        "",
        f"Per seed, the network is trained on every scene of {transfer.get('source', 'A')}; "
        f"every scene of {target} then queries all the others, and {target}'s folder labels "
        "only score the rankings. *adapt*: `dahash-index adapt` fitted on "
        f"{target}'s scenes, their mirror images and 90° rotations, no label. ITQ and "
        f"PCA-sign are fitted on {target} without labels, LDA on the source with its labels. "
        "Float rankings have no ties.",
        "",
    ]
    references = [(FLOAT_NAME, transfer["float"]), (LDA_NAME + " fitted on the source",
                                                    transfer["lda"])]
    for bits in [key for key in transfer if key.isdigit()]:
        head = ["method", "mAP@20 db order", "mAP@20 tie-aware", "mAP@all db order",
                "mAP@all tie-aware"]
        lines += [f"### K = {bits}", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        for name, runs in [*transfer[bits].items(), *references]:
            tie = "map@20_tie" in runs[0]
            cells = [name, _mean_std(_values(runs, "map@20")),
                     _mean_std(_values(runs, "map@20_tie")) if tie else "–",
                     _mean_std(_values(runs, "map@all")),
                     _mean_std(_values(runs, "map@all_tie")) if tie else "–"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines
