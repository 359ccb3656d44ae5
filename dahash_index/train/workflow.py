"""What ``dahash-index train`` and ``dahash-index eval`` do, as plain functions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from dahash_index.errors import check_bits
from dahash_index.model.backbones import load_backbone
from dahash_index.model.checkpoint import load_checkpoint, save_checkpoint
from dahash_index.model.codes import hash_codes
from dahash_index.model.encoder import BackboneEncoder
from dahash_index.model.rerank import RECOMPRESS_QUALITIES, RECOMPRESSED
from dahash_index.train.adapt import ADAPT_ORIENTATIONS, adapt_model, archive_scenes
from dahash_index.train.data import (
    DatasetError,
    ImageFolder,
    scan_image_folder,
    split_per_class,
)
from dahash_index.train.evaluate import (
    PROTOCOLS,
    VARIANTS,
    fit_rerank,
    needed_orientations,
    run_evaluation,
    scene_outputs,
    score_codes,
    training_features,
)
from dahash_index.train.features import cached_features, dataset_fingerprint
from dahash_index.train.report import merge_previous, write_report
from dahash_index.train.train import TrainConfig, preset, train_hash_net
from dahash_index.train.transfer import run_transfer


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
    """(the backbone's encoder, dataset restricted to readable scenes, features (N, 2048)
    float32). Extraction runs on the GPU when there is one."""
    data = scan_image_folder(data_dir)
    check_split_sizes(data, "scene file(s)")  # before the backbone's hours, then readable ones
    backbone = BackboneEncoder(load_backbone(backbone_name, backbone_weights))
    features = cached_features(backbone, data, cache_dir)
    if features.errors:
        print(f"{len(features.errors)} unreadable scene(s) left out", flush=True)
    readable = np.isin(np.asarray(data.paths), np.asarray(features.paths))
    data = data.subset(readable)
    if len(np.unique(data.labels)) < 2:
        raise ValueError(f"{data_dir}: fewer than two classes have readable scenes")
    return backbone, data, features.features


def oriented_features(backbone: BackboneEncoder, data: ImageFolder, cache_dir: Path | None,
                      views: tuple[int | str, ...]) -> dict[int | str, np.ndarray]:
    """{k: features (N, C) float32} of every scene of ``data`` in view k, for k in ``views``:
    an orientation (``dahash_index.model.orientations``), or ``model.rerank.RECOMPRESSED`` (the
    scene re-encoded as JPEG). Each view is cached on its own and extracted only when its cache
    is missing."""
    if not views:
        return {}
    fingerprint = dataset_fingerprint(data)
    found = {}
    for k in views:
        view = ({"recompress": RECOMPRESS_QUALITIES} if k == RECOMPRESSED
                else {"orientation": k})
        result = cached_features(backbone, data, cache_dir, fingerprint=fingerprint, **view)
        if result.paths != data.paths:
            raise ValueError(f"{data.root}: view {k} could not read every scene "
                             f"({len(result.errors)} failed)")
        found[k] = result.features
    return found


def split_scores(net, features: np.ndarray, data: ImageFolder, seed: int,
                 oriented: dict | None = None) -> dict:
    """mAP@20 / mAP@all (db order and tie-aware) of ``net`` on the seed's 60/40 split.

    features (N, C); oriented: orientation -> (N, C), needed when the net codes the mean of 8
    orientations.
    """
    train_idx, test_idx = split_per_class(data.labels, seed)
    codes = hash_codes(scene_outputs(net, features, oriented, np.arange(len(features)),
                                     net.config.average_orientations))
    scores = score_codes(codes[train_idx], data.labels[train_idx], codes[test_idx],
                         data.labels[test_idx])
    return {k: scores[k] for k in ("map@20", "map@20_tie", "map@all", "map@all_tie")}


MIN_PER_CLASS = 3  # two for the train part (an anchor and its positive), one for the test part


def check_split_sizes(data: ImageFolder, what: str = "readable scene(s)") -> None:
    """Refuse, naming the class, a dataset whose smallest class cannot give the 60/40 split a
    positive pair to train on and a scene to test with."""
    counts = np.bincount(data.labels, minlength=len(data.classes))
    smallest = int(np.argmin(counts))
    if counts[smallest] < MIN_PER_CLASS:
        raise DatasetError(
            f"{data.root / data.classes[smallest]}: {counts[smallest]} {what}; every "
            f"class needs at least {MIN_PER_CLASS} (two to train on as a positive pair, one to "
            "test with)")


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
    check_split_sizes(data)
    train_idx, _ = split_per_class(data.labels, seed)
    oriented = oriented_features(backbone, data, cache_dir, needed_orientations([config]))
    train_features = training_features(features, oriented, train_idx, config)
    trained = train_hash_net(train_features, data.labels[train_idx], config, seed)
    scores = split_scores(trained.net, features, data, seed, oriented)
    rerank = fit_rerank(features, oriented, train_idx, trained.net.config.average_orientations)
    sha = save_checkpoint(out, trained.net, backbone.spec, data.classes, seed,
                          config.to_dict() | {"preset": preset_name}, trained.centre_codes,
                          rerank)
    print(f"trained K={bits} in {trained.log[-1]['seconds']:.1f}s on {len(train_idx)} scenes "
          f"({len(data.classes)} classes, weights of step {trained.best_step}); wrote {out} "
          f"(sha256 {sha[:12]})")
    print("test part: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    return scores


def adapt_command(data_dir: Path, model: Path, out: Path, cache_dir: Path | None,
                  seed: int = 0) -> Path:
    """Fit ``model`` to the archive ``data_dir`` without labels (``train.adapt``) and save the
    adapted checkpoint to ``out``."""
    checkpoint = load_checkpoint(model)
    archive = archive_scenes(data_dir)
    extractor = BackboneEncoder(load_backbone(checkpoint.backbone))
    checkpoint.check_backbone(extractor.spec)
    views = [cached_features(extractor, archive, cache_dir)]
    views += [cached_features(extractor, archive, cache_dir, orientation=k)
              for k in ADAPT_ORIENTATIONS]
    if any(v.paths != views[0].paths for v in views):
        raise ValueError(f"{data_dir}: some scenes could be read in one orientation only")
    if views[0].errors:
        print(f"{len(views[0].errors)} unreadable scene(s) left out", flush=True)
    bits = checkpoint.net_config.bits
    adapted = adapt_model(bits, [v.features for v in views], seed)
    net = adapted.net(checkpoint.net_config)
    sha = save_checkpoint(out, net, extractor.spec, [], None,
                          {"adapted_from": checkpoint.sha256, "archive": str(data_dir),
                           "scenes": len(views[0].paths), "seed": seed}, rerank=adapted.rerank)
    print(f"adapted K={bits} to {len(views[0].paths)} scenes of {data_dir} (no labels); "
          f"wrote {out} (sha256 {sha[:12]})")
    return out


CORE_VARIANTS = ["full", "attention: none", "MiLAN"]


def _variant_names(text: str) -> list[str]:
    """'all', 'core' or comma-separated names of ``VARIANTS``."""
    if text in ("all", "core"):
        return list(VARIANTS) if text == "all" else CORE_VARIANTS
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    return names


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
    protocols: tuple[str, ...] = ("standard", "novel"),
    novel_variants: str | None = None,
    merge: bool = False,
    rerank: str = "none",
    transfer: Path | None = None,
) -> Path:
    """The full evaluation protocol; returns the report's path. With ``merge``, the results
    already in ``out`` (same dataset, seeds and config) are kept and reported too. rerank:
    also score every model's rankings re-ranked that way. transfer: the archive B of the
    transfer protocol (``train.transfer``), run when ``protocols`` names "transfer"."""
    names = _variant_names(variants)
    novel_names = _variant_names(novel_variants) if novel_variants else names
    for bits in bits_list:  # before minutes of loading and training
        check_bits(bits)
    if not bits_list or not seeds:
        raise ValueError("--bits and --seeds each need at least one value")
    unknown = [p for p in protocols if p not in (*PROTOCOLS, "transfer")]
    if unknown or not protocols:
        raise ValueError(f"unknown protocol(s) {unknown}; choose from "
                         f"{[*PROTOCOLS, 'transfer']}")
    if ("transfer" in protocols) != (transfer is not None):
        raise ValueError("the transfer protocol needs --transfer ARCHIVE, and --transfer "
                         "needs the protocol 'transfer'")
    checkpoint = load_checkpoint(model) if model else None
    if checkpoint:
        config = dict(checkpoint.train_config)
        config.pop("preset", None)
        base = TrainConfig.from_dict(config)
        backbone_name = checkpoint.backbone
    else:
        base, backbone_name = preset("dahash"), "tf2015"
    backbone, data, features = labelled_features(data_dir, backbone_name, None, cache_dir)
    configs = [VARIANTS[n](base) for n in set(names) | set(novel_names)]
    if checkpoint and checkpoint.net_config.average_orientations:
        configs.append(replace(base, average_orientations=True))
    oriented = oriented_features(backbone, data, cache_dir, needed_orientations(configs))
    extra = ""
    if checkpoint:
        checkpoint.check_backbone(backbone.spec)
        scores = split_scores(checkpoint.build_net(), features, data,
                              checkpoint.split_seed or 0, oriented)
        extra = (f"The checkpoint `{model}` itself (K = {checkpoint.net_config.bits}, split "
                 f"seed {checkpoint.split_seed}): "
                 + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()) + ".")
        print(extra)
    within = tuple(p for p in protocols if p != "transfer")
    results = run_evaluation(features, data.labels, base, bits_list, seeds, names, oriented,
                             within, novel_names, jobs=jobs, rerank=rerank) if within else {}
    if transfer is not None:
        target = scan_image_folder(transfer)
        views = [cached_features(backbone, target, cache_dir)]
        views += [cached_features(backbone, target, cache_dir, orientation=k)
                  for k in ADAPT_ORIENTATIONS]
        if any(v.paths != target.paths for v in views):
            raise ValueError(f"{transfer}: every scene must be readable for the transfer "
                             "protocol")
        results["transfer"] = run_transfer(
            features, data.labels, oriented, views[0].features, target.labels,
            [v.features for v in views], base, bits_list, seeds, fit_rerank) | {
            "source": data_dir.name, "target": transfer.name}
    commands = [command]
    if merge:
        results, commands = merge_previous(results, out, command, data_dir.name, base, seeds)
    return write_report(results, out, commands, data_dir.name, base, seeds, extra, report)
