"""Command-line options shared by the commands of several modules (``cli``, ``service.cli``)."""

from __future__ import annotations

import click


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
