"""What ``dahash-index train`` and ``dahash-index eval`` do, as plain functions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dahash_index.backbones import load_backbone
from dahash_index.checkpoint import load_checkpoint, save_checkpoint
from dahash_index.codes import hash_codes
from trainer.data import ImageFolder, scan_image_folder, split_per_class
from trainer.evaluate import VARIANTS, run_evaluation, score_codes, write_report
from trainer.features import cached_features
from trainer.train import TrainConfig, hash_outputs, preset, train_hash_net


def parse_overrides(pairs: list[str]) -> dict:
    """['steps=3000', 'attention=single', 'margin=null'] -> typed dict (values parsed as JSON,
    falling back to the raw string)."""
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    return values


def labelled_features(
    data_dir: Path, backbone_name: str, backbone_weights: str | None, cache_dir: Path | None
):
    """(backbone, dataset restricted to readable scenes, features (N, 2048) float32)."""
    data = scan_image_folder(data_dir)
    backbone = load_backbone(backbone_name, backbone_weights)
    features = cached_features(backbone, data, cache_dir)
    if features.errors:
        print(f"{len(features.errors)} unreadable scene(s) left out", flush=True)
    readable = np.isin(np.asarray(data.paths), np.asarray(features.paths))
    data = data.subset(readable)
    if len(np.unique(data.labels)) < 2:
        raise ValueError(f"{data_dir}: fewer than two classes have readable scenes")
    return backbone, data, features.features


def split_scores(net, features: np.ndarray, data: ImageFolder, seed: int) -> dict:
    """mAP@20 / mAP@all (db order and tie-aware) of ``net`` on the seed's 60/40 split."""
    train_idx, test_idx = split_per_class(data.labels, seed)
    codes = hash_codes(hash_outputs(net, features))
    scores = score_codes(codes[train_idx], data.labels[train_idx], codes[test_idx],
                         data.labels[test_idx])
    return {k: scores[k] for k in ("map@20", "map@20_tie", "map@all", "map@all_tie")}


def train_command(
    data_dir: Path,
    bits: int,
    out: Path,
    seed: int,
    preset_name: str,
    overrides: list[str],
    backbone_name: str,
    backbone_weights: str | None,
    cache_dir: Path | None,
) -> dict:
    """Train on the train part of the seeded split, save the checkpoint, score the test part."""
    config = preset(preset_name, bits=bits, **parse_overrides(overrides))
    backbone, data, features = labelled_features(data_dir, backbone_name, backbone_weights,
                                                 cache_dir)
    train_idx, _ = split_per_class(data.labels, seed)
    net, log = train_hash_net(features[train_idx], data.labels[train_idx], config, seed)
    scores = split_scores(net, features, data, seed)
    sha = save_checkpoint(out, net, backbone.spec, data.classes, seed,
                          config.to_dict() | {"preset": preset_name})
    print(f"trained K={bits} in {log[-1]['seconds']:.1f}s on {len(train_idx)} scenes "
          f"({len(data.classes)} classes); wrote {out} (sha256 {sha[:12]})")
    print("test part: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    return scores


def eval_command(
    data_dir: Path,
    model: Path | None,
    bits_list: list[int],
    seeds: list[int],
    variants: str,
    out: Path,
    cache_dir: Path | None,
    command: str,
    report: Path | None = None,
    jobs: int = 1,
) -> Path:
    """The full evaluation protocol; returns the report's path."""
    names = list(VARIANTS) if variants == "all" else [v.strip() for v in variants.split(",")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    checkpoint = load_checkpoint(model) if model else None
    if checkpoint:
        config = dict(checkpoint.train_config)
        config.pop("preset", None)
        base = TrainConfig.from_dict(config)
        backbone_name = checkpoint.backbone
    else:
        base, backbone_name = preset("dahash"), "tf2015"
    backbone, data, features = labelled_features(data_dir, backbone_name, None, cache_dir)
    extra = ""
    if checkpoint:
        checkpoint.check_backbone(backbone.spec)
        scores = split_scores(checkpoint.build_net(), features, data,
                                      checkpoint.split_seed or 0)
        extra = (f"The checkpoint `{model}` itself (K = {checkpoint.net_config.bits}, split "
                 f"seed {checkpoint.split_seed}): "
                 + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()) + ".")
        print(extra)
    results = run_evaluation(features, data.labels, base, bits_list, seeds, names,
                             split_per_class, jobs=jobs)
    return write_report(results, out, command, data_dir.name, base, seeds, extra, report)
