"""The ``dahash-index query`` command (registered by ``dahash_index.cli.main``): a local query,
or one through a running service (``--server``), printed the same way."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from dahash_index.cli.options import (
    HOME_HELP,
    default_index,
    exit_now,
    fail,
    mmap_flag,
    storage_flags,
    storage_options,
)
from dahash_index.columns import WGS84_COLUMNS, WINDOW_COLUMNS
from dahash_index.errors import printable
from dahash_index.model.orientations import DEFAULT_QUERY_ORIENTATIONS
from dahash_index.model.rerank import (
    DEFAULT_RERANK,
    DEFAULT_SHORTLIST,
    NEAR_SCORE,
    NEAR_SCORES,
    RERANKS,
)
from dahash_index.query.export import FORMATS


@click.command(short_help="Find the scenes nearest to query images.")
@click.argument("images", nargs=-1, required=True)
@click.option("--index", "index_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help=f"Index directory [default: {HOME_HELP}/index].")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Refuse to answer unless the index was built with this checkpoint.")
@click.option("--top", default=None, type=click.IntRange(min=1),
              help="Hits per query [default: 50].")
@click.option("--radius", type=click.IntRange(min=0), default=None,
              help="Instead of --top: every hit within this Hamming distance.")
@click.option("--nprobe", type=click.IntRange(min=1), default=None,
              help="IVF lists to visit (IVF indexes).")
@click.option("--bands", default=None, metavar="R,G,B", help="Bands of multi-band queries.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per hit (JSON lines): "
              "--format json.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="plain", show_default=True,
              help="plain: a line per hit; json: JSON lines; csv: a header, then a line per "
                   "hit; geojson: a FeatureCollection of the hits' WGS84 footprints with "
                   "their metadata; stac: a STAC ItemCollection (ids of the items built with "
                   "--stac); parquet: GeoParquet 1.1 (needs --out).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the hits to this file instead of standard output.")
@mmap_flag
@click.option("--server", default=None, metavar="URL",
              help="Ask a running `dahash-index serve` at URL instead of opening the index "
                   "(images are read here and uploaded; token from DAHASH_INDEX_TOKEN).")
@click.option("--window", default=None, metavar="COL,ROW,W,H",
              help="Query with this pixel window of each image only (a large TIFF is read "
                   "window by window, by byte ranges when remote).")
@click.option("--group-by", type=click.Choice(["scene"]), default=None,
              help="Keep the best hit (chip) of each scene.")
@click.option("--rerank", type=click.Choice(RERANKS), default=DEFAULT_RERANK,
              show_default=True,
              help="How the re-rank vectors order the hits: none (Hamming distance, then row "
                   "id), ties (inside groups of equal distance), near (rows of the "
                   f"--shortlist scoring {NEAR_SCORE:g} or more ({NEAR_SCORES[64]:g} with "
                   "64-d vectors), such as changed copies of "
                   "the query, first by score; the others as ties), full (the --shortlist "
                   "nearest rows by Hamming distance, ordered by score). An index built "
                   "before re-rank vectors ranks by distance alone.")
@click.option("--shortlist", type=click.IntRange(min=1), default=DEFAULT_SHORTLIST,
              show_default=True,
              help="Rows re-ranked with --rerank full, searched for near rows with near.")
@click.option("--orientations", type=click.Choice(["1", "4", "8"]), default=None,
              help="Search with each image in this many orientations (1: as it is; 4: its "
                   "rotations by 90°; 8: and their mirror images), one backbone pass each: a "
                   "row's distance is its nearest orientation's, its score the best. Overhead "
                   f"scenes have no 'up'. [default: {DEFAULT_QUERY_ORIENTATIONS}; with --server, "
                   "the service's serve --orientations]")
@storage_flags
def query(images, index_dir, model, top, radius, nprobe, bands, as_json, fmt, out, mmap, server,
          window, group_by, rerank, shortlist, orientations, endpoint_url, storage_pairs):
    """Find the scenes most similar to each IMAGE (path or URL): by Hamming distance between
    codes, then by the re-rank score (the cosine of the scenes' re-rank vectors).

    Prints, per query, rank, Hamming distance, re-rank score ("-" when not re-ranked), row
    id, scene URL and metadata; for a chip of a large scene, its pixel window
    (window=COL,ROW,W,H) and WGS84 footprint. When the index was built with --tile, a query
    image larger than its chips is cut the same way and its chips are searched together (a
    hit's distance is that of the nearest chip).
    """
    if top is not None and radius is not None:
        raise click.UsageError("give --top or --radius, not both")
    if as_json and fmt not in ("plain", "json"):
        raise click.UsageError("--json is --format json: give one of them")
    fmt = "json" if as_json else fmt
    if fmt == "parquet" and out is None:
        raise click.UsageError("--format parquet writes a file: give --out FILE")
    if server is not None and (index_dir or model or mmap is not None or orientations):
        raise click.UsageError("--server answers from the service's index: no --index, "
                               "--model, --mmap or --orientations")
    storage = storage_options(storage_pairs, endpoint_url)
    search = {"top": top, "radius": radius, "group_by": group_by, "rerank": rerank,
              "shortlist": shortlist}
    try:
        if server is not None:  # the service parses --bands: nothing heavy imported here
            rows = _query_service(server, images, search, nprobe, bands, storage, window)
        else:
            from dahash_index.scenes.chips import parse_window
            from dahash_index.scenes.scene import parse_bands

            search["orientations"] = int(orientations or DEFAULT_QUERY_ORIENTATIONS)
            rows = _query_index(index_dir or default_index(), model, images, search, nprobe,
                                parse_bands(bands) if bands else None, mmap is not False,
                                storage, parse_window(window) if window else None)
    except (ValueError, OSError, RuntimeError) as err:
        fail(err)
    failed = _print_errors(rows)
    try:
        _write_hits(rows, images, fmt, out)
    except OSError as err:
        fail(err)
    if server is None:
        exit_now(1 if failed else 0)
    if failed:
        sys.exit(1)


def _query_index(index_dir, model, images, search: dict, nprobe, bands, mmap, storage,
                 window=None) -> list[dict]:
    from dahash_index.query.scene_index import SceneIndex

    index = SceneIndex.open(index_dir, model=model, nprobe=nprobe, mmap=mmap,
                            storage_options=storage)
    if index.row_count == 0:
        click.echo(f"Warning: {index_dir} holds no rows yet (dahash-index build --shards "
                   f"DIR --index {index_dir})", err=True)
    table = index.query(list(images), bands=bands, window=window, **search)
    return table.drop_columns(["code"]).to_pylist() if "code" in table.column_names \
        else table.to_pylist()


def _query_service(server, images, search: dict, nprobe, bands, storage, window
                   ) -> list[dict]:
    from dahash_index.serve.client import query_service
    from dahash_index.sources.remote import RemoteError, read_url

    uploads = []
    for name in images:
        try:
            data = read_url(name, storage) if window is None else _window_png(
                name, window, bands, storage)
            uploads.append((name, data, None))
        except (RemoteError, ValueError, OSError) as err:
            uploads.append((name, None, str(err)))
    # A window is cut here, by byte ranges for a TIFF, and uploaded as a PNG of the pixels the
    # query reads: the service then has no need of the (maybe huge) whole file, nor its bands.
    params = {**search, "nprobe": nprobe, "bands": bands if window is None else None}
    return query_service(server, uploads, params, os.environ.get("DAHASH_INDEX_TOKEN"))


def _window_png(name: str, window: str, bands: str | None, storage: dict) -> bytes:
    """The PNG of ``window`` of the image ``name`` as a local query reads it."""
    import io

    from PIL import Image

    from dahash_index.query.inputs import window_pixels
    from dahash_index.scenes.chips import parse_window
    from dahash_index.scenes.scene import parse_bands

    pixels = window_pixels(name, parse_window(window), parse_bands(bands) if bands else None,
                           storage)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _print_errors(rows: list[dict]) -> bool:
    """Print each failed query's error on stderr, in one line; True when one failed."""
    failed = False
    for row in rows:
        if row["error"] is not None:
            failed = True
            error = row["error"]
            if not error.startswith(row["query_name"]):
                error = f"{row['query_name']}: {error}"
            click.echo(f"Error: {printable(error)}", err=True)
    return failed


def _write_hits(rows: list[dict], images: Sequence[str], fmt: str, out: Path | None) -> None:
    """The hits in ``fmt`` (``query.export.FORMATS``), to ``out`` or standard output."""
    import json

    from dahash_index.files import atomic_write
    from dahash_index.query import export

    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = export.to_geoparquet(rows)
        atomic_write(out, lambda f: pq.write_table(table, f))
        return
    if fmt == "csv":
        text = export.to_csv(rows)
    elif fmt == "geojson":
        text = json.dumps(export.to_geojson(rows)) + "\n"
    elif fmt == "stac":
        text = json.dumps(export.to_stac_items(rows)) + "\n"
    elif fmt == "json":
        text = "".join(json.dumps(hit) + "\n" for hit in export.hit_rows(rows))
    else:
        text = _plain(rows, images)
    if out is None:
        click.echo(text, nl=False)
    else:
        atomic_write(out, lambda f: f.write(text.encode()))


PLAIN_HEADER = "rank dist   score   row_id scene [metadata]"


def _plain(rows: list[dict], images: Sequence[str]) -> str:
    """The plain format: a header line, then per query a "# name" line and a line per hit."""
    lines = [PLAIN_HEADER]
    answered = set()
    for row in rows:
        answered.add(row["query"])
        if row["error"] is not None:
            continue
        if row["rank"] == 1:
            lines.append(f"# {printable(row['query_name'])}")
        name = printable(f"{row['url']}[{row['member']}]" if row["member"] else row["url"])
        extra = " ".join(f"{k}={row[k]}" for k in ("label", "width", "height", "crs")
                         if row.get(k) is not None)
        if row.get("col_off") is not None:
            extra += " window=" + ",".join(str(row[k]) for k in WINDOW_COLUMNS)
        if row.get("west") is not None:
            extra += " wgs84=" + ",".join(f"{row[k]:.6f}" for k in WGS84_COLUMNS)
        score = "-" if row.get("score") is None else f"{row['score']:.4f}"
        lines.append(f"{row['rank']:>4} {row['distance']:>4} {score:>7} {row['row_id']:>8} "
                     f"{name} {extra}")
    for number, name in enumerate(images):
        if number not in answered:
            lines.append(f"# {printable(name)}: no hits")
    return "".join(line + "\n" for line in lines)
