"""The ``dahash-index`` command line: train, eval, build, query, info.

Default locations (so ``dahash-index build --shards DIR`` and ``dahash-index query img.tif``
work as typed after ``dahash-index train``): the model is ``$DAHASH_INDEX_HOME/model.pt`` and
the index ``$DAHASH_INDEX_HOME/index``, with ``DAHASH_INDEX_HOME`` defaulting to
``~/.dahash-index``.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from dahash_index import runtime

HOME_HELP = "$DAHASH_INDEX_HOME (default ~/.dahash-index)"


def home() -> Path:
    return Path(os.environ.get("DAHASH_INDEX_HOME", Path.home() / ".dahash-index"))


def default_model() -> Path:
    return home() / "model.pt"


def default_index() -> Path:
    return home() / "index"


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from err


def _fail(err: Exception) -> None:
    raise click.ClickException(str(err)) from err


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


@main.command()
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
              type=click.Choice(["tf2015", "torchvision"]), help="Frozen ImageNet Inception V3.")
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
    from trainer.workflow import train_command

    out = out or default_model()
    try:
        train_command(data, bits, out, seed, preset_name, list(overrides), backbone,
                      backbone_weights, cache_dir)
    except (ValueError, OSError, RuntimeError) as err:
        _fail(err)


@main.command(name="eval")
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
@click.option("--jobs", default=1, show_default=True, type=int,
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
    from trainer.workflow import eval_command

    command = "dahash-index " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        protocols = tuple(p.strip() for p in protocols_text.split(",") if p.strip())
        report = eval_command(data, model, _int_list(bits_text), _int_list(seeds_text),
                              variants, out, cache_dir, command, report, jobs, protocols,
                              novel_variants, merge)
    except (ValueError, OSError, RuntimeError) as err:
        _fail(err)
    click.echo(f"wrote {report}")


@main.command()
@click.option("--shards", required=True, metavar="DIR_OR_URL",
              help="Local directory or fsspec URL (s3://, gs://, memory://, file://). Each "
                   "subdirectory or .tar is a shard; loose files at the top form one shard.")
@click.option("--index", "index_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help=f"Index directory [default: {HOME_HELP}/index].")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Trained checkpoint [default: {HOME_HELP}/model.pt].")
@click.option("--kind", default="flat", show_default=True, type=click.Choice(["flat", "ivf"]),
              help="FAISS binary index: exact flat search, or IVF (trained on the codes).")
@click.option("--nlist", type=int, default=None,
              help="IVF lists [default: about 4 sqrt(N), from the archive size].")
@click.option("--bands", default=None, metavar="R,G,B",
              help="1-based bands of multi-band TIFFs that make the RGB input, e.g. 3,2,1 "
                   "[default: 1,2,3].")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Scenes per forward pass of the network.")
@click.option("--workers", default=None, type=click.IntRange(min=0),
              help="Decode processes; 0 decodes in the build process [default: 0 when the "
                   "network runs on the CPU, whose cores it already uses; up to 8 with a GPU].")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Skip shards already committed to INDEX (always safe). --no-resume refuses "
                   "to add to an existing index.")
@click.option("--endpoint-url", default=None, envvar="AWS_ENDPOINT_URL",
              help="S3-compatible endpoint for s3:// URLs (or $AWS_ENDPOINT_URL).")
def build(shards, index_dir, model, kind, nlist, bands, batch_size, workers, resume,
          endpoint_url):
    """Stream shards of scenes into a FAISS binary index with Parquet metadata.

    A shard counts as indexed only once its codes and metadata are durable; running build
    again (or after a crash) skips committed shards and adds new ones. Scenes that cannot be
    read are reported in one line each, kept in the index's errors table, and skipped.
    """
    from dahash_index.images import parse_bands
    from dahash_index.indexer import BuildOptions, build_index

    index_dir = index_dir or default_index()
    model = model or default_model()
    if not resume and (index_dir / "manifest.json").exists():
        raise click.ClickException(f"{index_dir} already holds an index (use --resume)")
    storage = {"client_kwargs": {"endpoint_url": endpoint_url}} if endpoint_url else {}
    try:
        options = BuildOptions(kind=kind, nlist=nlist,
                               bands=parse_bands(bands) if bands else None,
                               batch_size=batch_size, workers=workers, storage_options=storage)
        report = build_index(shards, index_dir, model, options)
    except (ValueError, OSError, RuntimeError) as err:
        _fail(err)
    click.echo(
        f"indexed {report.scenes} scenes from {report.shards_indexed} shard(s) "
        f"({report.shards_skipped} already committed), {report.errors} error(s), "
        f"in {report.seconds:.1f}s; {index_dir} holds {report.row_count} rows"
    )


@main.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--index", "index_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help=f"Index directory [default: {HOME_HELP}/index].")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Refuse to answer unless the index was built with this checkpoint.")
@click.option("--top", default=50, show_default=True, type=int, help="Hits per query.")
@click.option("--radius", type=int, default=None,
              help="Instead of --top: every hit within this Hamming distance.")
@click.option("--nprobe", type=int, default=None, help="IVF lists to visit (IVF indexes).")
@click.option("--bands", default=None, metavar="R,G,B", help="Bands of multi-band queries.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per hit (JSON lines).")
@click.option("--mmap", is_flag=True,
              help="Map the index's codes from disk instead of reading them into memory "
                   "(large indexes; processes on one machine share the pages).")
def query(images, index_dir, model, top, radius, nprobe, bands, as_json, mmap):
    """Find the scenes most similar to each IMAGE (path or URL) by Hamming distance.

    Prints, per query, rank, Hamming distance, row id, scene URL and metadata.
    """
    import json

    from dahash_index.api import SceneIndex
    from dahash_index.images import parse_bands

    index_dir = index_dir or default_index()
    try:
        index = SceneIndex.open(index_dir, model=model, nprobe=nprobe, mmap=mmap)
        table = index.query(list(images), top=top, radius=radius,
                            bands=parse_bands(bands) if bands else None)
    except (ValueError, OSError, RuntimeError) as err:
        _fail(err)
    failed = False
    rows = table.drop_columns(["code"]) if "code" in table.column_names else table
    for row in rows.to_pylist():
        if row["error"] is not None:
            failed = True
            click.echo(f"error: {row['query_name']}: {row['error']}", err=True)
            continue
        if as_json:
            click.echo(json.dumps({k: v for k, v in row.items() if k != "error"}))
            continue
        if row["rank"] == 1:
            click.echo(f"# {row['query_name']}")
        name = f"{row['url']}[{row['member']}]" if row["member"] else row["url"]
        extra = " ".join(f"{k}={row[k]}" for k in ("label", "width", "height", "crs")
                         if row.get(k) is not None)
        click.echo(f"{row['rank']:>4} {row['distance']:>3} {row['row_id']:>8} {name} {extra}")
    if failed:
        sys.exit(1)


@main.command()
@click.argument("index_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def info(index_dir, as_json):
    """Show what an index holds [default INDEX_DIR: $DAHASH_INDEX_HOME/index]."""
    import json

    from dahash_index.store import IndexReader

    index_dir = index_dir or default_index()
    try:
        reader = IndexReader.open(index_dir)
    except (ValueError, OSError) as err:
        _fail(err)
    m = reader.manifest
    if as_json:
        click.echo(json.dumps(m, indent=1))
        return
    errors = sum(s["error_count"] for s in m["shards"].values())
    click.echo(f"index      {index_dir}")
    click.echo(f"format     {m['format']}")
    click.echo(f"rows       {m['row_count']} from {len(m['shards'])} committed shard(s)")
    click.echo(f"errors     {errors} scene(s) could not be indexed")
    click.echo(f"codes      {m['bits']} bits, {m['kind']} index"
               + (f", nlist {m['nlist']}" if m.get("nlist") else ""))
    click.echo(f"model      sha256 {m['model_sha256']} ({reader.model_path})")
    click.echo(f"backbone   {m['backbone']} (weights sha256 {m['backbone_sha256'][:12]})")
    click.echo(f"updated    {m['updated']}")


if __name__ == "__main__":
    main()
