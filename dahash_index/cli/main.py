"""The ``dahash-index`` command line: train, eval, build, query, info.

Default locations (so ``dahash-index build --shards DIR`` and ``dahash-index query img.tif``
work as typed after ``dahash-index train``): the model is ``$DAHASH_INDEX_HOME/model.pt`` and
the index ``$DAHASH_INDEX_HOME/index``, with ``DAHASH_INDEX_HOME`` defaulting to
``~/.dahash-index``.
"""

from __future__ import annotations

import shlex
import sys
from collections import Counter
from pathlib import Path

import click

from dahash_index import runtime
from dahash_index.cli.merge import merge
from dahash_index.cli.options import (
    EXIT_AT_ONCE,
    HOME_HELP,
    LazyChoice,
    default_index,
    default_model,
    fail,
    storage_flags,
    storage_options,
    store_kinds,
)
from dahash_index.cli.query import query
from dahash_index.cli.serve import serve


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from err


def _precisions() -> tuple[str, ...]:
    from dahash_index.model.precision import PRECISIONS  # imports torch: only when asked for

    return tuple(PRECISIONS.names())


def _engines() -> tuple[str, ...]:
    from dahash_index.build.engines import ENGINES

    return tuple(ENGINES.names())


def _backbones() -> tuple[str, ...]:
    from dahash_index.model.backbones import BACKBONES  # imports torch: only when asked for

    return tuple(BACKBONES.names(pretrained=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Deep-hashing retrieval for remote-sensing archives.

    \b
    Typical use:
      dahash-index train --data ucmerced/            # writes the default model
      dahash-index build --shards s3://bucket/scenes # indexes into the default index
      dahash-index query scene.tif --top 50          # ranked hits from the default index

    The default model is $DAHASH_INDEX_HOME/model.pt and the default index
    $DAHASH_INDEX_HOME/index; DAHASH_INDEX_HOME defaults to ~/.dahash-index.
    """
    runtime.configure_threads()


@main.command(short_help="Train the hash network on a labelled dataset.")
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Image-folder dataset: DATA/<class>/<scene>; the folder name is the label.")
@click.option("--bits", default=64, show_default=True, type=int,
              help="Code length K (a multiple of 8).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Checkpoint to write [default: {HOME_HELP}/model.pt].")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the per-class 60/40 split and of the initialisation.")
@click.option("--preset", "preset_name", default="dahash", show_default=True,
              type=click.Choice(["dahash", "dahash-d4", "milan"]),
              help="Shipped configuration to start from: dahash (the default), dahash-d4 (also "
                   "trains on all 8 flips and rotations and codes every scene as the mean of "
                   "its 8 orientations: 8x the backbone work, at build and query time too), "
                   "milan (the MiLAN baseline).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one training option, e.g. --set steps=3000 --set attention=single.")
@click.option("--backbone", default="tf2015", show_default=True,
              type=LazyChoice(_backbones), help="Frozen ImageNet Inception V3.")
@click.option("--backbone-weights", type=click.Path(dir_okay=False), default=None,
              help="Weights file for the backbone (default: the packaged / cached file).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Feature cache "
                   "[default: $DAHASH_INDEX_CACHE or ~/.cache/dahash-index/features].")
def train(data, bits, out, seed, preset_name, overrides, backbone, backbone_weights, cache_dir):
    """Train the attention-hash network on DATA's train part and save a checkpoint.

    Backbone features are computed once and cached. The 60/40 split is per class and seeded;
    the checkpoint records the config, the backbone and its weights checksum, the class names
    and the split seed. Prints the test-part mAP of the trained model at the end.
    """
    from dahash_index.train.workflow import train_command

    out = out or default_model()
    try:
        train_command(data, bits, out, seed, preset_name, list(overrides), backbone,
                      backbone_weights, cache_dir)
    except (ValueError, OSError, RuntimeError) as err:
        fail(err)


@main.command(name="eval", short_help="Evaluate the method and its baselines (METHOD.md).")
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Labelled image-folder dataset (DATA/<class>/<scene>).")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A trained checkpoint: its config is the 'full' method, its backbone is used, "
                   "and the checkpoint itself is scored on its own split.")
@click.option("--bits", "bits_text", default="16,32,48,64", show_default=True,
              help="Code lengths to report.")
@click.option("--seeds", "seeds_text", default="0,1,2", show_default=True,
              help="Seeds (split and initialisation); mean ± std over them.")
@click.option("--variants", default="core", show_default=True,
              help="Comma-separated variant names, 'core' (full, no attention, MiLAN) or 'all' "
                   "(also every attention, loss, centre, standardisation, dropout, "
                   "orientation and early-stopping ablation).")
@click.option("--protocols", "protocols_text", default="standard,novel", show_default=True,
              help="'standard' (60/40 split, all classes) and/or 'novel' (a seeded quarter "
                   "of the classes, 5 of UC Merced's 21, held out of training; retrieval "
                   "among them).")
@click.option("--novel-variants", default=None,
              help="Variants for the novel-class protocol [default: --variants].")
@click.option("--merge", is_flag=True,
              help="Keep the results already in OUT (same dataset, seeds and config) and "
                   "report both runs: e.g. ablations at one K, the core variants at others.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("eval"),
              show_default=True, help="Directory for results.json and the PR curves.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Markdown report to write [default: OUT/report.md].")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Networks trained at once (worker processes sharing the cores).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Feature cache directory.")
def evaluate(data, model, bits_text, seeds_text, variants, protocols_text, novel_variants, merge,
             out, report, jobs, cache_dir):
    """Reproduce the evaluation of METHOD.md sections 5 and 6 on DATA in one run.

    For each K and seed: the chosen variants (the full method, its ablations, the MiLAN
    re-implementation) and LDA on the float features, under the standard and the novel-class
    protocol. Writes OUT/report.md, OUT/results.json and OUT/pr-K.png.
    """
    from dahash_index.train.workflow import eval_command

    command = "dahash-index " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        protocols = tuple(p.strip() for p in protocols_text.split(",") if p.strip())
        report = eval_command(data, model, _int_list(bits_text), _int_list(seeds_text),
                              variants, out, cache_dir, command, report, jobs, protocols,
                              novel_variants, merge)
    except (ValueError, OSError, RuntimeError) as err:
        fail(err)
    click.echo(f"wrote {report}")


class _KindOption(click.Option):
    """--kind, whose help lists every kind with its registered description."""

    def get_help_record(self, ctx: click.Context):
        from dahash_index.indexes import get_kind

        kinds = "; ".join(f"{k}: {get_kind(k).description}" for k in self.type.choices)
        self.help = f"FAISS binary index. {kinds}."
        return super().get_help_record(ctx)


@main.command(short_help="Index shards of scenes (new or changed ones) into an index.")
@click.option("--shards", required=True, metavar="DIR_OR_URL",
              help="Local directory or fsspec URL (s3://, gs://, memory://, file://). Each "
                   "subdirectory or .tar is a shard; loose files at the top form one shard.")
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
@storage_flags
def build(shards, index_dir, model, kind, nlist, bands, batch_size, workers, device,
          precision, resume, retry_errors, wait, engine, ray_address, tile, stride, min_side,
          endpoint_url, storage_pairs):
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
        options = BuildOptions(kind=kind, nlist=nlist,
                               bands=parse_bands(bands) if bands else None,
                               batch_size=batch_size, workers=workers, device=device,
                               precision=precision, storage_options=storage,
                               retry_errors=retry_errors, wait=wait, engine=engine,
                               ray_address=ray_address, tiling=tiling)
        report = build_index(shards, index_dir, model, options)
    except (ValueError, OSError, RuntimeError) as err:
        fail(err)
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


@main.command(short_help="Show what an index holds.")
@click.argument("index_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def info(index_dir, as_json):
    """Show what an index holds [default INDEX_DIR: $DAHASH_INDEX_HOME/index].

    Also checks that every file the manifest names is there and that each Parquet file's
    footer gives the row count the manifest says; `dahash-index check` reads them whole.
    """
    import json

    from dahash_index.store import IndexReader, quick_check

    index_dir = index_dir or default_index()
    try:
        reader = IndexReader.open(index_dir)
        health = quick_check(index_dir)
    except (ValueError, OSError) as err:
        fail(err)
    m = reader.manifest
    if as_json:
        click.echo(json.dumps(m.to_json(), indent=1))
    else:
        errors = sum(s.error_count for s in m.shards.values())
        click.echo(f"index      {index_dir}")
        click.echo(f"format     {m.format}")
        click.echo(f"rows       {m.row_count} from {len(m.shards)} committed shard(s)")
        click.echo(f"errors     {errors} scene(s) could not be indexed")
        click.echo(f"codes      {m.bits} bits, {m.kind} index"
                   + (f", nlist {m.nlist}" if m.nlist else ""))
        click.echo(f"model      sha256 {m.model_sha256} ({reader.model_path})")
        click.echo(f"backbone   {m.backbone} (weights sha256 {m.backbone_sha256[:12]})")
        precisions = Counter(s.precision or "unrecorded" for s in m.shards.values())
        if precisions:
            click.echo("precision  " + ", ".join(f"{p} ({n} shard(s))"
                                                 for p, n in sorted(precisions.items())))
        tiling = m.extra.get("tiling")
        if tiling:
            click.echo(f"chips      {tiling['tile']} px every {tiling['stride']} px, of TIFFs "
                       f"over {tiling['min_side']} px a side (build --tile)")
        click.echo(f"updated    {m.updated}")
    _report_damage(index_dir, health.damage)


def _report_damage(index_dir: Path, damage: list) -> None:
    for problem in damage:
        click.echo(f"damaged: {problem}", err=True)
    if damage:
        raise click.ClickException(
            f"{index_dir}: {len(damage)} damaged file(s); `dahash-index check --repair "
            f"{index_dir}` drops their shards so that the next build indexes them again")


@main.command(short_help="Verify every file of an index; --repair drops damaged shards.")
@click.argument("index_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--repair", is_flag=True,
              help="Drop the shards whose files are damaged from the manifest (and a damaged "
                   "FAISS file), so that the next build indexes them again.")
def check(index_dir, repair):
    """Read every file of INDEX_DIR whole and verify it [default: $DAHASH_INDEX_HOME/index].

    Parts and errors tables against the checksums recorded at commit, their schemas, row
    counts and row ids; the model copy against the manifest; the FAISS file's K, kind, row
    count and ids. Exit status 1 names each damaged file.
    """
    from dahash_index.store import check_index, repair_index

    index_dir = index_dir or default_index()
    try:
        report = check_index(index_dir)
        if report.ok:
            click.echo(f"ok: {index_dir} holds {report.rows} rows in {report.shards} shard(s); "
                       f"{report.files} file(s) verified")
            return
        if repair:
            dropped = repair_index(report)
            for problem in report.damage:
                click.echo(f"damaged: {problem}", err=True)
            click.echo(f"repaired: dropped {len(dropped)} shard(s) from {index_dir}; run build "
                       "again to index them")
            return
    except (ValueError, OSError) as err:
        fail(err)
    _report_damage(index_dir, report.damage)


main.add_command(query)  # commands kept in modules of their own
main.add_command(merge)
main.add_command(serve)


def run() -> None:
    """The ``dahash-index`` console script: ``main`` in a process of its own, which a
    read-only command may end at once (``options.exit_now``). Tests call ``main`` in-process
    (click's CliRunner), where nothing ends the process."""
    main(obj={EXIT_AT_ONCE: True})
