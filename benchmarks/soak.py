"""Soak: query one ``SceneIndex`` (reload="auto") from several threads while a build runs.

    python benchmarks/soak.py [--data DIR] [--model FILE] [--threads 4] [--top 10] [--keep]

Starts ``dahash-index build`` of ``--data`` (default UC Merced: 21 shards, 2,100 scenes) as a
subprocess, opens the index once with ``SceneIndex.open(path, reload="auto")`` as soon as its
manifest exists, and has ``--threads`` threads call ``query_codes`` on it for the build's whole
length (plus ``--tail`` seconds, so that the last commit is seen). Each call asks for random
packed codes and for codes taken from the rows of the state the thread saw. Every answer is
checked: each hit has metadata (a non-null url), distances lie in [0, K] in rank order, row ids
are unique per query, a query gets min(top, rows) hits, and a code taken from the index finds
its own row at distance 0 (unless ``top`` other rows tie at 0). Prints the queries answered,
the errors (goal 0), the largest row count and the generations seen; exits 1 on any error, a
failed build, or a largest row count seen that is not the build's final one. Writes
benchmarks/results/soak.json (--out).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import faiss
import numpy as np
from _common import REPO, UCMERCED, headline, machine, results_header, write_results

from dahash_index.query.scene_index import SceneIndex
from dahash_index.store import IndexReader


def cli_command() -> list[str]:
    """The ``dahash-index`` console script beside this interpreter (as tests/conftest.py)."""
    script = Path(sys.executable).parent / "dahash-index"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "dahash_index.cli"]


def check(table, owners: np.ndarray, bits: int, top: int, rows_before: int) -> list[str]:
    """The problems of one ``query_codes`` answer (owners[q]: the row code q came from, or -1)."""
    problems = []
    if table["error"].null_count != len(table):
        problems.append(f"error rows in a code query: {table['error'].drop_null()[0]}")
    query = table["query"].to_numpy()
    distance = table["distance"].to_numpy(zero_copy_only=False)
    row_id = table["row_id"].to_numpy(zero_copy_only=False)
    if table["url"].null_count:
        problems.append(f"{table['url'].null_count} of {len(table)} hits have no url")
    for q, owner in enumerate(owners):
        d, ids = distance[query == q], row_id[query == q]
        if not min(top, rows_before) <= len(ids) <= top:
            problems.append(f"{len(ids)} hits for top={top} with >= {rows_before} rows")
        if len(d) and (d.min() < 0 or d.max() > bits or np.any(np.diff(d) < 0)):
            problems.append(f"distances out of [0, {bits}] or out of rank order: {d.tolist()}")
        if len(np.unique(ids)) != len(ids):
            problems.append(f"repeated row ids in one query: {ids.tolist()}")
        if owner >= 0 and not np.any((ids == owner) & (d == 0)):
            if not (len(d) == top and d.max() == 0):  # else top other rows tie at distance 0
                problems.append(f"code of row {owner} did not find it at distance 0: "
                                f"{list(zip(ids.tolist(), d.tolist(), strict=True))}")
    return problems


def worker(no: int, index: SceneIndex, args, stop: threading.Event, stats: dict,
           lock: threading.Lock) -> None:
    rng = np.random.default_rng([args.seed, no])
    size = index.bits // 8
    seen_reader, codes, ids = None, None, None
    calls = answered = hits = unresolved = errors = max_rows = 0
    generations, messages = set(), []
    while not stop.is_set():
        reader = index.reader  # the state the real codes come from
        rows_before = reader.row_count
        generations.add(reader.generation)
        try:
            if reader is not seen_reader:
                seen_reader, codes, ids = reader, reader.codes(), reader.row_ids()
            take = rng.choice(len(ids), size=min(args.real, len(ids)), replace=False)
            queries = np.concatenate(
                [rng.integers(0, 256, (args.random, size), dtype=np.uint8), codes[take]])
            owners = np.concatenate([np.full(args.random, -1, np.int64), ids[take]])
            table = index.query_codes(queries, top=args.top)
            problems = check(table, owners, index.bits, args.top, rows_before)
            answered += len(queries)
            hits += len(table)
            unresolved += table["url"].null_count
        except Exception as err:  # a soak counts every failure
            problems = [f"{type(err).__name__}: {err}"]
            with lock:
                stats["traceback"] = stats["traceback"] or traceback.format_exc()
        calls += 1
        max_rows = max(max_rows, index.row_count)
        errors += len(problems)
        if len(messages) < 10:
            messages += [f"thread {no}, call {calls}: {p}" for p in problems[:2]]
        time.sleep(args.pause)
    with lock:
        for key, value in dict(calls=calls, answered=answered, hits=hits,
                               unresolved=unresolved, errors=errors).items():
            stats[key] += value
        stats["max_rows"] = max(stats["max_rows"], max_rows)
        stats["generations"] |= generations
        stats["messages"] += messages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=UCMERCED, help="shards: one per folder")
    parser.add_argument("--model", type=Path, default=REPO / "runs" / "ucmerced" / "model.pt")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the index and build.log go [default: a temp dir]")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--random", type=int, default=4, help="random codes per call")
    parser.add_argument("--real", type=int, default=4, help="codes taken from the index per call")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between calls")
    parser.add_argument("--tail", type=float, default=2.5,
                        help="seconds to go on querying after the build exits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temp workdir")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "soak.json")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)  # cheap searches: leave the cores to the build

    work = args.workdir or Path(tempfile.mkdtemp(prefix="dahash-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    index_dir, log_path = work / "index", work / "build.log"
    if index_dir.exists():
        parser.error(f"{index_dir} exists; the soak needs a fresh build")
    scenes = sum(1 for p in args.data.rglob("*") if p.is_file())
    shards = sum(1 for p in args.data.iterdir() if p.is_dir())
    command = [*cli_command(), "build", "--shards", str(args.data), "--index", str(index_dir),
               "--model", str(args.model)]
    stats = dict(calls=0, answered=0, hits=0, unresolved=0, errors=0, max_rows=0, generations=set(),
                 messages=[], traceback="")
    lock, stop = threading.Lock(), threading.Event()
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        build = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        while not (index_dir / "manifest.json").is_file() and build.poll() is None:
            time.sleep(0.05)
        if not (index_dir / "manifest.json").is_file():
            print(f"build exited {build.returncode} before making {index_dir}:\n"
                  f"{log_path.read_text()[-3000:]}")
            return 1
        index = SceneIndex.open(index_dir, reload="auto")
        threads = [threading.Thread(target=worker, args=(no, index, args, stop, stats, lock))
                   for no in range(args.threads)]
        for thread in threads:
            thread.start()
        code = build.wait()
        build_s = time.perf_counter() - start
        time.sleep(args.tail)
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        stop.set()
        if build.poll() is None:
            build.terminate()
            build.wait()
    final = IndexReader.open(index_dir)

    print(f"machine: {machine()}")
    print(f"build: {' '.join(command)}")
    print(f"  {scenes} files in {shards} shards; exit code {code}, {build_s:.1f}s wall; "
          f"final row count {final.row_count}, generation {final.generation}")
    print(f"  last log line: {log_path.read_text().strip().splitlines()[-1:]}")
    print(f"queries: {args.threads} threads on one SceneIndex (reload='auto'), top {args.top}, "
          f"{args.random} random + {args.real} indexed codes per call, pause {args.pause}s, "
          f"seed {args.seed}, faiss threads 1")
    print(f"queries answered: {stats['answered']} codes in {stats['calls']} calls "
          f"({stats['hits']} hits)")
    print(f"errors: {stats['errors']} (goal 0)")
    for message in stats["messages"][:5]:
        print(f"  {message[:400]}")
    if stats["traceback"]:
        print(f"first exception:\n{stats['traceback']}")
    print(f"largest row count seen: {stats['max_rows']} (final {final.row_count})")
    print(f"generations seen: {len(stats['generations'])} "
          f"({min(stats['generations'], default=None)}..{max(stats['generations'], default=None)}"
          f" of 0..{final.generation})")
    resolved = stats["hits"] > 0 and stats["unresolved"] == 0
    print(f"every hit resolved to metadata: {'yes' if resolved else 'no'} "
          f"({stats['hits'] - stats['unresolved']} of {stats['hits']} hits have a url)")
    if args.keep or args.workdir:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    ok = stats["errors"] == 0 and code == 0 and stats["max_rows"] == final.row_count and resolved
    write_results(args.out, results_header(sys.argv) | {"seed": args.seed, "headline": [
        headline("queries answered during the build", [stats["answered"]], "codes", "reported"),
        headline("errors", [stats["errors"]], "", "0", stats["errors"] == 0),
        headline("hits without metadata", [stats["unresolved"]], "", "0", resolved),
        headline("largest row count seen", [stats["max_rows"]], "rows",
                 f"the final {final.row_count}", stats["max_rows"] == final.row_count),
        headline("generations seen", [len(stats["generations"])], "",
                 f"of {final.generation + 1}"),
        headline("build wall time", [build_s], "s", f"exit code 0 (was {code})", code == 0),
    ]})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
