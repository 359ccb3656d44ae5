"""Recall@50 and time per query of a binary IVF against flat search, over nprobe.

    python benchmarks/ivf_recall.py [--rows 1000000] [--nlist N ...] [--queries 200]
                                    [--centres 3000] [--flip 0.08] [--threads 2] [--seed 0]

Codes are structured like a trained model's, not uniform noise: ``--centres`` random 64-bit
class centres, and each code is a centre with every bit flipped with probability ``--flip``
(0.08: intra-class Hamming distances Binomial(64, 0.08), mostly 0-12, as a trained model gives
on UC Merced; inter-class distances about 32 +- 4). Queries are fresh draws of the same kind.

Per nlist: the training time (on at most ``--train-per-list`` codes per list), the time to add
the codes, then per nprobe: recall@50 (the share of the flat top-50 row ids that the IVF also
returns), tie-aware recall@50 (the share of the IVF's 50 hits at a distance no larger than flat's
50th: a hit tied with the 50th is as good as the row it displaced), and ms per query with one
query per call (what a user waits for) beside flat's. The defaults in ``indexes/ivf.py`` cite
this script's output.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import machine

TOP = 50


def structured_codes(
    rng: np.random.Generator, centres: np.ndarray, n: int, flip: float
) -> np.ndarray:
    """n codes uint8 (n, 8): a random centre each, every bit flipped with probability flip."""
    out = np.empty((n, centres.shape[1]), dtype=np.uint8)
    chunk = 1 << 20
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        which = rng.integers(0, len(centres), m)
        noise = np.packbits(rng.random((m, 8 * centres.shape[1]), dtype=np.float32) < flip, axis=1)
        out[start:start + m] = centres[which] ^ noise
    return out


def per_query_ms(search, queries: np.ndarray) -> float:
    """Mean wall time of one-query calls, in ms."""
    start = time.perf_counter()
    for q in queries:
        search(q[None])
    return 1000 * (time.perf_counter() - start) / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--nlist", type=int, nargs="*", help="default: default_nlist(rows)")
    parser.add_argument("--nprobe", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--centres", type=int, default=3000)
    parser.add_argument("--flip", type=float, default=0.08)
    parser.add_argument("--train-per-list", type=int, default=None,
                        help="default: indexes.ivf.TRAIN_POINTS_PER_LIST")
    parser.add_argument("--threads", type=int, default=1,
                        help="FAISS threads for searching (one query uses one core anyway)")
    parser.add_argument("--train-threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from dahash_index import runtime

    runtime.configure_threads()  # passive OpenMP waits, before FAISS loads

    import faiss

    from dahash_index.indexes import (
        add_codes,
        default_nlist,
        faiss_threads,
        hamming_topk,
        new_index,
    )
    from dahash_index.indexes.ivf import TRAIN_POINTS_PER_LIST, default_nprobe, train_ivf

    faiss_threads(args.threads)
    per_list = args.train_per_list or TRAIN_POINTS_PER_LIST
    rng = np.random.default_rng(args.seed)
    centres = rng.integers(0, 256, (args.centres, 8), dtype=np.uint8)
    codes = structured_codes(rng, centres, args.rows, args.flip)
    queries = structured_codes(rng, centres, args.queries, args.flip)
    print(f"# {machine()}; faiss {faiss.__version__}, {args.threads} search thread(s), "
          f"{args.train_threads} training thread(s)")
    print(f"# rows {args.rows:,}, centres {args.centres}, flip {args.flip}, "
          f"queries {args.queries}, seed {args.seed}, top {TOP}")

    flat = faiss.IndexBinaryFlat(64)  # ids = positions, ascending: ties by id for free
    flat.add(codes)
    want_d, want_i = flat.search(queries, TOP)
    flat_ms = per_query_ms(lambda q: flat.search(q, TOP), queries)
    print(f"# flat: {flat_ms:.2f} ms/query")

    for nlist in args.nlist or [default_nlist(args.rows)]:
        ivf = new_index(64, "ivf", nlist)
        with faiss_threads(args.train_threads):
            start = time.perf_counter()
            train_ivf(ivf, codes, seed=args.seed, max_per_list=per_list)
            train_s = time.perf_counter() - start
            start = time.perf_counter()
            for lo in range(0, len(codes), 1 << 20):
                chunk = codes[lo:lo + (1 << 20)]
                add_codes(ivf, chunk, np.arange(lo, lo + len(chunk)))
            add_s = time.perf_counter() - start
        print(f"\n## nlist {nlist}: trained in {train_s:.1f} s on "
              f"{min(len(codes), per_list * nlist):,} codes ({per_list}/list), "
              f"added in {add_s:.1f} s; default_nprobe {default_nprobe(nlist)}")
        print(f"{'nprobe':>7} {'recall@50':>10} {'tie-aware':>10} {'ms/query':>9} "
              f"{'flat ms':>8} {'ratio':>6}")
        for nprobe in args.nprobe:
            if nprobe > nlist:
                continue
            got_d, got_i = hamming_topk(ivf, queries, TOP, nprobe=nprobe)
            recall = np.mean([len(np.intersect1d(g, w)) / TOP
                              for g, w in zip(got_i, want_i, strict=True)])
            # A hit no farther than flat's 50th is as good as any true top-50 row.
            tie_aware = np.mean((got_i >= 0) & (got_d <= want_d[:, -1:]), axis=1).mean()
            ms = per_query_ms(lambda q, p=nprobe, i=ivf: hamming_topk(i, q, TOP, nprobe=p), queries)
            print(f"{nprobe:>7} {recall:>10.3f} {tie_aware:>10.3f} {ms:>9.3f} "
                  f"{flat_ms:>8.2f} {ms / flat_ms:>6.3f}")


if __name__ == "__main__":
    main()
