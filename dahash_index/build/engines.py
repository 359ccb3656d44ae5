"""The build engines, by name: who runs the shard worker (``worker.ShardWorker``).

Like clip-retrieval's distributors, an engine decides only where the worker runs: ``local``
(this process, ``local.LocalRunner``) or ``ray`` (Ray tasks and actors, ``ray_engine``,
needing the ``[ray]`` extra). Both are registered by path, so that naming the engines (the
CLI's ``--engine`` choices, the options' check) imports neither torch nor Ray.
"""

from __future__ import annotations

from typing import Any

from dahash_index.registry import Registry

ENGINES: Registry[Any] = Registry("engine")
ENGINES.register_lazy("local", "dahash_index.build.local:LocalRunner",
                      "this process: a thread reads ahead, the network encodes")
ENGINES.register_lazy("ray", "dahash_index.build.ray_engine:RayRunner",
                      "Ray read tasks and an actor pool of encoders "
                      "(pip install 'dahash-index[ray]')")


def get_runner(engine: str, **options: Any) -> Any:
    """The runner of ``engine`` made with its options (e.g. ray's ``address``); ValueError
    naming the engines for an unknown one."""
    return ENGINES.get(engine)(**options)
