"""The ``dahash-index`` command line: the group, ``info`` and ``check``; the other commands live
in modules by job (``train``: train, adapt, eval; ``build``; ``query``; ``merge``; ``serve``).


Default locations (so ``dahash-index build --shards DIR`` and ``dahash-index query img.tif``
work as typed after ``dahash-index train``): the model is ``$DAHASH_INDEX_HOME/model.pt`` and
the index ``$DAHASH_INDEX_HOME/index``, with ``DAHASH_INDEX_HOME`` defaulting to
``~/.dahash-index``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from dahash_index import runtime
from dahash_index.cli.build import build
from dahash_index.cli.merge import merge
from dahash_index.cli.options import (
    EXIT_AT_ONCE,
    default_index,
    fail,
)
from dahash_index.cli.query import query
from dahash_index.cli.serve import serve
from dahash_index.cli.train import adapt, evaluate, train


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
        if reader.has_vectors:
            click.echo("re-rank    every row keeps a re-rank vector ("
                       + ", ".join(reader.vector_forms()) + "; query --rerank)")
        elif m.shards:
            click.echo("re-rank    none: this index was built before re-rank vectors (or with "
                       "a model without them); queries rank by Hamming distance alone")
        tiling = m.extra.get("tiling")
        if tiling:
            click.echo(f"chips      {tiling['tile']} px every {tiling['stride']} px, of TIFFs "
                       f"over {tiling['min_side']} px a side (build --tile)")
        labels = m.extra.get("labels")
        click.echo("labels     " + ("the folder that holds each scene" if labels is None else
                                    "none" if labels == "none" else
                                    f"from a CSV file (sha256 {labels.split()[-1]}...)")
                   + " (build --label-from)")
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
              help="Restore a damaged manifest from its last good copy; drop the shards whose "
                   "files are damaged or missing (and a damaged FAISS segment), so that the "
                   "next build indexes them again.")
@click.option("--model", "model", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="With --repair: the model.pt the index was built with, to restore a "
                   "damaged model copy from (its sha256 must match the manifest's).")
def check(index_dir, repair, model):
    """Read every file of INDEX_DIR whole and verify it [default: $DAHASH_INDEX_HOME/index].

    Parts, errors, lookup and re-rank vector files and the FAISS segments against the
    checksums recorded at commit, their schemas, row counts and row ids; the model copy
    against the manifest; the FAISS segments' K, kind, row count and ids. Exit status 1 names
    each damaged file. --repair: a damaged manifest is restored from the last good copy
    (manifests/), a damaged model copy from --model, shards with damaged or missing files
    are dropped (the next build indexes them again) and damaged FAISS segments are rebuilt
    from the parts' codes.
    """
    from dahash_index.store import MANIFEST, MODEL, check_index, repair_index

    index_dir = index_dir or default_index()
    try:
        report = check_index(index_dir)
        if report.ok:
            click.echo(f"ok: {index_dir} holds {report.rows} rows in {report.shards} shard(s); "
                       f"{report.files} file(s) verified")
            return
        if repair:
            dropped = repair_index(report, model)
            for problem in report.damage:
                click.echo(f"damaged: {problem}", err=True)
            files = {d.file for d in report.damage}
            done = [f"restored {MANIFEST} from its last good copy"] if MANIFEST in files else []
            done += [f"restored {MODEL} from {model}"] if MODEL in files else []
            if any(d.shard is None and d.file not in (MANIFEST, MODEL) for d in report.damage):
                done.append("rebuilt the FAISS segments from the parts")
            if dropped:
                done.append(f"dropped {len(dropped)} shard(s); run build again to index them")
            click.echo(f"repaired {index_dir}: " + "; ".join(done or ["nothing to do"]))
            return
    except (ValueError, OSError) as err:
        fail(err)
    _report_damage(index_dir, report.damage)


for command in (train, adapt, evaluate, build, query, merge, serve):  # modules of their own
    main.add_command(command)


def run() -> None:
    """The ``dahash-index`` console script: ``main`` in a process of its own, which a
    read-only command may end at once (``options.exit_now``). Tests call ``main`` in-process
    (click's CliRunner), where nothing ends the process."""
    main(obj={EXIT_AT_ONCE: True})
