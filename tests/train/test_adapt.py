"""Codes fitted without labels: PCA-sign and ITQ (train.unsupervised) by hand, ``adapt``'s linear
head giving its codes, and ``dahash-index adapt`` ignoring folder and file names."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import save_scene

from dahash_index.model.checkpoint import load_checkpoint
from dahash_index.model.codes import hash_codes, unpack_codes
from dahash_index.model.network import NetConfig
from dahash_index.train.adapt import adapt_model, archive_scenes
from dahash_index.train.data import DatasetError
from dahash_index.train.unsupervised import fit_itq, fit_pca_sign, itq_rotation


def test_pca_sign_keeps_the_sign_along_the_main_direction():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.1, (200, 16))
    x[:, 3] += rng.choice([-5.0, 5.0], 200)  # the one direction of large variance
    bits = unpack_codes(fit_pca_sign(x, 8).codes(x))
    first = bits[:, 0]
    assert np.array_equal(first, x[:, 3] > 0) or np.array_equal(first, x[:, 3] < 0)


def test_itq_rotation_lowers_the_quantisation_error():
    rng = np.random.default_rng(1)
    # Two clusters on the diagonal: sign(V) of the raw axes mixes them, a 45° turn does not.
    v = np.repeat([[2.0, 2.0], [-2.0, -2.0]], 100, axis=0) + rng.normal(0, 0.3, (200, 2))
    v -= v.mean(0)
    r = itq_rotation(v, iterations=50)

    def error(rotation):
        turned = v @ rotation
        return np.sum((np.sign(turned) - turned) ** 2)

    assert np.allclose(r @ r.T, np.eye(2), atol=1e-9)  # orthogonal
    assert error(r) <= error(np.eye(2)) + 1e-9
    assert error(r) < 0.8 * error(np.array([[np.cos(1.0), -np.sin(1.0)],
                                            [np.sin(1.0), np.cos(1.0)]]))


def test_itq_codes_are_balanced_bits():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 32))
    bits = unpack_codes(fit_itq(x, 16).codes(x))
    assert bits.shape == (500, 16) and np.all(np.abs(bits.mean(0) - 0.5) < 0.15)


def test_the_adapted_network_gives_the_adapted_codes():
    rng = np.random.default_rng(3)
    views = [rng.normal(size=(300, 128)).astype(np.float32) for _ in range(3)]
    views[1] = views[0] + rng.normal(0, 0.1, views[0].shape).astype(np.float32)
    views[2] = views[0] + rng.normal(0, 0.1, views[0].shape).astype(np.float32)
    adapted = adapt_model(16, views, seed=0)
    net = adapted.net(NetConfig(bits=16, in_features=128))
    with torch.no_grad():
        from_net = hash_codes(net(torch.from_numpy(views[0])))
    # float32 arithmetic in two orders: a scene on a hyperplane may fall either side
    agree = (unpack_codes(from_net) == unpack_codes(adapted.codes(views[0]))).mean()
    assert agree > 0.999
    assert adapted.rerank(views[0]).shape == (300, 64)


def _archive(root: Path, names: dict[str, list[int]]) -> Path:
    for folder, seeds in names.items():
        for seed in seeds:
            save_scene(root / folder / f"scene{seed}.png", seed)
    return root


def test_archive_scenes_go_by_content_not_by_name(tmp_path):
    one = _archive(tmp_path / "one", {"forest": [1, 2], "river": [3]})
    two = _archive(tmp_path / "two", {"zz": [3], "aa": [2, 1]})
    a, b = archive_scenes(one), archive_scenes(two)
    contents = [[(p.root / f).read_bytes() for f in p.paths] for p in (a, b)]
    assert contents[0] == contents[1] and a.classes == ["archive"]
    with pytest.raises(DatasetError, match="at least two scene files"):
        archive_scenes(_archive(tmp_path / "three", {"x": [5]}))


def test_adapt_ignores_folder_names(tmp_path, quick_checkpoint, run_cli):
    archive = _archive(tmp_path / "archive", {"forest": [1, 2, 3, 4], "river": [5, 6, 7, 8],
                                              "beach": [9, 10, 11, 12]})
    cache = tmp_path / "cache"
    first = run_cli("adapt", "--data", archive, "--model", quick_checkpoint, "--out",
                    tmp_path / "a.pt", "--cache-dir", cache, check=True)
    assert "adapted K=64 to 12 scenes" in first.stdout
    # The same scenes, their folders renamed at random and one file renamed too.
    for old, new in (("forest", "q7"), ("river", "forest"), ("beach", "x")):
        shutil.move(archive / old, archive / f"{new}.tmp")
    for new in ("q7", "forest", "x"):
        (archive / f"{new}.tmp").rename(archive / new)
    (archive / "x" / "scene9.png").rename(archive / "x" / "renamed.png")
    run_cli("adapt", "--data", archive, "--model", quick_checkpoint, "--out",
            tmp_path / "b.pt", "--cache-dir", cache, check=True)
    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    assert a.net_config == b.net_config and a.net_config.head == "linear"
    for key in a.state_dict:
        assert torch.equal(a.state_dict[key], b.state_dict[key]), key
    np.testing.assert_array_equal(a.rerank.weights, b.rerank.weights)
    # The adapted model indexes and answers like any model.
    run_cli("build", "--shards", archive, "--index", tmp_path / "I", "--model",
            tmp_path / "a.pt", check=True)
    got = run_cli("query", archive / "forest" / "scene5.png", "--index", tmp_path / "I",
                  "--top", "1", "--json", check=True)
    assert '"rank": 1' in got.stdout and "scene5.png" in got.stdout
