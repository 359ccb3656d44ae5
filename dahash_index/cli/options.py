"""What the commands of several modules share (``cli``, ``query_cli``, ``service.cli``):
default locations, the one way to fail, and options."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from dahash_index.errors import one_line
from dahash_index.sources.remote import TIMEOUTS_HELP

HOME_HELP = "$DAHASH_INDEX_HOME (default ~/.dahash-index)"


def home() -> Path:
    return Path(os.environ.get("DAHASH_INDEX_HOME", Path.home() / ".dahash-index"))


def default_model() -> Path:
    return home() / "model.pt"


def default_index() -> Path:
    return home() / "index"


EXIT_AT_ONCE = "exit_at_once"  # in the root context's obj: the command runs in its own process


def exit_now(code: int) -> None:
    """End a read-only command at once: a process that imported torch spends about half a
    second tearing it down at exit (benchmarks/cold_query.py), for a query that is done.
    Only for commands that hold nothing to write or close: the output is flushed here. In a
    process that is not the command's own (``cli.main.run`` says), an ordinary exit."""
    if (click.get_current_context().find_root().obj or {}).get(EXIT_AT_ONCE):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        sys.exit(code)


def fail(err: Exception) -> None:
    """The one way a command reports a failure: 'Error: <one line>' on stderr, exit 1."""
    raise click.ClickException(one_line(err)) from err


class LazyChoice(click.Choice):
    """A choice among names that a registry gives, read at first use: the registries import
    torch or FAISS, which a command that does not need them (``query --server``) must not
    pay for, and FAISS must load after ``runtime.configure_threads``."""

    def __init__(self, names: Callable[[], tuple[str, ...]]) -> None:
        self._names = names
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self._names())

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns it
        pass


def store_kinds() -> tuple[str, ...]:
    """The kinds an index can be built as (``indexes.registry``, via the store's KINDS)."""
    from dahash_index.store.layout import KINDS

    return tuple(KINDS)


def storage_options(pairs: tuple[str, ...], endpoint_url: str | None) -> dict:
    """--storage-option pairs and --endpoint-url as fsspec storage options."""
    from dahash_index.sources.remote import parse_storage_options

    try:
        return parse_storage_options(pairs, endpoint_url)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--storage-option") from None


def mmap_flag(command):
    """--mmap/--no-mmap, the same for every command that opens an index (None: not given)."""
    return click.option(
        "--mmap/--no-mmap", default=None,
        help="Memory-map the index's FAISS segments instead of reading them into memory "
             "(large indexes; processes on one machine share the pages) [default: on].")(command)


def storage_flags(command):
    """--endpoint-url and --storage-option, shared by every command that reads URLs."""
    command = click.option(
        "--storage-option", "storage_pairs", multiple=True, metavar="KEY=VALUE",
        help="fsspec option for remote URLs, e.g. anon=true or requester_pays=true "
             "(values are JSON when they parse). " + TIMEOUTS_HELP)(command)
    return click.option(
        "--endpoint-url", default=None, envvar="AWS_ENDPOINT_URL",
        help="S3-compatible endpoint for s3:// URLs (or $AWS_ENDPOINT_URL).")(command)
