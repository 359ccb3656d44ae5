"""The options of METHOD.md section 6: centre codes and the centre term, feature
standardisation, orientations, the novel-class split, early stopping, and old checkpoints."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import UCMERCED

from dahash_index.model.backbones import BackboneSpec
from dahash_index.model.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from dahash_index.model.codes import hash_codes
from dahash_index.model.network import HashNet, NetConfig, dahash_net
from dahash_index.model.orientations import orient
from dahash_index.train.centres import (
    CentreCodeError,
    balanced_random_codes,
    centre_codes,
    hadamard,
    min_pairwise_distance,
)
from dahash_index.train.data import novel_class_split
from dahash_index.train.evaluate import distinct_codes_per_class, protocol_parts
from dahash_index.train.losses import CentreLoss
from dahash_index.train.train import TrainConfig, hash_outputs, preset, train_hash_net

SPEC = BackboneSpec("tf2015", "0" * 64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

# --- centre codes ---------------------------------------------------------------------------


@pytest.mark.parametrize("order", [8, 16, 24, 32, 40, 48, 64, 128])
def test_hadamard_rows_are_orthogonal(order):
    h = hadamard(order)
    assert h.shape == (order, order) and set(np.unique(h)) == {-1, 1}
    assert (h @ h.T == order * np.eye(order)).all()
    assert (h[0] == 1).all()


def test_hadamard_not_built_for_56():
    assert hadamard(56) is None  # 56 = 8 * 7 and 14 - 1 = 13 is 1 mod 4: no construction here


@pytest.mark.parametrize("bits", [16, 32, 48, 64])
def test_centre_codes_distinct_balanced_far_apart(bits):
    codes = centre_codes(21, bits, seed=3)
    assert codes.shape == (21, bits) and codes.dtype == bool
    assert (codes.sum(axis=1) == bits // 2).all()  # balanced
    assert len({row.tobytes() for row in codes}) == 21  # distinct
    assert min_pairwise_distance(codes) >= bits // 2  # Hadamard rows: exactly K/2 apart


def test_centre_codes_seed_permutes_assignment():
    a, b = centre_codes(21, 32, seed=0), centre_codes(21, 32, seed=1)
    assert not (a == b).all()
    assert {r.tobytes() for r in centre_codes(21, 32, 0)} == {r.tobytes() for r in a}


def test_centre_codes_fall_back_to_random_when_classes_do_not_fit():
    codes = centre_codes(21, 8, seed=0)  # 2K - 2 = 14 < 21 classes
    assert (codes.sum(axis=1) == 4).all()
    assert len({row.tobytes() for row in codes}) == 21
    assert min_pairwise_distance(codes) >= 2  # K/4


def test_balanced_random_codes_refuse_impossible_distance():
    with pytest.raises(CentreCodeError, match="no 10 balanced 8-bit codes"):
        balanced_random_codes(10, 8, min_distance=8, seed=0, tries=20)


def test_min_pairwise_distance_by_hand():
    codes = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=bool)
    assert min_pairwise_distance(codes) == 1  # rows 0 and 1 differ in one bit


# --- centre loss ----------------------------------------------------------------------------


def test_centre_loss_by_hand():
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    labels = torch.tensor([0, 1])
    # BCE(z, t) = log(1 + e^z) - t z, averaged over the 4 entries.
    def bce(z, t):
        return math.log(1 + math.exp(z)) - t * z
    expected = (bce(0.0, 1) + bce(2.0, 0) + bce(1.0, 0) + bce(-1.0, 1)) / 4
    assert float(CentreLoss(targets)(logits, labels)) == pytest.approx(expected, rel=1e-6)


def test_centre_loss_is_small_at_the_target():
    targets = torch.tensor([[1.0, 0.0, 1.0]])
    logits = torch.tensor([[20.0, -20.0, 20.0]])
    assert float(CentreLoss(targets)(logits, torch.tensor([0]))) < 1e-8


# --- standardisation ------------------------------------------------------------------------


def test_standardisation_statistics_stored_and_applied():
    torch.manual_seed(0)
    x = torch.randn(50, 32) * 3 + 5
    net = HashNet(NetConfig(bits=8, in_features=32, standardize=True, attention="none"))
    net.set_standardization(x)
    assert torch.allclose(net.feature_mean, x.mean(0))
    assert torch.allclose(net.feature_std, x.std(0))
    plain = HashNet(NetConfig(bits=8, in_features=32, attention="none"))
    plain.load_state_dict({k: v for k, v in net.state_dict().items()
                           if not k.startswith("feature_")})
    net.eval()
    plain.eval()
    z = (x - x.mean(0)) / x.std(0)
    assert torch.allclose(net(x), plain(z), atol=1e-6)


def test_standardisation_of_a_constant_channel_is_finite():
    x = torch.randn(10, 16)
    x[:, 3] = 7.0
    net = HashNet(NetConfig(bits=8, in_features=16, standardize=True)).eval()
    net.set_standardization(x)
    assert torch.isfinite(net(x)).all()


def test_standardisation_travels_in_the_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(2.0, 3.0, (60, 2048)).astype(np.float32)
    labels = np.repeat(np.arange(3), 20)
    config = TrainConfig(bits=16, sampler="semi-hard", classes_per_batch=3, per_class=4,
                         steps=3, standardize=True, lr=1e-3)
    trained = train_hash_net(features, labels, config, seed=0, progress=False)
    assert torch.allclose(trained.net.feature_mean, torch.from_numpy(features.mean(0)),
                          atol=1e-5)
    save_checkpoint(tmp_path / "m.pt", trained.net, SPEC, ["a", "b", "c"], 0,
                    config.to_dict())
    rebuilt = load_checkpoint(tmp_path / "m.pt").build_net()
    assert rebuilt.config.standardize
    # The trainer's codes and the ones the encoder computes (checkpoint.build_net) agree.
    assert (hash_codes(hash_outputs(trained.net, features))
            == hash_codes(hash_outputs(rebuilt, features))).all()


# --- orientations ---------------------------------------------------------------------------


def test_orient_is_the_dihedral_group():
    x = torch.arange(2 * 3 * 4).float().view(1, 2, 3, 4)
    images = [orient(x, k) for k in range(8)]
    assert len({tuple(im.flatten().tolist()) + tuple(im.shape) for im in images}) == 8
    assert torch.equal(images[0], x)
    assert torch.equal(images[1], torch.rot90(x, 1, dims=(-2, -1)))
    assert torch.equal(images[4], x.flip(-1))
    assert images[1].shape == (1, 2, 4, 3)  # odd rotations swap height and width
    assert torch.equal(orient(images[2], 2), x)  # 180 + 180 = identity


def test_orient_refuses_bad_orientation():
    with pytest.raises(ValueError, match="orientation must be an integer in 0..7"):
        orient(torch.zeros(1, 3, 4, 4), 8)


# --- novel-class split ----------------------------------------------------------------------


def test_novel_split_keeps_unseen_classes_out_of_training():
    labels = np.repeat(np.arange(21), 10)
    for seed in (0, 1, 2):
        seen, unseen = novel_class_split(labels, seed)
        assert len(unseen) == 5 and len(seen) == 16
        assert set(seen) | set(unseen) == set(range(21)) and not set(seen) & set(unseen)
        fit, db, query = protocol_parts(labels, seed, "novel")
        assert not np.isin(labels[fit], unseen).any()
        assert set(labels[db]) == set(unseen) and set(labels[query]) == set(unseen)
        assert not set(db) & set(query)
    assert not (novel_class_split(labels, 0)[1] == novel_class_split(labels, 1)[1]).all()


def test_novel_split_needs_four_classes():
    with pytest.raises(ValueError, match="needs at least 4 classes"):
        novel_class_split(np.repeat(np.arange(3), 5), 0)


def test_distinct_codes_per_class():
    codes = np.array([[1], [1], [2], [3], [3], [4]], dtype=np.uint8)
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert distinct_codes_per_class(codes, labels) == 2.0  # {1, 2} and {3, 4}


# --- training options -----------------------------------------------------------------------


def _toy(n_classes=3, per_class=20, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    features = (centres[labels] + 0.3 * rng.normal(0, 1, (len(labels), dim))).astype(np.float32)
    return features, labels


def test_training_with_centre_term_returns_its_codes():
    features, labels = _toy()
    config = TrainConfig(bits=16, sampler="semi-hard", classes_per_batch=3, per_class=4,
                         steps=30, lr=1e-3, centre_weight=1.0, reduction=4)
    trained = train_hash_net(features, labels, config, seed=0, progress=False)
    assert trained.centre_codes.shape == (3, 16)
    assert (trained.centre_codes == centre_codes(3, 16, 0)).all()
    assert "centre" in trained.log[-1]


def test_training_on_eight_orientations_checks_the_shape():
    features, labels = _toy()
    config = TrainConfig(bits=16, sampler="semi-hard", classes_per_batch=3, per_class=4,
                         steps=5, orientations=8, reduction=4)
    stacked = np.stack([features + k for k in range(8)])
    trained = train_hash_net(stacked, labels, config, seed=0, progress=False)
    assert trained.best_step == 5
    with pytest.raises(ValueError, match="do not fit 8 orientation"):
        train_hash_net(features, labels, config, seed=0, progress=False)


def test_early_stopping_keeps_the_best_scored_weights():
    features, labels = _toy()
    config = TrainConfig(bits=16, sampler="semi-hard", classes_per_batch=3, per_class=4,
                         steps=40, eval_every=10, validation_fraction=0.25, lr=1e-3,
                         reduction=4)
    trained = train_hash_net(features, labels, config, seed=0, progress=False)
    scores = {row["step"]: row["val"] for row in trained.log}
    assert list(scores) == [10, 20, 30, 40]
    assert scores[trained.best_step] == max(scores.values())


@pytest.mark.parametrize("override, message", [
    ({"steps": 0}, "steps must be >= 1"),
    ({"steps": "abc"}, "steps must be an integer"),
    ({"lr": 0}, "lr must be > 0"),
    ({"validation_fraction": 0.9}, "validation_fraction must be >= 0.0 and <= 0.5"),
    ({"orientations": 3}, "orientations must be one of"),
    ({"schedule": "step"}, "schedule must be one of"),
])
def test_bad_training_options_refused_in_one_line(override, message):
    with pytest.raises(ValueError, match=message):
        preset("dahash", **override)


# --- checkpoints from before these options --------------------------------------------------


def test_checkpoint_from_before_the_options_loads(tmp_path):
    net = dahash_net(16)
    old_config = {k: v for k, v in net.config.to_dict().items()
                  if k in ("bits", "head", "attention", "reduction", "dropout", "in_features")}
    torch.save({"format": FORMAT, "net_config": old_config,
                "state_dict": net.state_dict(), "backbone": "tf2015",
                "backbone_sha256": "0" * 64, "classes": ["a", "b"], "split_seed": 0,
                "train_config": {"bits": 16, "steps": 800}}, tmp_path / "old.pt")
    checkpoint = load_checkpoint(tmp_path / "old.pt")
    assert checkpoint.centre_codes is None and not checkpoint.net_config.standardize
    x = torch.randn(4, 2048)
    assert torch.equal(checkpoint.build_net()(x), net.eval()(x))


def test_checkpoint_with_unknown_network_option_refused(tmp_path):
    net = dahash_net(16)
    torch.save({"format": FORMAT, "net_config": net.config.to_dict() | {"future": 1},
                "state_dict": net.state_dict(), "backbone": "tf2015",
                "backbone_sha256": "0" * 64, "classes": [], "split_seed": 0,
                "train_config": {}}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="network options this version does not know"):
        load_checkpoint(tmp_path / "new.pt")


def test_centre_codes_saved_in_the_checkpoint(tmp_path: Path):
    codes = centre_codes(2, 16, 0)
    save_checkpoint(tmp_path / "m.pt", dahash_net(16), SPEC, ["a", "b"], 0, {}, codes)
    assert (load_checkpoint(tmp_path / "m.pt").centre_codes == codes).all()


# --- the orientation feature cache (real backbone, real scenes) -----------------------------



@pytest.mark.realdata
def test_oriented_feature_cache_equals_the_backbone_on_turned_scenes(tmp_path, capsys):
    from dahash_index.model.backbones import image_to_tensor, load_backbone
    from dahash_index.model.encoder import BackboneEncoder
    from dahash_index.scenes.decode import decode_scene
    from dahash_index.train.data import scan_image_folder
    from dahash_index.train.features import cached_features

    for name in ("beach", "forest"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for scene in sorted((UCMERCED / name).iterdir())[:2]:
            (tmp_path / "data" / name / scene.name).symlink_to(scene)
    data = scan_image_folder(tmp_path / "data")
    backbone = load_backbone("tf2015")
    extractor = BackboneEncoder(backbone, "cpu")
    images = torch.stack([image_to_tensor(decode_scene((data.root / p).read_bytes(), p)[0])
                          for p in data.paths])
    cache = tmp_path / "cache"
    for k in (0, 1, 5):
        cached = cached_features(extractor, data, cache, progress=False, orientation=k)
        assert torch.allclose(torch.from_numpy(cached.features), backbone(orient(images, k)),
                              atol=1e-4)
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 3 and sum("-o1." in f for f in files) == 1  # one file per orientation
    # A file of another orientation under this orientation's name is detected and rebuilt.
    o1 = next(cache.glob("*-o1.npz"))
    o5 = next(cache.glob("*-o5.npz"))
    o1.replace(o5)
    rebuilt = cached_features(extractor, data, cache, progress=True, orientation=5)
    assert "does not match; rebuilding" in capsys.readouterr().err
    assert torch.allclose(torch.from_numpy(rebuilt.features), backbone(orient(images, 5)),
                          atol=1e-4)
    # The JPEG re-encoded view: its own file, the backbone on the scenes re-encoded at the
    # quality each one draws.
    from dahash_index.train.features import recompress_quality, recompressed

    jpeg = cached_features(extractor, data, cache, progress=False, recompress=(30, 90))
    redone = torch.stack([
        image_to_tensor(recompressed(decode_scene((data.root / p).read_bytes(), p)[0],
                                     recompress_quality(i, (30, 90))))
        for i, p in enumerate(data.paths)])
    assert torch.allclose(torch.from_numpy(jpeg.features), backbone(redone), atol=1e-4)
    assert len(list(cache.glob("*-jpeg30-90.npz"))) == 1
    plain = cached_features(extractor, data, cache, progress=False)
    assert not np.allclose(plain.features, jpeg.features)


def test_milan_variant_trains_for_its_published_length():
    from dahash_index.train.evaluate import VARIANTS

    milan = VARIANTS["MiLAN"](preset("dahash", steps=20, bits=32))
    assert milan.steps == 10_000 and milan.bits == 32 and milan.head == "milan"
    assert (milan.lr, milan.beta1, milan.beta2, milan.triplets) == (1e-4, 0.5, 0.9, 30)


def test_report_merge_keeps_earlier_runs(tmp_path):
    import json

    from dahash_index.train.report import merge_previous

    base = preset("dahash")
    run = {"map@20": 0.5}
    first = {"standard": {"lda": [run], "64": {"full": [run], "MiLAN": [run]}}}
    (tmp_path / "results.json").write_text(json.dumps(
        {"commands": ["eval a"], "dataset": "d", "seeds": [0], "config": base.to_dict(),
         "results": first}))
    newer = {"map@20": 0.7}
    second = {"standard": {"lda": [run], "16": {"full": [newer]}, "64": {"full": [newer]}},
              "novel": {"lda": [run], "16": {"full": [newer]}}}
    merged, commands = merge_previous(second, tmp_path, "eval b", "d", base, [0])
    assert commands == ["eval a", "eval b"]
    assert list(merged["standard"]) == ["lda", "16", "64"]
    assert merged["standard"]["64"] == {"full": [newer], "MiLAN": [run]}
    assert merged["novel"]["16"] == {"full": [newer]}
    with pytest.raises(ValueError, match="another dataset, seeds or full-method config"):
        merge_previous(second, tmp_path, "eval c", "d", base, [0, 1])


# --- the encoder applies what the trainer learned -------------------------------------------


@pytest.mark.realdata
@pytest.mark.parametrize("average", [False, True])
def test_encoder_codes_equal_the_trainers(tmp_path, tf2015_spec, average):
    """Standardisation (and orientation averaging) in the SceneEncoder, the path of build and
    query, give the codes the trainer's evaluation computes from backbone features."""
    from dahash_index.model.backbones import image_to_tensor
    from dahash_index.model.encoder import SceneEncoder
    from dahash_index.scenes.decode import decode_scene
    from dahash_index.train.evaluate import scene_outputs

    paths = [sorted((UCMERCED / c).iterdir())[0] for c in ("beach", "forest", "harbor")]
    decoded = [decode_scene(p.read_bytes(), p.name)[0] for p in paths]
    images = torch.stack([image_to_tensor(image) for image in decoded])
    rng = np.random.default_rng(0)
    train = rng.normal(0.3, 0.2, (30, 2048)).clip(0).astype(np.float32)
    config = TrainConfig(bits=16, sampler="semi-hard", classes_per_batch=3, per_class=4,
                         steps=3, standardize=True, average_orientations=average)
    trained = train_hash_net(train, np.repeat(np.arange(3), 10), config, progress=False)
    save_checkpoint(tmp_path / "m.pt", trained.net, tf2015_spec, ["a", "b", "c"], 0,
                    config.to_dict())
    encoder = SceneEncoder.from_path(tmp_path / "m.pt", device="cpu")
    oriented = {k: encoder.backbone(orient(images, k)).numpy() for k in range(8)}
    expected = hash_codes(scene_outputs(trained.net, oriented[0], oriented, np.arange(3),
                                        average))
    assert (encoder.encode(decoded) == expected).all()


