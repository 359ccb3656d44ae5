"""The ``dahash-index merge`` command (registered by ``dahash_index.cli.main``)."""

from __future__ import annotations

from pathlib import Path

import click

from dahash_index.cli.options import LazyChoice, store_kinds
from dahash_index.errors import one_line


@click.command(short_help="Merge indexes built apart with the same model into one.")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.argument("indexes", nargs=-1, required=True, metavar="INDEX...",
                type=click.Path(file_okay=False, path_type=Path))
@click.option("--kind", type=LazyChoice(store_kinds), default=None,
              help="FAISS binary index of OUT [default: OUT's kind, else the first INDEX's].")
@click.option("--nlist", type=click.IntRange(min=1), default=None,
              help="IVF lists [default: OUT's, else about 4 sqrt(N) of the merged rows].")
def merge(out: Path, indexes: tuple[Path, ...], kind: str | None, nlist: int | None) -> None:
    """Merge the indexes INDEX ... into OUT (created, or added to).

    Every committed shard is copied with one crash-safe commit and new row ids, in order of
    shard name then URL: indexes built from disjoint sets of an archive's shards merge into
    the index that one build over all of them gives (same rows, row ids, hits and ties).

    \b
    Resumable: a shard that OUT already holds unchanged (same URL and fingerprint) is
    skipped, so running merge again after a crash goes on where it stopped, and nothing
    OUT holds is lost. A shard URL in several indexes is taken once, from the first given
    (a warning names a shard whose versions differ); a scene (file, tar member) already
    held is dropped, so each scene is kept once.

    Refused, with one line: indexes of different models or code lengths (K), or built with
    other bands; OUT given as an INDEX too; an INDEX given twice; a damaged part.
    """
    from dahash_index.store.merge import merge_indexes

    try:
        report = merge_indexes(out, indexes, kind=kind, nlist=nlist)
    except (ValueError, OSError) as err:
        raise click.ClickException(one_line(err)) from err
    click.echo(
        f"merged {report.rows} rows from {report.shards_adopted} shard(s) of "
        f"{len(indexes)} index(es) ({report.shards_skipped} shard(s) already merged or "
        f"repeated, {report.scenes_dropped} duplicate scene(s) dropped) in "
        f"{report.seconds:.1f}s; {out} holds {report.row_count} rows"
    )
