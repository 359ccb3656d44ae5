"""Lookup files: time to read the rows of 50 hits, and bytes a row, over batch size and codec.

    python benchmarks/lookup_batch.py [--parts 40] [--part-rows 1000000] [--seed 0]

Writes ``--parts`` shards of the scale benchmark's synthetic metadata (60-character URLs, CRS,
bounds, labels, dates: ``synthetic_archive.metadata_rows``) as lookup files of each batch size
and codec, and as the store's Parquet parts (row groups of ``parts.ROW_GROUP_ROWS``), into a
temporary directory. Then 50 random hits spread over the parts are read, 7 times with fresh
hits: "cold" opens every file anew (a fresh reader), "open" reuses the opened files (a reader
that has answered before). The store's choice is ``lookup.LOOKUP_BATCH_ROWS`` with LZ4.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from _common import machine
from synthetic_archive import metadata_rows

from dahash_index.store import METADATA_SCHEMA, parts
from dahash_index.store.lookup import LOOKUP_BATCH_ROWS

HITS = 50
CONFIGS = [("lz4", 256), ("lz4", 1024), ("lz4", 4096), ("zstd", 256), (None, 1024)]


def write_ipc(path: Path, table: pa.Table, codec: str | None, batch: int) -> None:
    options = ipc.IpcWriteOptions(compression=codec)
    with ipc.new_file(str(path), METADATA_SCHEMA, options=options) as writer:
        for b in table.to_batches(max_chunksize=batch):
            writer.write_batch(b)


def read_ipc(files: list[Path], hits: list[tuple[int, int]], batch: int, opened: dict) -> None:
    """The hits' rows as one table (as IndexReader joins them)."""
    options = ipc.IpcReadOptions(use_threads=False)
    slices = []
    for part, row in hits:
        reader = opened.get(part)
        if reader is None:
            reader = opened[part] = ipc.open_file(pa.memory_map(str(files[part])),
                                                  options=options)
        slices.append(reader.get_batch(row // batch).slice(row % batch, 1))
    pa.Table.from_batches(slices).combine_chunks()


def read_parquet(files: list[Path], hits: list[tuple[int, int]], opened: dict) -> None:
    """The hits' rows from the Parquet parts' row groups (footers cached in ``opened``)."""
    pieces = []
    for part, row in hits:
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
    parser.add_argument("--parts", type=int, default=40)
    parser.add_argument("--part-rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"# benchmarks/lookup_batch.py --parts {args.parts} --part-rows {args.part_rows} "
          f"--seed {args.seed}")
    print(f"machine: {machine()}; {HITS} hits over {args.parts} parts of {args.part_rows} rows; "
          f"median of {args.repeat}")
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
                write_ipc(files[name][-1], table, codec, batch)
            files["parquet"].append(root / f"{p}.parquet")
            with open(files["parquet"][-1], "wb") as f:
                parts.write_table(table, f)
        rows = args.parts * args.part_rows
        print(f"{'file':<22}{'bytes/row':>10}{'cold ms':>10}{'open ms':>10}")
        for name in [*names, "parquet"]:
            size = sum(f.stat().st_size for f in files[name]) / rows
            cold, warm = [], []
            opened: dict = {}
            every = [(p, 0) for p in range(args.parts)]  # opens every file into ``opened``
            if name == "parquet":
                read_parquet(files[name], every, opened)
            else:
                read_ipc(files[name], every, int(name.split("-")[1]), opened)
            for _ in range(args.repeat):
                hits = sorted((int(rng.integers(args.parts)), int(rng.integers(args.part_rows)))
                              for _ in range(HITS))
                for times, cache in ((cold, {}), (warm, opened)):
                    t = time.perf_counter()
                    if name == "parquet":
                        read_parquet(files[name], hits, cache)
                    else:
                        read_ipc(files[name], hits, int(name.split("-")[1]), cache)
                    times.append(time.perf_counter() - t)
            mark = "  <- the store's" if name == f"lz4-{LOOKUP_BATCH_ROWS}" else ""
            label = "parquet part" if name == "parquet" else name
            print(f"{label:<22}{size:>10.1f}{np.median(cold) * 1e3:>10.1f}"
                  f"{np.median(warm) * 1e3:>10.1f}{mark}")


if __name__ == "__main__":
    main()
