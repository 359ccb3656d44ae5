"""Retrieval through the index equals the trainer's evaluation (same model, same split).

    python benchmarks/index_vs_eval.py --model runs/ucmerced/model.pt [--data DIR] \
        [--precision fp32|tf32|bf16] [--query-precision P]

Builds a flat index of the train part of the checkpoint's split (one shard per class),
queries it through ``SceneIndex.query`` with every test scene's file, ranks the whole
index, and computes mAP@all (ties in database order) from the API's table. Prints it beside
the figure the evaluation computes for the same checkpoint from cached features (fp32 on a
CPU). --precision builds and queries in another arithmetic (on a CPU, TF32 is emulated:
``dahash_index.model.precision``), --query-precision queries in yet another.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _common import UCMERCED, machine

from dahash_index import runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=UCMERCED)
    parser.add_argument("--precision", default="fp32", help="of the build [default: fp32]")
    parser.add_argument("--query-precision", default=None,
                        help="of the queries [default: --precision]")
    args = parser.parse_args()
    runtime.configure_threads(2)

    from dahash_index.build.indexer import build_index
    from dahash_index.build.job import BuildOptions
    from dahash_index.model.checkpoint import load_checkpoint
    from dahash_index.model.orientations import ORIENTATIONS
    from dahash_index.query.scene_index import SceneIndex
    from dahash_index.train import metrics
    from dahash_index.train.data import split_per_class
    from dahash_index.train.workflow import labelled_features, oriented_features, split_scores

    checkpoint = load_checkpoint(args.model)
    seed = checkpoint.split_seed or 0
    backbone, data, features = labelled_features(args.data, checkpoint.backbone, None, None)
    oriented = None
    if checkpoint.net_config.average_orientations:
        oriented = oriented_features(backbone, data, None, ORIENTATIONS)
    eval_scores = split_scores(checkpoint.build_net(), features, data, seed, oriented)
    train_idx, test_idx = split_per_class(data.labels, seed)

    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "train"
        for i in train_idx:
            link = shards / data.paths[i]
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((data.root / data.paths[i]).resolve())
        query_precision = args.query_precision or args.precision
        build_index(str(shards), Path(tmp) / "index", args.model,
                    BuildOptions(precision=args.precision))
        index = SceneIndex.open(Path(tmp) / "index", model=args.model,
                                precision=query_precision)
        test_files = [str(data.root / data.paths[i]) for i in test_idx]
        table = index.query(test_files, top=len(train_idx))
    assert table["error"].null_count == table.num_rows, "a test scene failed to decode"
    class_of = {name: c for c, name in enumerate(data.classes)}
    db_labels = np.array([class_of[x] for x in table["label"].to_pylist()])
    ranked = np.arange(table.num_rows).reshape(len(test_idx), len(train_idx))
    map_all = metrics.mean_average_precision(data.labels[test_idx], db_labels, ranked)

    print(f"machine: {machine()}; model {args.model} (K={checkpoint.net_config.bits}, split "
          f"seed {seed}); {len(test_idx)} test queries against {len(train_idx)} indexed scenes")
    print(f"{'evaluation (cached features)':<36} mAP@all {eval_scores['map@all']:.4f}")
    print(f"{'SceneIndex.query over the index':<36} mAP@all {map_all:.4f} (built in "
          f"{args.precision}, queried in {query_precision})")


if __name__ == "__main__":
    main()
