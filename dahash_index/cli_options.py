"""Command-line options shared by the commands of several modules (``cli``, ``service.cli``)."""

from __future__ import annotations

from collections.abc import Callable

import click


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
    from dahash_index.remote import parse_storage_options

    try:
        return parse_storage_options(pairs, endpoint_url)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--storage-option") from None


def storage_flags(command):
    """--endpoint-url and --storage-option, shared by every command that reads URLs."""
    command = click.option(
        "--storage-option", "storage_pairs", multiple=True, metavar="KEY=VALUE",
        help="fsspec option for remote URLs, e.g. anon=true or requester_pays=true "
             "(values are JSON when they parse).")(command)
    return click.option(
        "--endpoint-url", default=None, envvar="AWS_ENDPOINT_URL",
        help="S3-compatible endpoint for s3:// URLs (or $AWS_ENDPOINT_URL).")(command)
