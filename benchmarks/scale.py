"""The index at scale: 100 M class-structured 64-bit codes with metadata, built and searched.

    python benchmarks/scale.py [--rows 100000000] [--keep DIR] [--seed 0] [--threads 2]
                               [--nlist N] [--ivf-train-sample N]

Codes. The trained UC Merced model (``--model``, default runs/ucmerced/model.pt) codes the
2,100 UC Merced scenes (features from the project's cache); each class's centre is its bitwise
majority code, and the histogram of every code's Hamming distance to its class centre is
measured. Synthetic codes are ``--classes`` random 64-bit centres, each code a centre with d
bits flipped, d drawn from that histogram (the bits: a random d-bit mask, rotated by a random
amount). The real and synthetic intra-class (pairs of one class) and inter-class distance
means are printed side by side. Queries are drawn the same way. Seed ``--seed``.

Metadata. Each row gets a 60-character URL, width/height/bands/dtype, its class label, a CRS
of a few UTM zones, bounds in the CRS and in WGS84, pixel size and an acquisition date; one
part of ``--part-rows`` (1 M) rows per shard, committed through ``IndexWriter.commit_shard``
(rows as a pyarrow Table built from numpy). Then ``IndexWriter.finalize()``.

Figures, each beside its target (``--rows`` at 100 M; with less, see how they grow):
  build      commits + finalize in a child process: time; peak RSS <= 1.5 x code bytes + 1 GB
  flat       one query, top 50: <= 150 ms (best and median), with re-ranking (``near``, the
             default: the flat store's rows carry random 64-d unit re-rank vectors) and
             without; a batch of 1,000 queries
  IVF        recall@50 against flat >= 0.95 at <= 1/10 of flat's time per query, at the
             default nprobe; recall and time over nprobe. The IVF index is a second store of
             the same codes (lean metadata: its figures are the search's)
  open       SceneIndex.open(path, mmap=True) + the first query (re-ranked), in a fresh
             process: <= 5 s; that process's RSS
  metadata   reader.metadata(ids) of 50 hits (from the shards' lookup files): <= 50 ms, cold
             (a fresh reader) and warm (a reader that has answered other queries)

``--keep DIR`` keeps the generated stores in DIR and reuses them on the next run with the
same parameters. The figures are written to benchmarks/results/scale-<rows>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, UCMERCED, evict, machine, results_header, write_results
from synthetic_archive import (
    BITS,
    CodeModel,
    as_words,
    distance_stats,
    majority_centres,
    metadata_rows,
    ucmerced_codes,
    uniform_words,
    unit_vectors,
)

from dahash_index import runtime

GB = 1 << 30
QUERIES = 1000  # the default of --queries
TOP = 50
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128)
def child_build(args: argparse.Namespace) -> None:
    """Commit every shard of one store and finalize it; print a JSON line of timings."""
    from dahash_index.model.checkpoint import load_checkpoint
    from dahash_index.store import IndexWriter, parts

    params = json.loads(Path(args.params).read_text())
    if params["row_group_rows"] is not None:  # what-if: parts in smaller row groups
        parts.ROW_GROUP_ROWS = params["row_group_rows"]
    model = CodeModel(np.array(params["hist"]), params["classes"], params["seed"],
                      noise=params["noise"])
    identity = load_checkpoint(params["model"]).identity
    lean = params["lean"]
    kind = params["kind"]
    start = time.perf_counter()
    generate = 0.0
    writer = IndexWriter.open(args.index, identity, kind=kind,
                              nlist=params["nlist"] if kind == "ivf" else None)
    first = 0
    for part, n in enumerate(part_sizes(params["rows"], params["part_rows"])):
        t = time.perf_counter()
        codes, cls = model.draw(n, part)
        rows = metadata_rows(part, first, cls, params["seed"], lean)
        vectors = None
        if params.get("vectors"):
            vectors = unit_vectors(n, params["vectors"],
                                   np.random.default_rng([params["seed"], part, 7]))
        generate += time.perf_counter() - t
        writer.commit_shard(f"p{part:04d}", f"s3://eo-archive/scenes/p{part:04d}", codes, rows,
                            [], fingerprint=f"synthetic-{params['seed']}-{part}",
                            vectors=vectors)
        first += n
    committed = time.perf_counter()
    writer.finalize(ivf_train_sample=params["train_sample"] if kind == "ivf" else None)
    writer.close()
    done = time.perf_counter()
    print(json.dumps({"commit_s": committed - start, "generate_s": generate,
                      "finalize_s": done - committed, "total_s": done - start,
                      "vmhwm_kb": vm("VmHWM")}))


def child_open(args: argparse.Namespace) -> None:
    """Time SceneIndex.open(mmap=True) + one query in this fresh process; print JSON."""
    t0 = time.perf_counter()
    from dahash_index.query.scene_index import SceneIndex

    t1 = time.perf_counter()
    index = SceneIndex.open(args.index, mmap=True)
    t2 = time.perf_counter()
    query = np.frombuffer(bytes.fromhex(args.query), np.uint8).reshape(1, 8)
    vector = np.frombuffer(bytes.fromhex(args.vector), np.float16).reshape(1, -1)
    table = index.query_codes(query, top=TOP, vectors=vector)
    t3 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "query_s": t3 - t2,
                      "hits": table.num_rows,
                      "vmrss_kb": vm("VmRSS"), "vmhwm_kb": vm("VmHWM")}))


def vm(field: str) -> int:
    """This process's /proc/self/status figure (kB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def run_child(*argv: str) -> tuple[dict, int]:
    """Run this script as a child; -> (its JSON line, the peak RSS in kB of the largest child
    so far, from getrusage: the child's own when it is the largest)."""
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True,
                          cwd=REPO, env=os.environ | {"OMP_WAIT_POLICY": "PASSIVE"})
    if done.returncode:
        raise SystemExit(f"child {argv[:2]} failed:\n{done.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return json.loads(done.stdout.strip().splitlines()[-1]), peak


def part_sizes(rows: int, part_rows: int) -> list[int]:
    return [min(part_rows, rows - s) for s in range(0, rows, part_rows)]


# --- measuring ------------------------------------------------------------------------------


def timed(fn, repeat: int) -> tuple[float, float, object]:
    """(best s, median s, last result) of ``repeat`` calls."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), float(np.median(times)), out


def recall(flat: tuple[np.ndarray, np.ndarray], approx: tuple[np.ndarray, np.ndarray]
           ) -> tuple[float, float]:
    """Mean recall@k of ``approx`` against ``flat`` (each (distances, ids) (q, k)): by id, and
    tie-aware (the multiset of distances found: rows tied at flat's k-th distance are equally
    right answers)."""
    (fd, fi), (ad, ai) = flat, approx
    k = fi.shape[1]
    by_id = np.mean([len(np.intersect1d(a[a >= 0], f)) / k for a, f in zip(ai, fi, strict=True)])
    tie = []
    for a, f in zip(ad, fd, strict=True):
        ca = np.bincount(a[a >= 0], minlength=BITS + 1)
        cf = np.bincount(f, minlength=BITS + 1)
        tie.append(np.minimum(ca, cf).sum() / k)
    return float(by_id), float(np.mean(tie))


def ensure_store(path: Path, params: dict) -> tuple[dict | None, int]:
    """Build the store at ``path`` in a child unless ``path`` holds one of ``params``;
    -> (the child's figures or None when reused, its peak RSS kB)."""
    stamp = path / "scale-params.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return None, -1
    if path.exists():
        import shutil

        shutil.rmtree(path)
    pfile = path.parent / f"{path.name}-params.json"
    pfile.write_text(json.dumps(params))
    figures, peak = run_child("--child", "build", "--index", str(path), "--params", str(pfile))
    stamp.write_text(json.dumps(params))
    return figures, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000_000)
    parser.add_argument("--part-rows", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default: project's)")
    parser.add_argument("--ivf-train-sample", type=int, default=None,
                        help="codes the IVF is trained on (default: finalize's)")
    parser.add_argument("--model", type=Path, default=REPO / "runs" / "ucmerced" / "model.pt")
    parser.add_argument("--data", type=Path, default=UCMERCED)
    parser.add_argument("--keep", type=Path, default=None, help="keep/reuse the stores here")
    parser.add_argument("--queries", type=int, default=QUERIES)
    parser.add_argument("--row-group-rows", type=int, default=None,
                        help="write parts in row groups of this many rows (default: the store's)")
    parser.add_argument("--noise", type=float, default=0.1,
                        help="fraction of the archive's codes that are uniform random codes")
    parser.add_argument("--skip-ivf", action="store_true")
    parser.add_argument("--child", choices=["build", "open"], help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--query", help=argparse.SUPPRESS)
    parser.add_argument("--vector", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.queries < args.repeat + 3:  # queries 2 .. repeat + 1 and the last give the hits
        parser.error(f"--queries must be at least --repeat + 3 ({args.repeat + 3})")
    runtime.configure_threads(args.threads)
    if args.child == "build":
        return child_build(args)
    if args.child == "open":
        return child_open(args)

    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        run(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(dir=REPO.parent) as tmp:
            run(args, Path(tmp))


def run(args: argparse.Namespace, root: Path) -> None:
    from dahash_index import indexes
    from dahash_index.model.orientations import DEFAULT_QUERY_ORIENTATIONS
    from dahash_index.model.rerank import DEFAULT_RERANK, DEFAULT_SHORTLIST
    from dahash_index.model.rerank import DIM as RERANK_DIM
    from dahash_index.query.scene_index import SceneIndex
    from dahash_index.store import IndexReader

    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    # The codes' distribution, from the trained model on UC Merced.
    real_codes, real_labels = ucmerced_codes(args.model, args.data)
    real_words = as_words(real_codes)
    real = distance_stats(real_words, real_labels, majority_centres(real_words, real_labels))
    held = max(1, args.classes // 10)
    model = CodeModel(real["hist"], args.classes, args.seed, held_out=held, noise=args.noise)
    sample, sample_cls = model.draw(100_000, 10_000, noise=False)
    synth = distance_stats(as_words(sample), sample_cls, model.centres[:args.classes])
    queries, _ = model.draw(args.queries, 20_000, noise=False)  # the archive's classes
    rng = np.random.default_rng([args.seed, 3])
    query_vectors = unit_vectors(args.queries, RERANK_DIM, np.random.default_rng([args.seed, 4]))
    query_sets = {
        "in distribution": queries,
        "noise codes": uniform_words(args.queries, rng).view(np.uint8).reshape(-1, 8),
        f"held-out classes ({held})": model.draw(args.queries, 30_000, held_out=True)[0],
    }

    from dahash_index.model.backbones import BackboneSpec
    from dahash_index.model.checkpoint import save_checkpoint
    from dahash_index.model.network import dahash_net

    ckpt = root / "model.pt"
    if not ckpt.is_file():
        spec = BackboneSpec("tf2015", "0" * 64, (0.5,) * 3, (0.5,) * 3)
        save_checkpoint(ckpt, dahash_net(BITS), spec, [], 0, {})
    base = {"rows": args.rows, "part_rows": args.part_rows, "classes": args.classes,
            "seed": args.seed, "hist": real["hist"].tolist(), "model": str(ckpt),
            "nlist": args.nlist, "train_sample": args.ivf_train_sample,
            "row_group_rows": args.row_group_rows, "noise": args.noise}
    flat_dir, ivf_dir = root / f"flat-{args.rows}", root / f"ivf-{args.rows}"
    flat_build, _ = ensure_store(flat_dir, base | {"kind": "flat", "lean": False,
                                                   "vectors": RERANK_DIM})
    ivf_build = None
    if not args.skip_ivf:
        ivf_build, _ = ensure_store(ivf_dir, base | {"kind": "ivf", "lean": True})

    code_bytes = args.rows * BITS // 8
    rss_goal = 1.5 * code_bytes + GB
    from dahash_index.store import parts

    say(f"# benchmarks/scale.py {' '.join(sys.argv[1:])}")
    say(f"rows {args.rows}, seed {args.seed}, {args.classes} classes, parts of {args.part_rows} "
        f"rows in row groups of {args.row_group_rows or parts.ROW_GROUP_ROWS}, FAISS threads "
        f"{args.threads}")
    say(f"machine: {machine()}, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / GB:.0f}"
        " GB RAM")
    say(f"codes: {args.classes} random centres, bits flipped per the trained model's code-to-"
        f"centre histogram on UC Merced's test scenes ({len(real_codes)} scenes, "
        f"{len(np.unique(real_labels))} classes; centre = bitwise majority); "
        f"{args.noise:.0%} of the codes uniform random; {held} more classes held out of the "
        "archive for queries")
    say(f"{'Hamming distance means':<34}{'UC Merced (real)':>18}{'synthetic':>12}")
    for key, what in (("to_centre", "code to its class centre"), ("intra", "pairs within a class"),
                      ("inter", "pairs of two classes")):
        say(f"  {what:<32}{real[key]:>18.2f}{synth[key]:>12.2f}")
    say()
    say(f"{'figure':<52}{'measured':>16}   target")

    figures: list[dict] = []
    ivf_table: list[dict] = []

    def row(what: str, value: str, target: str = "") -> None:
        say(f"{what:<52}{value:>16}   {target}")
        figures.append({"figure": what, "measured": value, "target": target})

    if flat_build is not None:
        row("build flat: commit 1M-row parts (incl. generation)", f"{flat_build['commit_s']:.1f} s")
        row("  of which generating codes + metadata", f"{flat_build['generate_s']:.1f} s")
        row("build flat: finalize", f"{flat_build['finalize_s']:.1f} s")
        peak = flat_build["vmhwm_kb"] * 1024
        row("build flat: peak RSS (child's VmHWM)", f"{peak / GB:.2f} GB",
            f"<= {rss_goal / GB:.2f} GB (1.5 x {code_bytes / GB:.2f} GB codes + 1 GB) "
            f"{'met' if peak <= rss_goal else 'NOT met'}")
    else:
        row("build flat", "reused (--keep)")
    if ivf_build is not None:
        row("build IVF (lean metadata): commit", f"{ivf_build['commit_s']:.1f} s")
        row("build IVF: finalize (trains the IVF)", f"{ivf_build['finalize_s']:.1f} s")
        row("build IVF: peak RSS", f"{ivf_build['vmhwm_kb'] / 2**20:.2f} GB")

    disk = sum(f.stat().st_size for f in flat_dir.rglob("*") if f.is_file())
    row("flat store on disk", f"{disk / GB:.2f} GB")

    # Open in a fresh process: SceneIndex.open(mmap=True) and its first query, with the
    # store's files evicted from the page cache first (cold), then again (warm).
    for case in ("cold", "warm"):
        if case == "cold":
            evict(flat_dir)
        opened, _ = run_child("--child", "open", "--index", str(flat_dir),
                              "--query", queries[0].tobytes().hex(),
                              "--vector", query_vectors[0].tobytes().hex())
        total = opened["open_s"] + opened["query_s"]
        row(f"open(mmap=True) + first query ({DEFAULT_RERANK}), fresh process, {case}",
            f"{total:.2f} s",
            (f"<= 5 s {'met' if total <= 5 else 'NOT met'} " if case == "cold" else "")
            + f"(open {opened['open_s']:.2f} s, query {opened['query_s']:.2f} s, "
            f"{opened['hits']} hits; imports {opened['import_s']:.1f} s more)")
    row("  that process's RSS after the query / peak",
        f"{opened['vmrss_kb'] / 2**20:.2f}/{opened['vmhwm_kb'] / 2**20:.2f} GB")

    # Flat search.
    reader = IndexReader.open(flat_dir, mmap=True)
    flat = reader.faiss_index()
    best, median, _ = timed(lambda: indexes.hamming_topk(flat, queries[:1], TOP), args.repeat)
    row("flat: one query, top 50 (hamming_topk), warm", f"{best * 1e3:.1f}/{median * 1e3:.1f} ms",
        f"<= 150 ms (best/median of {args.repeat}) {'met' if median <= 0.150 else 'NOT met'}")
    api = SceneIndex.open(flat_dir, mmap=True)
    best, median, _ = timed(lambda: api.query_codes(queries[1:2], top=TOP), args.repeat)
    row("flat: one query through SceneIndex.query_codes, warm",
        f"{best * 1e3:.1f}/{median * 1e3:.1f} ms",
        f"(search + metadata of the 50 hits + table) <= 150 ms "
        f"{'met' if median <= 0.150 else 'NOT met'}")
    best, median, _ = timed(lambda: api.query_codes(queries[1:2], top=TOP,
                                                    vectors=query_vectors[1:2]), args.repeat)
    row(f"  the same re-ranked ({DEFAULT_RERANK}, the default), warm",
        f"{best * 1e3:.1f}/{median * 1e3:.1f} ms",
        f"(+ the vectors of the {DEFAULT_SHORTLIST}-row shortlist) <= 150 ms "
        f"{'met' if median <= 0.150 else 'NOT met'}")
    turns = DEFAULT_QUERY_ORIENTATIONS
    best, median, _ = timed(lambda: api.query_codes(
        queries[1:1 + turns], top=TOP, owners=np.zeros(turns, np.int64),
        vectors=query_vectors[1:1 + turns]), args.repeat)
    row(f"  an image query: {turns} codes (its rotations, query's default), re-ranked, warm",
        f"{best * 1e3:.1f}/{median * 1e3:.1f} ms", "reported (the backbone passes not counted)")
    batch_s, _, exact = timed(lambda: indexes.hamming_topk(flat, queries, TOP), 1)
    flat_per_query = batch_s / len(queries)
    row(f"flat: batch of {len(queries)} queries, top 50", f"{batch_s:.2f} s",
        f"({flat_per_query * 1e3:.2f} ms a query)")

    # Metadata of 50 hits.
    hits = [exact[1][i] for i in range(2, 2 + args.repeat)]
    cold = []
    for ids in hits:
        evict(flat_dir / "lookup")  # and the files a fresh reader opens anew
        fresh = IndexReader.open(flat_dir, mmap=True)
        t = time.perf_counter()
        fresh.metadata(ids)
        cold.append(time.perf_counter() - t)
    warm_reader = IndexReader.open(flat_dir, mmap=True)
    warm_reader.metadata(exact[1][-1])  # opens the files of other hits, as a serving reader has
    warm = []
    for ids in hits:
        t = time.perf_counter()
        warm_reader.metadata(ids)
        warm.append(time.perf_counter() - t)
    again, _, _ = timed(lambda: warm_reader.metadata(hits[-1]), args.repeat)
    for what, times in (("cold: a fresh reader, lookup files evicted", cold),
                        ("warm: a reader in use, new hits", warm)):
        t = float(np.median(times))
        row(f"metadata of 50 hits, {what}", f"{t * 1e3:.1f} ms",
            f"<= 50 ms (median of {len(times)}) {'met' if t <= 0.050 else 'NOT met'}")
    row("metadata of 50 hits, the same hits again", f"{again * 1e3:.2f} ms")

    if not args.skip_ivf:
        ivf_api = SceneIndex.open(ivf_dir, mmap=True)
        ivf_index = ivf_api.reader.faiss_index()
        nlist = indexes.nlist_of(ivf_index)
        default = ivf_api.nprobe
        if default is None and nlist is not None:
            default = indexes.default_nprobe(nlist)
        exacts = {name: exact if name == "in distribution"
                  else indexes.hamming_topk(flat, codes, TOP)
                  for name, codes in query_sets.items()}
        say()
        say(f"IVF: nlist {nlist}, default nprobe {default}; tie-aware recall@50 against flat, "
            f"{len(queries)} queries of each kind; time per query of the in-distribution batch")
        say(f"{'nprobe':>8}" + "".join(f"{name:>28}" for name in query_sets)
            + f"{'ms/query':>10}{'x flat':>8}")
        probes = sorted({*NPROBES, default} - {None}) if nlist else []
        enough = None
        for nprobe in probes:
            ties, seconds = [], 0.0
            for name, codes in query_sets.items():
                took, _, found = timed(
                    lambda p=nprobe, c=codes: indexes.hamming_topk(ivf_index, c, TOP, p), 1)
                seconds = took if name == "in distribution" else seconds
                ties.append(recall(exacts[name], found)[1])
            ok = min(ties) >= 0.95 and seconds <= batch_s / 10
            enough = nprobe if ok and enough is None else enough
            mark = "  <- default" if nprobe == default else ""
            ivf_table.append({"nprobe": nprobe, "recall_ties": dict(zip(query_sets, ties,
                                                                          strict=True)),
                              "ms_per_query": seconds / len(queries) * 1e3,
                              "x_flat": seconds / batch_s})
            say(f"{nprobe:>8}" + "".join(f"{t:>28.3f}" for t in ties)
                + f"{seconds / len(queries) * 1e3:>10.3f}{seconds / batch_s:>8.3f}{mark}")
            if nprobe == default:
                row("IVF at the default nprobe: worst recall / time vs flat",
                    f"{min(ties):.3f} / {seconds / batch_s:.3f}",
                    f">= 0.95 for every kind at <= 0.1 x flat {'met' if ok else 'NOT met'}")
        row("IVF: smallest nprobe meeting both for every kind", str(enough))

    write_results(REPO / "benchmarks" / "results" / f"scale-{args.rows}.json",
                  results_header(sys.argv) | {"seed": args.seed, "rows": args.rows,
                                              "figures": figures, "ivf": ivf_table,
                                              "report": lines})


if __name__ == "__main__":
    main()
