"""Training end to end on a real subset, and the clear errors of ``train`` / ``eval``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import link_ucmerced

from dahash_index.cli.main import main
from dahash_index.model.backbones import BackboneSpec
from dahash_index.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dahash_index.model.network import dahash_net
from dahash_index.train.data import split_per_class
from dahash_index.train.evaluate import VARIANTS, score_codes
from dahash_index.train.workflow import train_command


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    return link_ucmerced(tmp_path_factory.mktemp("ucm"), 20,
                         ["agricultural", "beach", "forest", "harbor"])


@pytest.fixture(scope="module")
def subset_cache(tmp_path_factory) -> Path:
    """One feature cache for the tests on ``subset``: its scenes go through the backbone once."""
    return tmp_path_factory.mktemp("ucm-features")


@pytest.mark.realdata
def test_short_training_beats_random_codes(subset, subset_cache, tmp_path):
    scores = train_command(subset, 32, tmp_path / "m.pt", 0, "dahash", ["steps=150"],
                           "tf2015", None, subset_cache)
    # Random 32-bit codes on the same split, averaged over 5 draws.
    labels = np.repeat(np.arange(4), 20)
    train_idx, test_idx = split_per_class(labels, 0)
    rng = np.random.default_rng(0)
    random_map = np.mean([
        score_codes(c[train_idx], labels[train_idx], c[test_idx], labels[test_idx])["map@all"]
        for c in (rng.integers(0, 256, (80, 4), dtype=np.uint8) for _ in range(5))
    ])
    assert random_map < 0.45
    assert scores["map@all"] > random_map + 0.3
    checkpoint = load_checkpoint(tmp_path / "m.pt")
    assert checkpoint.classes == ["agricultural", "beach", "forest", "harbor"]
    assert checkpoint.split_seed == 0 and checkpoint.net_config.bits == 32
    assert checkpoint.train_config["steps"] == 150
    assert checkpoint.backbone == "tf2015" and len(checkpoint.backbone_sha256) == 64


@pytest.mark.realdata
def test_unreadable_image_is_skipped_with_one_line(tmp_path):
    data = link_ucmerced(tmp_path / "data", 6, ["beach", "forest"])
    (data / "beach" / "broken.jpg").write_bytes(b"not a jpeg at all")
    result = CliRunner().invoke(main, [
        "train", "--data", str(data), "--bits", "16", "--out", str(tmp_path / "m.pt"),
        "--set", "steps=5", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "broken.jpg" in line]
    assert len(lines) == 1 and "not a valid" in lines[0]
    assert (tmp_path / "m.pt").is_file()


def _train_error(tmp_path: Path, data: Path, *extra: str) -> str:
    result = CliRunner().invoke(main, [
        "train", "--data", str(data), "--out", str(tmp_path / "m.pt"),
        "--cache-dir", str(tmp_path / "cache"), *extra])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    return result.output.strip().splitlines()[-1]


def _tiny_dataset(root: Path, classes: dict[str, int]) -> Path:
    from PIL import Image

    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(root / name / f"{i}.png")
    return root


def test_k_not_a_multiple_of_8_refused(tmp_path):
    data = _tiny_dataset(tmp_path / "d", {"a": 2, "b": 2})
    assert "K must be a positive multiple of 8" in _train_error(tmp_path, data, "--bits", "12")


def test_empty_class_folder_refused(tmp_path):
    data = _tiny_dataset(tmp_path / "d", {"a": 2, "b": 0})
    message = _train_error(tmp_path, data)
    assert "class folder has no scene files" in message and "/b" in message


def test_single_class_refused(tmp_path):
    data = _tiny_dataset(tmp_path / "d", {"only": 3})
    assert "only one class" in _train_error(tmp_path, data)


def test_missing_data_folder_refused(tmp_path):
    assert "dataset folder not found" in _train_error(tmp_path, tmp_path / "nowhere")


def test_unknown_override_refused(tmp_path):
    data = _tiny_dataset(tmp_path / "d", {"a": 2, "b": 2})
    assert "unknown training options: stepz" in _train_error(tmp_path, data, "--set",
                                                              "stepz=3")


def test_checkpoint_from_another_backbone_refused(tmp_path):
    other = BackboneSpec("tf2015", "f" * 64, (0.5,) * 3, (0.5,) * 3)
    save_checkpoint(tmp_path / "other.pt", dahash_net(16), other, ["a", "b"], 0, {})
    checkpoint = load_checkpoint(tmp_path / "other.pt")
    mine = BackboneSpec("tf2015", "0" * 64, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(CheckpointError, match="trained on backbone tf2015 .*ffffffffffff"):
        checkpoint.check_backbone(mine)


@pytest.mark.realdata
def test_eval_with_a_checkpoint_from_another_backbone_is_one_line(tmp_path):
    other = BackboneSpec("tf2015", "f" * 64, (0.5,) * 3, (0.5,) * 3)
    config = {"bits": 16, "steps": 1}
    save_checkpoint(tmp_path / "other.pt", dahash_net(16), other, ["a", "b"], 0, config)
    data = link_ucmerced(tmp_path / "data", 3, ["beach", "forest"])
    result = CliRunner().invoke(main, [
        "eval", "--data", str(data), "--model", str(tmp_path / "other.pt"), "--bits", "16",
        "--seeds", "0", "--variants", "full", "--out", str(tmp_path / "eval"),
        "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code != 0
    assert "model was trained on backbone tf2015" in result.output.strip().splitlines()[-1]


def test_not_a_checkpoint_refused(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


# Every variant but those needing 8-orientation features (minutes of extraction) and MiLAN
# (its published 10,000 steps take minutes).
FAST_VARIANTS = [v for v in VARIANTS if "orientation" not in v and v != "MiLAN"]


@pytest.mark.realdata
def test_eval_writes_the_report_for_every_variant(subset, subset_cache, tmp_path):
    train_command(subset, 16, tmp_path / "m.pt", 0, "dahash", ["steps=20"], "tf2015", None,
                  subset_cache)
    result = CliRunner().invoke(main, [
        "eval", "--data", str(subset), "--model", str(tmp_path / "m.pt"), "--bits", "8,16",
        "--seeds", "0", "--jobs", "2", "--out", str(tmp_path / "eval"), "--report",
        str(tmp_path / "report.md"), "--cache-dir", str(subset_cache),
        "--variants", ",".join(FAST_VARIANTS),
        "--novel-variants", "full,attention: none"])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report.md").read_text()
    standard, novel = report.split("## Novel classes")
    for name in FAST_VARIANTS + ["LDA + cosine (float)"]:
        assert standard.count(f"| {name} |") == 2, name  # one row per K
    for name in ["full", "attention: none", "LDA + cosine (float)"]:
        assert novel.count(f"| {name} |") == 2, name
    assert "| MiLAN |" not in novel
    assert "](eval/pr-16.png)" in report
    assert (tmp_path / "eval" / "pr-8.png").stat().st_size > 1000
    results = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
    assert len(results["standard"]["16"]["full"]) == 1  # one entry per seed
    assert len(results["novel"]["8"]["full"]) == 1
    assert results["standard"]["16"]["full"][0]["distinct_codes"] >= 1


@pytest.mark.parametrize("extra, message", [
    (["--bits", "12"], "K must be a positive multiple of 8"),
    (["--variants", "full,nonsense"], "unknown variant(s) ['nonsense']"),
    (["--protocols", "standard,other"], "unknown protocol(s) ['other']"),
    (["--jobs", "0"], "Invalid value for '--jobs': 0 is not in the range x>=1"),
    (["--seeds", "abc"], "expected comma-separated integers, got 'abc'"),
    (["--seeds", ","], "--bits and --seeds each need at least one value"),
])
def test_bad_eval_arguments_refused_before_any_work(tmp_path, extra, message):
    # The data folder does not even exist: the arguments are checked before anything loads.
    result = CliRunner().invoke(main, [
        "eval", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "e"), *extra])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert message in result.output.strip().splitlines()[-1]
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("setting, message", [
    ("steps=0", "steps must be >= 1"),
    ("steps=abc", "steps must be an integer, got 'abc'"),
])
def test_bad_training_setting_leaves_the_model_file_alone(tmp_path, setting, message):
    data = _tiny_dataset(tmp_path / "d", {"a": 2, "b": 2})
    (tmp_path / "m.pt").write_bytes(b"an older model")
    assert message in _train_error(tmp_path, data, "--set", setting)
    assert (tmp_path / "m.pt").read_bytes() == b"an older model"


@pytest.mark.realdata
def test_eval_transfer_scores_every_row_on_the_other_archive(subset, subset_cache, tmp_path):
    source = subset
    target = link_ucmerced(tmp_path / "b", 10, ["river", "runway", "overpass"])
    train_command(source, 16, tmp_path / "m.pt", 0, "dahash", ["steps=20"], "tf2015", None,
                  subset_cache)  # eval trains with this model's config: 20 steps
    result = CliRunner().invoke(main, [
        "eval", "--data", str(source), "--model", str(tmp_path / "m.pt"), "--transfer",
        str(target), "--protocols", "transfer", "--bits", "16", "--seeds", "0", "--out",
        str(tmp_path / "eval"), "--cache-dir", str(subset_cache)])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "eval" / "report.md").read_text()
    assert f"## Transfer: a model trained on {source.name} codes b" in report
    for row in ("the model's codes", "the model's codes, re-ranked (ties)",
                "the model's codes, re-ranked (full)", "after adapt on B",
                "after adapt on B, re-ranked (full)", "ITQ fitted on B", "PCA-sign fitted on B",
                "float cosine (backbone features)", "LDA + cosine (float) fitted on the source"):
        assert f"| {row} |" in report, row
    transfer = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]["transfer"]
    itq = transfer["16"]["ITQ fitted on B"][0]
    assert 0 < itq["map@20"] <= 1 and 0 < itq["map@all"] <= 1 and "map@all_tie" in itq
