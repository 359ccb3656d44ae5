"""The ``dahash-index`` command line."""

import click


@click.group()
def main() -> None:
    """Deep-hashing retrieval for remote-sensing archives."""
