"""Lookup files: time to read the rows of hits, and bytes a row, over batch size and codec.

    python benchmarks/lookup_batch.py [--parts 10] [--part-rows 1000000] [--seed 0]

Writes ``--parts`` shards of the scale benchmark's synthetic metadata (60-character URLs, CRS,
bounds, labels, dates: ``synthetic_archive.metadata_rows``) as lookup files of each batch size
and codec (``store.lookup.write_lookup``), and as the store's Parquet parts (row groups of
``parts.ROW_GROUP_ROWS``), into a temporary directory. Random hits spread over the parts are
read through ``store.lookup.LookupFile.take``, ``--repeat`` times with fresh hits:

- 50 hits "cold": the files evicted from the page cache and opened anew (a fresh reader);
- 50 hits "open": the files already open (a reader that has answered before);
- 50,000 hits "open": the hits of a batch of 1,000 queries, top 50.

Parquet: the row groups of the 50 hits (footers cached), for comparison. The store's choice is
``lookup.LOOKUP_BATCH_ROWS``, uncompressed. Figures are medians; written to --out with the
command, commit, date, machine and every run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _common import evict, headline, machine, results_header, write_results
from synthetic_archive import metadata_rows

from dahash_index.files import atomic_write
from dahash_index.store import METADATA_SCHEMA, parts
from dahash_index.store.lookup import LOOKUP_BATCH_ROWS, LookupFile, write_lookup

CONFIGS = [("lz4", 256), ("lz4", 1024), ("zstd", 256), (None, 1024), (None, LOOKUP_BATCH_ROWS)]


def read_lookups(files: list[LookupFile], hits: np.ndarray) -> None:
    """The rows of ``hits`` ((m, 2) part, row) as one table, as IndexReader gathers them."""
    order = np.lexsort((hits[:, 1], hits[:, 0]))
    part, row = hits[order, 0], hits[order, 1]
    bounds = np.searchsorted(part, np.arange(len(files) + 1))
    spans = zip(bounds[:-1], bounds[1:], strict=True)
    pieces = [files[p].take(row[lo:hi]) for p, (lo, hi) in enumerate(spans) if hi > lo]
    pa.concat_tables(pieces).combine_chunks()


def read_parquet(files: list[Path], hits: np.ndarray, opened: dict) -> None:
    """The rows of ``hits`` from the Parquet parts' row groups (footers cached in ``opened``)."""
    pieces = []
    for part, row in hits.tolist():
        meta = opened.get(part)
        if meta is None:
            meta = opened[part] = pq.read_metadata(files[part])
        group = row // parts.ROW_GROUP_ROWS
        table = pq.ParquetFile(files[part], metadata=meta).read_row_groups(
            [group], columns=METADATA_SCHEMA.names, use_threads=False)
        pieces.append(table.slice(row - group * parts.ROW_GROUP_ROWS, 1))
    pa.concat_tables(pieces).combine_chunks()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=10)
    parser.add_argument("--part-rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" /
                        "lookup-batch.json")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"machine: {machine()}; hits over {args.parts} parts of {args.part_rows} rows; "
          f"median of {args.repeat}")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = [f"{codec or 'none'}-{batch}" for codec, batch in CONFIGS]
        files: dict[str, list[Path]] = {name: [] for name in [*names, "parquet"]}
        for p in range(args.parts):
            cls = rng.integers(0, 4096, args.part_rows)
            table = metadata_rows(p, p * args.part_rows, cls, args.seed, lean=False)
            table = pa.table({f.name: table[f.name] if f.name in table.column_names
                              else pa.nulls(len(table), f.type) for f in METADATA_SCHEMA}
                             ).cast(METADATA_SCHEMA)
            for name, (codec, batch) in zip(names, CONFIGS, strict=True):
                files[name].append(root / f"{p}.{name}.arrow")
                atomic_write(files[name][-1],
                             lambda f, t=table, c=codec, b=batch: write_lookup(t, f, b, c))
            files["parquet"].append(root / f"{p}.parquet")
            with open(files["parquet"][-1], "wb") as f:
                parts.write_table(table, f)

        def draw(n: int) -> np.ndarray:
            return np.stack([rng.integers(0, args.parts, n), rng.integers(0, args.part_rows, n)],
                            axis=1)

        def opened(name: str) -> list[LookupFile]:
            return [LookupFile(root, f.name, args.part_rows) for f in files[name]]

        rows = args.parts * args.part_rows
        print(f"{'file':<22}{'bytes/row':>10}{'50 cold ms':>12}{'50 open ms':>12}"
              f"{'50,000 open ms':>16}")
        for name in [*names, "parquet"]:
            size = sum(f.stat().st_size for f in files[name]) / rows
            times: dict[str, list[float]] = {"50 cold": [], "50 open": [], "50000 open": []}
            kept = opened(name) if name != "parquet" else {}
            for _ in range(args.repeat):
                for case, hits in (("50 cold", draw(50)), ("50 open", draw(50)),
                                   ("50000 open", draw(50_000))):
                    if name == "parquet" and case == "50000 open":
                        continue
                    if case.endswith("cold"):
                        for f in files[name]:
                            evict(f)
                    t = time.perf_counter()
                    if name == "parquet":
                        read_parquet(files[name], hits, {} if case.endswith("cold") else kept)
                    else:
                        read_lookups(opened(name) if case.endswith("cold") else kept, hits)
                    times[case].append(time.perf_counter() - t)
            medians = {case: float(np.median(t)) if t else None for case, t in times.items()}
            results[name] = {"bytes_per_row": size, "seconds": times, "median_seconds": medians}
            mark = "  <- the store's" if name == f"none-{LOOKUP_BATCH_ROWS}" else ""
            cells = "".join(f"{'-' if v is None else f'{v * 1e3:.1f}':>{w}}" for v, w in
                            zip(medians.values(), (12, 12, 16), strict=True))
            print(f"{name:<22}{size:>10.1f}{cells}{mark}")
    heads = []
    for name in [*names, "parquet"]:
        store = "the store's: " if name == f"none-{LOOKUP_BATCH_ROWS}" else ""
        for case, runs in results[name]["seconds"].items():
            if runs:
                heads.append(headline(f"{store}{name}, {case.replace('50000', '50,000')} hits",
                                      runs, "ms", scale=1e3))
        heads.append(headline(f"{store}{name}, bytes a row", [results[name]["bytes_per_row"]],
                              "B"))
    write_results(args.out, results_header(sys.argv) | {"headline": heads,
        "seed": args.seed, "parts": args.parts, "part_rows": args.part_rows,
        "repeat": args.repeat, "configs": results})


if __name__ == "__main__":
    main()
