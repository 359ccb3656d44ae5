"""Scene-level checks (the ranking issue): does a scene find itself, and a changed copy of it, at
rank 1 through the index's own query?

Builds an index of UC Merced scenes with MODEL (or opens --index), then queries it with
every scene's own file, and with a copy of every scene changed in one way at a time (rotated
90°, re-encoded as JPEG quality 50, the centre 90 % cropped and resized back, brightness x
1.1), through ``SceneIndex.query`` (what ``dahash-index query`` runs), top 5, each --rerank
mode asked for, and each --orientations (1: the query as it is; 4: also its rotations).
Prints, per check and mode, the share of queries whose original comes back at rank 1 and
within the top 5, and writes them to --out (JSON: command, commit, date, machine).

    python benchmarks/scene_checks.py --model runs/ucmerced/model.pt            # 2,100 scenes
    python benchmarks/scene_checks.py --model m.pt --classes 3 --per-class 10   # a subset
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import UCMERCED, results_header, subset_shards, write_results
from PIL import Image

TRANSFORMS = ("self", "rot90", "jpeg50", "crop90", "bright110")


def changed(path: Path, transform: str, out: Path) -> Path:
    """A copy of the scene ``path`` changed by ``transform``, written under ``out``."""
    image = np.asarray(Image.open(path).convert("RGB"))
    target = out / transform / path.parent.name / (path.stem + ".png")
    target.parent.mkdir(parents=True, exist_ok=True)
    if transform == "rot90":
        image = np.rot90(image)
    elif transform == "crop90":
        h, w = image.shape[:2]
        ch, cw = round(h * 0.9), round(w * 0.9)
        top, left = (h - ch) // 2, (w - cw) // 2
        image = np.asarray(Image.fromarray(image[top:top + ch, left:left + cw])
                           .resize((w, h), Image.BILINEAR))
    elif transform == "bright110":
        image = np.clip(np.rint(image.astype(np.float32) * 1.1), 0, 255).astype(np.uint8)
    elif transform == "jpeg50":
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=50)
        target = target.with_suffix(".jpg")
        target.write_bytes(buffer.getvalue())
        return target
    Image.fromarray(np.ascontiguousarray(image)).save(target)
    return target


def ranks_of_originals(index, encoded, queries: list[str], originals: list[str], rerank: str,
                       content: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """The rank (1..5, or 6 for beyond the top 5) of each query's original scene: (by its
    url, by the first hit whose file has the original's bytes, ``content``: url -> sha256; UC
    Merced holds byte-identical twins). ``SceneIndex.query`` of the queries (files) as their
    codes and vectors (``encode_chips``, done once for every mode) with ``rerank``."""
    from dahash_index.query.scene_index import own_files_first

    ranks = np.full(len(originals), 6)
    same_bytes = ranks.copy()
    table = own_files_first(index.query_codes(encoded.codes, top=5, owners=encoded.owners,
                                              vectors=encoded.vectors, rerank=rerank),
                            queries).to_pylist()
    for row in table:
        q, original = row["query"], originals[row["query"]]
        if row["url"] == original:
            ranks[q] = min(ranks[q], row["rank"])
        if content[row["url"]] == content[original]:
            same_bytes[q] = min(same_bytes[q], row["rank"])
    return ranks, same_bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--index", type=Path, default=None, help="an index of the scenes")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--rerank", default="ties,near,full,none")
    parser.add_argument("--transforms", default=",".join(TRANSFORMS))
    parser.add_argument("--orientations", default="1", help="e.g. 1,4")
    parser.add_argument("--queries-per-class", type=int, default=None,
                        help="query with the first N scenes of each class only (the index "
                             "still holds every scene) [default: all]")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" /
                        "scene-checks.json")
    args = parser.parse_args()

    from dahash_index.build.indexer import build_index
    from dahash_index.query.scene_index import SceneIndex

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = subset_shards(UCMERCED, args.classes, args.per_class, tmp / "shards")
        indexed = sorted(p.resolve() for p in shards.glob("*/*") if p.is_file())
        scenes = [p for p in indexed if args.queries_per_class is None
                  or sorted(q for q in indexed if q.parent == p.parent).index(p)
                  < args.queries_per_class]
        index_dir = args.index
        if index_dir is None:
            index_dir = tmp / "index"
            start = time.perf_counter()
            build_index(str(shards), index_dir, args.model, progress=False)
            print(f"built an index of {len(indexed)} scenes in {time.perf_counter() - start:.0f} s",
                  flush=True)
        index = SceneIndex.open(index_dir)
        originals = [str(shards.resolve() / p.parent.name / p.name) for p in scenes]
        content = {str(shards.resolve() / p.parent.name / p.name):
                   hashlib.sha256(p.read_bytes()).hexdigest() for p in indexed}
        results = {}
        for transform in args.transforms.split(","):
            queries = originals if transform == "self" else [
                str(changed(p, transform, tmp / "changed")) for p in scenes]
            for turns in map(int, args.orientations.split(",")):
                encoded = index.encode_chips(queries, orientations=turns)
                assert not any(encoded.errors), encoded.errors
                for rerank in args.rerank.split(","):
                    ranks, same_bytes = ranks_of_originals(index, encoded, queries, originals,
                                                           rerank, content)
                    found = {"rank1": float(np.mean(ranks == 1)),
                             "top5": float(np.mean(ranks <= 5)),
                             "rank1_same_bytes": float(np.mean(same_bytes == 1)),
                             "queries": len(queries),
                             "missed": [originals[i] for i in np.flatnonzero(ranks > 1)][:20]}
                    key = rerank if turns == 1 else f"{rerank}, orientations {turns}"
                    results.setdefault(transform, {})[key] = found
                    print(f"{transform:<10} rerank {key:<20} rank 1 {found['rank1']:.4f}  "
                          f"(same bytes {found['rank1_same_bytes']:.4f})  "
                          f"top 5 {found['top5']:.4f}  ({len(queries)} scenes)", flush=True)
    record = results_header(sys.argv) | {"model": str(args.model), "indexed": len(indexed),
                                         "scenes": len(scenes), "results": results}
    write_results(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
