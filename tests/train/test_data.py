"""Unit tests for trainer/data.py: image-folder scanning and the seeded per-class 60/40 split
(METHOD.md section 5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dahash_index.train.data import DatasetError, scan_image_folder, split_per_class


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path, format="PNG")


def _dataset(root: Path) -> Path:
    _png(root / "river" / "r2.png")
    _png(root / "river" / "r1.PNG")  # suffix matched case-insensitively
    _png(root / "river" / "sub" / "r3.png")  # nested scenes belong to the class
    _png(root / "forest" / "f1.png")
    _png(root / "forest" / ".hidden.png")  # hidden files skipped
    (root / "forest" / "notes.txt").write_text("not a scene")
    (root / ".cache").mkdir()  # hidden folders are not classes
    _png(root / ".cache" / "x.png")
    (root / "README.txt").write_text("top-level files are not classes")
    return root


def test_scan_image_folder(tmp_path):
    ds = scan_image_folder(_dataset(tmp_path / "ds"))
    assert ds.root == tmp_path / "ds"
    assert ds.classes == ["forest", "river"]  # sorted folder names, label = index
    assert ds.paths == ["forest/f1.png", "river/r1.PNG", "river/r2.png", "river/sub/r3.png"]
    assert ds.labels.dtype == np.int64
    assert ds.labels.tolist() == [0, 1, 1, 1]


def test_subset_keeps_order(tmp_path):
    ds = scan_image_folder(_dataset(tmp_path / "ds"))
    sub = ds.subset(np.array([False, True, False, True]))
    assert sub.paths == ["river/r1.PNG", "river/sub/r3.png"]
    assert sub.labels.tolist() == [1, 1]
    assert sub.classes == ds.classes
    assert ds.subset(np.array([3, 0])).paths == ["river/sub/r3.png", "forest/f1.png"]


def test_missing_root(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="not found") as err:
        scan_image_folder(root)
    assert str(root) in str(err.value)


def test_no_class_folders(tmp_path):
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="no class folders") as err:
        scan_image_folder(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_empty_class_folder(tmp_path):
    _png(tmp_path / "forest" / "f1.png")
    (tmp_path / "river").mkdir()
    (tmp_path / "river" / "notes.txt").write_text("no scenes here")
    with pytest.raises(DatasetError, match="no scene files") as err:
        scan_image_folder(tmp_path)
    assert str(tmp_path / "river") in str(err.value)


def test_single_class(tmp_path):
    _png(tmp_path / "forest" / "f1.png")
    _png(tmp_path / "forest" / "f2.png")
    with pytest.raises(DatasetError, match="only one class") as err:
        scan_image_folder(tmp_path)
    assert str(tmp_path) in str(err.value) and "forest" in str(err.value)


def test_dataset_error_is_value_error():
    assert issubclass(DatasetError, ValueError)


LABELS = np.repeat([0, 1, 2], 100)  # 3 classes x 100 scenes


def test_split_60_40_per_class():
    train, test = split_per_class(LABELS, seed=0)
    # 100 per class -> round(0.6 * 100) = 60 train, 40 test; 3 classes -> 180 / 120
    assert train.shape == (180,) and test.shape == (120,)
    assert np.bincount(LABELS[train]).tolist() == [60, 60, 60]
    assert np.bincount(LABELS[test]).tolist() == [40, 40, 40]
    assert train.dtype == np.int64 and test.dtype == np.int64
    assert (np.diff(train) > 0).all() and (np.diff(test) > 0).all()  # sorted, no repeats
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(300))


def test_split_deterministic_per_seed():
    a_train, a_test = split_per_class(LABELS, seed=5)
    b_train, b_test = split_per_class(LABELS, seed=5)
    np.testing.assert_array_equal(a_train, b_train)
    np.testing.assert_array_equal(a_test, b_test)
    c_train, _ = split_per_class(LABELS, seed=6)
    assert not np.array_equal(a_train, c_train)
    assert np.bincount(LABELS[c_train]).tolist() == [60, 60, 60]


def test_split_small_classes_and_fraction():
    labels = np.array([0] + [1] * 2 + [2] * 5)
    train, test = split_per_class(labels, seed=0)
    # class 0: n=1 -> round(0.6) = 1 train, 0 test
    # class 1: n=2 -> round(1.2) = 1 train, 1 test
    # class 2: n=5 -> round(3.0) = 3 train, 2 test
    assert np.bincount(labels[train], minlength=3).tolist() == [1, 1, 3]
    assert np.bincount(labels[test], minlength=3).tolist() == [0, 1, 2]
    # train_fraction 0.8 on 100 per class -> 80 / 20
    train, test = split_per_class(LABELS, seed=0, train_fraction=0.8)
    assert np.bincount(LABELS[train]).tolist() == [80, 80, 80]
    assert np.bincount(LABELS[test]).tolist() == [20, 20, 20]
