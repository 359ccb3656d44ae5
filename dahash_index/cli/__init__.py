"""The ``dahash-index`` command line: ``main`` is the group; each module holds the commands of
one job (``main``: train, eval, build, info, check; ``query``, ``merge``, ``serve``), and
``options`` what they share."""

from dahash_index.cli.main import main, run

__all__ = ["main", "run"]