def test_presets_are_listed_from_the_shipped_files():
    from dahash_index.cli.main import train
    from dahash_index.train.train import list_presets

    assert list_presets() == ["dahash", "dahash-d4", "milan"]
    choices = next(p for p in train.params if p.name == "preset_name").type.choices
    assert sorted(choices) == list_presets()
    d4 = preset("dahash-d4")
    assert d4.orientations == 8 and d4.average_orientations
    assert d4 == replace(preset("dahash"), orientations=8, average_orientations=True)
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        preset("nope")


def test_only_the_needed_orientations_are_extracted():
    from dahash_index.train.evaluate import needed_orientations

    base = TrainConfig()
    # 1, 4 and the JPEG re-encoded scene always: the views the re-rank projection is fitted on
    # (model.rerank)
    assert needed_orientations([base]) == (1, 4, "jpeg")
    assert needed_orientations([replace(base, orientations=2)]) == (1, 4, "jpeg")
    assert needed_orientations([replace(base, orientations=4), base]) == (1, 2, 4, 6, "jpeg")
    assert needed_orientations([replace(base, average_orientations=True)]) == \
        (*range(1, 8), "jpeg")


def test_recompress_quality_is_seeded_by_the_scene_alone_and_in_range():
    from dahash_index.train.features import recompress_quality

    qualities = [recompress_quality(i, (30, 90)) for i in range(500)]
    assert qualities == [recompress_quality(i, (30, 90)) for i in range(500)]
    assert min(qualities) == 30 and max(qualities) == 90  # both ends drawn, inclusive
    assert len(set(qualities)) == 61
    assert recompress_quality(7, (50, 50)) == 50


def test_recompressed_scene_is_the_jpeg_decoded_again():
    import io

    from PIL import Image

    from dahash_index.train.features import recompressed

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    out = recompressed(image, 50)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=50)
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(Image.open(buffer).convert("RGB")))
    assert not np.array_equal(out, image)  # noise does not survive quality 50


def test_orient_image_turns_one_image_as_orient_turns_a_batch():
    from dahash_index.model.orientations import QUERY_ORIENTATIONS, orient_image

    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)  # H=2, W=3, 3 channels
    batch = torch.from_numpy(image).permute(2, 0, 1)[None]  # (1, 3, H, W)
    for k in range(8):
        expected = orient(batch, k)[0].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(orient_image(image, k), expected)
        np.testing.assert_array_equal(orient_image(torch.from_numpy(image), k).numpy(), expected)
    assert QUERY_ORIENTATIONS[4] == (0, 1, 2, 3) and len(QUERY_ORIENTATIONS[8]) == 8
