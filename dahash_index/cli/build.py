"""The ``dahash-index build`` command (registered by ``cli.main``)."""

from __future__ import annotations

from pathlib import Path

import click

from dahash_index.cli.options import (
    HOME_HELP,
    LazyChoice,
    default_index,
    default_model,
    fail,
    storage_flags,
    storage_options,
    store_kinds,
)
from dahash_index.errors import printable


def _precisions() -> tuple[str, ...]:
    from dahash_index.model.precision import PRECISIONS  # imports torch: only when asked for

    return tuple(PRECISIONS.names())


def _engines() -> tuple[str, ...]:
    from dahash_index.build.engines import ENGINES

    return tuple(ENGINES.names())


class _KindOption(click.Option):
    """--kind, whose help lists every kind with its registered description."""

    def get_help_record(self, ctx: click.Context):
        from dahash_index.indexes import get_kind

        kinds = "; ".join(f"{k}: {get_kind(k).description}" for k in self.type.choices)
        self.help = f"FAISS binary index. {kinds}."
        return super().get_help_record(ctx)


@click.command(short_help="Index shards of scenes (new or changed ones) into an index.")
@click.option("--shards", default=None, metavar="DIR_OR_URL",
              help="Local directory or fsspec URL (s3://, gs://, memory://, file://). Each "
                   "subdirectory or .tar is a shard; loose files at the top form one shard.")
@click.option("--stac", default=None, metavar="CATALOG",
              help="Instead of --shards: a STAC catalog, collection, item or item collection "
                   "(a JSON file or URL). Each item's --asset is a scene, each collection a "
                   "shard; rows keep the item's id, datetime and properties.")
@click.option("--asset", default=None, metavar="KEY",
              help="With --stac: the asset of each item to index [default: its first image "
                   "asset].")
@click.option("--index", "index_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help=f"Index directory [default: {HOME_HELP}/index].")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Trained checkpoint [default: {HOME_HELP}/model.pt].")
@click.option("--kind", default="flat", show_default=True, type=LazyChoice(store_kinds),
              cls=_KindOption, help="FAISS binary index")
@click.option("--nlist", type=click.IntRange(min=1), default=None,
              help="IVF lists [default: about 4 sqrt(N), from the archive size]. Until the "
                   "index holds 39 codes per list, its codes are searched exactly.")
@click.option("--bands", default=None, metavar="R,G,B",
              help="1-based bands of multi-band TIFFs that make the RGB input, e.g. 3,2,1 "
                   "[default: 1,2,3].")
@click.option("--batch-size", default=None, type=click.IntRange(min=1),
              help="Scenes per forward pass of the network [default: 32 on a CPU, 256 on a "
                   "GPU of 16 GiB or more, 64 on a smaller one].")
@click.option("--workers", default=None, type=click.IntRange(min=0),
              help="Decode processes; 0 decodes in the build process [default: 0 when the "
                   "network runs on the CPU, whose cores it already uses; all cores but one "
                   "with a GPU].")
@click.option("--device", default=None, metavar="DEVICE",
              help="Where the network runs: cpu, cuda, cuda:1, ... [default: the GPU when "
                   "there is one]. On a GPU, JPEGs are decoded there too (nvJPEG).")
@click.option("--precision", default=None, type=LazyChoice(_precisions),
              help="The backbone's arithmetic [default: fp32 on a CPU, tf32 on a GPU: its codes "
                   "agree with fp32's within 0.1 % of bits, bf16's do not; see the README]. "
                   "Recorded per shard; codes of every precision are searched together. On a "
                   "CPU, tf32 is emulated (slower than fp32).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Skip shards already committed to INDEX and unchanged (always safe). "
                   "--no-resume refuses to add to an existing index.")
@click.option("--retry-errors", is_flag=True,
              help="Index again every committed shard that recorded scene errors (shards that "
                   "yielded no row at all are retried without it).")
@click.option("--prune", is_flag=True,
              help="Retire the committed shards under --shards that no longer exist (moved or "
                   "deleted), in one commit; with a --shards that is gone altogether, retire "
                   "all of its shards. Without it, build warns about them and keeps their "
                   "rows.")
@click.option("--wait", default=0.0, show_default=True, type=click.FloatRange(min=0),
              metavar="SECONDS", help="Wait this long for another build writing to INDEX.")
@click.option("--engine", default="local", show_default=True, type=LazyChoice(_engines),
              help="Who encodes the shards: this process (local), or Ray tasks and actors "
                   "(ray; pip install 'dahash-index[ray]'). This process commits either way.")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="With --engine ray: the cluster to join (e.g. ray://head:10001 or auto) "
                   "[default: start Ray on this machine]. Workers must reach INDEX's "
                   "directory (a shared filesystem) to write their shard results.")
