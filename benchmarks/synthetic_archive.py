"""A synthetic archive for the scale benchmark: class-structured 64-bit codes and metadata.

Codes: each class's centre is a random 64-bit code, and each code is its centre with d bits
flipped, d drawn from the histogram of distances to their class centre that the trained
model's UC Merced codes show (``ucmerced_codes``, ``majority_centres``, ``distance_stats``,
``CodeModel``). Metadata: the METADATA_SCHEMA columns of one shard as a pyarrow Table built
from numpy (``metadata_rows``), with 60-character URLs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BITS = 64
FLOAT_COLUMNS = ("left", "bottom", "right", "top", "west", "south", "east", "north")


# --- the codes: measured on UC Merced, drawn around random centres --------------------------


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (any shape) -> int64 of the same shape."""
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1).astype(np.int64)


def as_words(codes: np.ndarray) -> np.ndarray:
    """Packed 64-bit codes uint8 (n, 8) -> uint64 (n,) (a view)."""
    return np.ascontiguousarray(codes).view(np.uint64).reshape(-1)


def ucmerced_codes(model: Path, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """The trained model's codes of the UC Merced scenes it was not trained on (the test
    split of its split seed): uint8 (N, 8), labels int (N,). Train scenes sit closer to their
    class centres than the scenes of an archive the model never saw."""
    from dahash_index.model.checkpoint import load_checkpoint
    from dahash_index.model.codes import hash_codes
    from dahash_index.model.orientations import ORIENTATIONS
    from dahash_index.train.data import split_per_class
    from dahash_index.train.evaluate import scene_outputs
    from dahash_index.train.workflow import labelled_features, oriented_features

    checkpoint = load_checkpoint(model)
    if checkpoint.net_config.bits != BITS:
        raise SystemExit(f"{model}: K={checkpoint.net_config.bits}, this benchmark needs 64")
    backbone, images, features = labelled_features(data, checkpoint.backbone, None, None)
    oriented = None
    if checkpoint.net_config.average_orientations:
        oriented = oriented_features(backbone, images, None, ORIENTATIONS)
    net = checkpoint.build_net()
    outputs = scene_outputs(net, features, oriented, np.arange(len(features)),
                            net.config.average_orientations)
    _, test = split_per_class(np.asarray(images.labels), checkpoint.split_seed or 0)
    return hash_codes(outputs)[test], np.asarray(images.labels)[test]


def majority_centres(words: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each class's bitwise majority code, uint64 (classes,), classes = sorted labels."""
    bits = np.unpackbits(words.view(np.uint8).reshape(-1, 8), axis=1)
    centres = [np.packbits(bits[labels == c].mean(0) >= 0.5) for c in np.unique(labels)]
    return np.ascontiguousarray(np.stack(centres)).view(np.uint64).reshape(-1)


def distance_stats(words: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> dict:
    """Means of the Hamming distances: code to its class centre, pairs within a class, pairs of
    two classes (on at most 2,000 codes), and the to-centre histogram (BITS + 1,) float."""
    classes = np.unique(labels)
    to_centre = popcount(words ^ centres[np.searchsorted(classes, labels)])
    pick = np.random.default_rng(0).permutation(len(words))[:2000]
    w, lab = words[pick], labels[pick]
    pairs = popcount(w[:, None] ^ w[None, :])
    same = lab[:, None] == lab[None, :]
    upper = np.triu(np.ones_like(same), 1)
    hist = np.bincount(to_centre, minlength=BITS + 1).astype(np.float64)
    return {
        "to_centre": float(to_centre.mean()),
        "intra": float(pairs[same & upper].mean()),
        "inter": float(pairs[~same & upper].mean()),
        "hist": hist / hist.sum(),
    }


class CodeModel:
    """Draws class-structured codes: a random centre of ``classes``, ``d`` bits flipped with
    d ~ ``hist`` (BITS + 1,) probabilities; deterministic in (seed, stream). ``held_out`` more
    centres are drawn for queries of classes the archive does not hold (``draw(...,
    held_out=True)``); ``noise``: the fraction of ``draw``'s codes that are uniform random
    codes instead (class -1: scenes like no other, as clouds, sea or no-data tiles)."""

    POOL = 4096  # random d-bit masks per d; a random rotation makes 64 x as many

    def __init__(self, hist: np.ndarray, classes: int, seed: int, held_out: int = 0,
                 noise: float = 0.0) -> None:
        rng = np.random.default_rng([seed, 0])
        self.seed = seed
        self.classes = classes
        self.noise = noise
        self.cdf = np.cumsum(hist / hist.sum())
        # The archive's centres do not depend on how many are held out (the build's child
        # process draws the archive without them); those come from a stream of their own.
        self.centres = np.concatenate([
            uniform_words(classes, rng), uniform_words(held_out, np.random.default_rng([seed, 4]))])
        # masks[d, i]: exactly d bits set, the first d of a random permutation of the 64.
        ranks = np.argsort(rng.random((self.POOL, BITS)), axis=1)
        weights = (np.uint64(1) << np.arange(BITS, dtype=np.uint64))
        self.masks = np.zeros((BITS + 1, self.POOL), dtype=np.uint64)
        for d in range(1, BITS + 1):
            self.masks[d] = np.bitwise_or.reduce(weights[ranks[:, :d]], axis=1)

    def draw(self, n: int, stream: int, held_out: bool = False, noise: bool = True
             ) -> tuple[np.ndarray, np.ndarray]:
        """n codes uint8 (n, 8) and their class numbers int64 (n,): of the archive's classes
        (with ``noise``, the model's fraction of them uniform, class -1), or with ``held_out``
        of the held-out classes only (no noise)."""
        rng = np.random.default_rng([self.seed, 1, stream])
        low, high = (self.classes, len(self.centres)) if held_out else (0, self.classes)
        cls = rng.integers(low, high, size=n)
        d = np.minimum(np.searchsorted(self.cdf, rng.random(n)), BITS)
        masks = self.masks[d, rng.integers(0, self.POOL, size=n)]
        r = rng.integers(0, BITS, size=n).astype(np.uint64)
        rotated = (masks << r) | (masks >> ((np.uint64(BITS) - r) % np.uint64(BITS)))
        words = self.centres[cls] ^ rotated
        if noise and not held_out and self.noise:
            noisy = rng.random(n) < self.noise
            words[noisy] = uniform_words(int(noisy.sum()), rng)
            cls[noisy] = -1
        return words.view(np.uint8).reshape(n, 8), cls


def uniform_words(n: int, rng: np.random.Generator) -> np.ndarray:
    """n uniform random 64-bit codes, uint64 (n,)."""
    return rng.integers(0, 1 << 63, size=n, dtype=np.uint64) * np.uint64(2) \
        + rng.integers(0, 2, size=n, dtype=np.uint64)


# --- the metadata: pyarrow arrays from numpy ------------------------------------------------


def unit_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """n random unit vectors (n, dim) as float16: stand-ins for re-rank vectors."""
    v = rng.standard_normal((n, dim), dtype=np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)


def digits(values: np.ndarray, width: int) -> np.ndarray:
    """Non-negative int64 (n,) -> their last ``width`` decimal digits as ASCII uint8 (n, width)."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return (values[:, None] // powers % 10 + ord("0")).astype(np.uint8)


def url_column(part: int, first: int, n: int, rng: np.random.Generator):
    """n distinct URLs of exactly 60 characters:
    s3://eo-archive/scenes/p0001/r000012345678-0123456789012.tif"""
    import pyarrow as pa

    head = np.frombuffer(f"s3://eo-archive/scenes/p{part:04d}/r".encode(), np.uint8)
    pieces = [np.broadcast_to(head, (n, len(head))),
              digits(np.arange(first, first + n, dtype=np.int64), 12),
              np.broadcast_to(np.frombuffer(b"-", np.uint8), (n, 1)),
              digits(rng.integers(0, 10**13, size=n), 13),
              np.broadcast_to(np.frombuffer(b".tif", np.uint8), (n, 4))]
    data = np.ascontiguousarray(np.concatenate(pieces, axis=1))
    width = data.shape[1]
    assert width == 60, width
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def labels_of(values: np.ndarray, names: list[str]):
    """int (n,) indices into ``names`` -> a pyarrow string array."""
    import pyarrow as pa

    return pa.DictionaryArray.from_arrays(pa.array(values.astype(np.int32)),
                                          pa.array(names)).cast(pa.string())


def metadata_rows(part: int, first: int, cls: np.ndarray, seed: int, lean: bool):
    """METADATA_SCHEMA rows of one shard as a pyarrow Table (``lean``: the required columns
    and short URLs only)."""
    import pyarrow as pa

    n = len(cls)
    rng = np.random.default_rng([seed, 2, part])
    shard = f"p{part:04d}"
    columns = {
        "shard": pa.array(np.full(n, shard, dtype=object), pa.string()),
        "width": pa.array(np.full(n, 256, np.int32)),
        "height": pa.array(np.full(n, 256, np.int32)),
        "bands": pa.array(np.full(n, 3, np.int16)),
        "dtype": labels_of(np.zeros(n, np.int64), ["uint8"]),
    }
    if lean:
        columns["url"] = labels_of(np.zeros(n, np.int64), ["s3://eo-archive/x.tif"])
        return pa.table(columns)
    columns["url"] = url_column(part, first, n, rng)
    names = ["noise", *(f"class-{c:04d}" for c in range(int(cls.max()) + 1))]
    columns["label"] = labels_of(cls + 1, names)  # class -1: a uniform noise code
    zone = rng.integers(0, 8, size=n)
    columns["crs"] = labels_of(zone, [f"EPSG:{32629 + z}" for z in range(8)])
    left = rng.uniform(166_000, 834_000, n).round(1)
    bottom = rng.uniform(0, 9_300_000, n).round(1)
    west = -9.0 + 6 * zone + rng.uniform(0, 6, n)
    south = bottom / 111_000
    size = 256 * 0.3
    for name, values in zip(FLOAT_COLUMNS, (left, bottom, left + size, bottom + size, west,
                                            south, west + 0.0007, south + 0.0007), strict=True):
        columns[name] = pa.array(values)
    columns["pixel_size_x"] = pa.array(np.full(n, 0.3))
    columns["pixel_size_y"] = pa.array(np.full(n, 0.3))
    days = rng.integers(0, 2000, size=n)
    dates = (np.datetime64("2018-01-01") + np.arange(2000)).astype(str)
    columns["datetime"] = labels_of(days, [f"{d}T10:30:00Z" for d in dates])
    return pa.table(columns)


# --- the child processes --------------------------------------------------------------------
