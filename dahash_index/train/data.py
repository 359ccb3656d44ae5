"""Labelled image-folder datasets (``root/<class>/<scene>``) and the seeded per-class splits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dahash_index.scenes.scene import SCENE_SUFFIXES


class DatasetError(ValueError):
    """The dataset folder cannot be used for training or evaluation."""


@dataclass(frozen=True)
class ImageFolder:
    """Scene files under ``root``; ``labels[i]`` indexes ``classes`` for ``paths[i]``.

    paths: relative POSIX paths (str), sorted; labels: (N,) int64.
    """

    root: Path
    paths: list[str]
    labels: np.ndarray
    classes: list[str]

    def subset(self, keep: np.ndarray) -> ImageFolder:
        """The scenes whose indices are in ``keep`` (int array or bool mask), order kept."""
        index = np.flatnonzero(keep) if keep.dtype == bool else np.asarray(keep)
        return ImageFolder(
            self.root, [self.paths[i] for i in index], self.labels[index], self.classes
        )


def scan_image_folder(root: str | Path) -> ImageFolder:
    """List ``root/<class>/*`` scene files; the folder name is the label.

    Refuses, with a one-line reason: a missing root, no class folders, a class folder with
    no scenes, and fewer than two classes (triplets need a negative class).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{root}: no class folders (expected {root}/<class>/<scene files>)")
    paths: list[str] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        scenes = sorted(
            p for p in class_dir.rglob("*")
            if p.is_file() and p.suffix.lower() in SCENE_SUFFIXES and not p.name.startswith(".")
        )
        if not scenes:
            raise DatasetError(f"{class_dir}: class folder has no scene files {SCENE_SUFFIXES}")
        paths.extend(p.relative_to(root).as_posix() for p in scenes)
        labels.extend([label] * len(scenes))
    if len(class_dirs) < 2:
        raise DatasetError(f"{root}: only one class ({class_dirs[0].name}); need at least two")
    classes = [d.name for d in class_dirs]
    return ImageFolder(root, paths, np.asarray(labels, dtype=np.int64), classes)


def split_per_class(
    labels: np.ndarray, seed: int, train_fraction: float = 0.6
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class shuffle split: (train_idx, test_idx), both sorted int64 arrays.

    Each class contributes round(train_fraction * n_c) scenes to train (at least one, and at
    least one left for test when the class has two or more). 100 per class -> 60 / 40.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_train = int(round(train_fraction * len(members)))
        n_train = min(max(n_train, 1), max(len(members) - 1, 1))
        train.append(members[:n_train])
        test.append(members[n_train:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def novel_class_split(
    labels: np.ndarray, seed: int, unseen: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded choice of ``unseen`` classes held out of training: (seen, unseen) class ids,
    both sorted int64 arrays that together hold every class of ``labels`` once.

    ``unseen`` defaults to a quarter of the classes, at least 2 (5 of UC Merced's 21).
    """
    classes = np.unique(labels)
    if unseen is None:
        unseen = max(2, int(round(len(classes) / 4)))
    if not 2 <= unseen <= len(classes) - 2:
        raise ValueError(f"the novel-class protocol needs at least 4 classes (2 held out, 2 to "
                         f"train on); can hold out 2..{len(classes) - 2} of {len(classes)}, "
                         f"not {unseen}")
    held = np.random.default_rng(seed).choice(classes, size=unseen, replace=False)
    return np.setdiff1d(classes, held), np.sort(held).astype(np.int64)