@click.option("--tile", type=int, default=None, metavar="PX",
              help="Cut TIFF scenes whose sides both exceed --min-side into PX x PX chips, one "
                   "row each, read window by window (never the whole scene). Edge chips are "
                   "padded with nodata, and dropped when under half inside; chips under half "
                   "valid (nodata) are skipped and counted.")
@click.option("--stride", type=int, default=None, metavar="PX",
              help="With --tile: pixels from one chip to the next [default: the tile; larger "
                   "leaves gaps].")
@click.option("--min-side", type=int, default=None, metavar="PX",
              help="With --tile: scenes with a side of at most this stay whole [default: 2 x "
                   "the tile].")
@click.option("--label-from", "label_from", default=None, metavar="folder|none|CSV",
              help="Where each scene's label comes from: folder (the name of the folder that "
                   "holds it, for DIR/<class>/<scene> archives), none, or a CSV file of "
                   "url,label lines (a scene's URL as indexed, or its path under --shards; "
                   "a tar member's: TAR/MEMBER). [default: the index's own choice; none for a "
                   "new index]")
@storage_flags
def build(shards, index_dir, model, kind, nlist, bands, batch_size, workers, device,
          precision, resume, retry_errors, prune, wait, engine, ray_address, tile, stride, min_side,
          label_from, stac, asset, endpoint_url, storage_pairs):
    """Stream shards of scenes into a FAISS binary index with Parquet metadata.

    A shard is its URL plus a fingerprint of its files (names, sizes, modification times or
    ETags). Running build again (or after a crash) skips committed, unchanged shards, adds new
    ones and indexes changed ones again, replacing their rows in the same commit. A shard counts
    as indexed only once its codes and metadata are durable. Scenes that cannot be decoded are
    reported in one line each, kept in the index's errors table, and skipped; a shard the
    storage fails on is not committed, and the next build retries it (exit status 1).
    """
    from dahash_index.build.indexer import build_index
    from dahash_index.build.job import BuildOptions
    from dahash_index.scenes.chips import Tiling
    from dahash_index.scenes.scene import parse_bands
    from dahash_index.sources.labels import labels_from

    if (shards is None) == (stac is None):
        fail(ValueError("give either --shards DIR_OR_URL or --stac CATALOG"))
    source, flag = (shards, "--shards") if stac is None else (stac, "--stac")
    if tile is None and (stride is not None or min_side is not None):
        fail(ValueError("--stride and --min-side apply only with --tile"))
    try:
        tiling = Tiling(tile, stride, min_side) if tile is not None else None
    except ValueError as err:
        fail(err)
    index_dir = index_dir or default_index()
    model = model or default_model()
    if not resume and (index_dir / "manifest.json").exists():
        raise click.ClickException(f"{index_dir} already holds an index (use --resume)")
    storage = storage_options(storage_pairs, endpoint_url)
    try:
        labels = labels_from(label_from) if label_from is not None else None
        options = BuildOptions(kind=kind, nlist=nlist,
                               bands=parse_bands(bands) if bands else None,
                               batch_size=batch_size, workers=workers, device=device,
                               precision=precision, storage_options=storage,
                               retry_errors=retry_errors, prune=prune, wait=wait, engine=engine,
                               ray_address=ray_address, tiling=tiling, labels=labels,
                               stac=stac is not None, asset=asset)
        report = build_index(source, index_dir, model, options)
    except (ValueError, OSError, RuntimeError) as err:
        fail(err)
    gone = report.shards_gone
    if gone and report.pruned:
        click.echo(f"pruned {len(gone)} shard(s) under {source} that no longer exist "
                   f"(e.g. {printable(gone[0])}); their rows are retired", err=True)
    elif gone:
        click.echo(f"Warning: {len(gone)} shard(s) indexed from {source} no longer exist (e.g. "
                   f"{printable(gone[0])}); their rows still answer queries; `dahash-index "
                   f"build {flag} {source} --prune` retires them", err=True)
    again = f", {report.shards_reindexed} of them again" if report.shards_reindexed else ""
    click.echo(
        f"indexed {report.scenes} scenes from {report.shards_indexed} shard(s){again} "
        f"({report.shards_skipped} already committed), {report.errors} error(s), "
        f"in {report.seconds:.1f}s; {index_dir} holds {report.row_count} rows"
        + (f"; {report.chips_skipped} chip(s) skipped as mostly nodata"
           if report.chips_skipped else "")
    )
    if report.exact_ivf:
        click.echo(f"Warning: {index_dir} holds too few codes to train its IVF yet (39 per "
                   "list); they are searched exactly until then", err=True)
    if report.failed:
        raise click.ClickException(
            f"{len(report.failed)} shard(s) could not be read and were not indexed (named "
            "above); run build again to retry them")
