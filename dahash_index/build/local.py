"""The local engine: this process runs the shard worker over every shard as one stream.

A thread reads ahead, scenes are decoded in line (CPU) or in decode processes (GPU), the
network encodes batches, and each shard is staged as soon as its last codes are back
(``worker.ShardWorker.stream``). It never commits: the build's one committer adopts each
staged result as it is reported (``indexer.build_index``).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool

from tqdm import tqdm

from dahash_index.build.decode_pool import DecodePool, default_workers
from dahash_index.build.job import BuildEvents, BuildJob
from dahash_index.build.stages import ShardTask
from dahash_index.build.worker import ShardWorker, skipped_line


class LocalRunner:
    """Index the shards in this process (see the module docstring)."""

    def run(self, job: BuildJob, tasks: Sequence[ShardTask], events: BuildEvents) -> None:
        if not tasks:
            return
        worker = ShardWorker(job)
        workers = job.options.workers
        pool = DecodePool(workers if workers is not None
                          else default_workers(worker.encoder.device))
        todo = deque(tasks)
        alone = False  # after a decode process died: the first shard left, on its own

        def on_error(error: dict) -> None:
            tqdm.write(skipped_line(error), file=sys.stderr)
            events.scenes(0, 1)

        try:
            while todo:
                try:
                    for task, outcome in worker.stream([todo[0]] if alone else list(todo), pool,
                                                       on_error, lambda n: events.scenes(n, 0)):
                        todo.popleft()
                        if isinstance(outcome, str):
                            events.failed(task, outcome)
                        else:
                            events.staged(task, outcome)
                    alone = False
                except BrokenProcessPool:
                    # The stream reaches past the first shard left, so which shard's scene
                    # killed it is not known: that shard goes again on its own. Dying
                    # there, it is the culprit; if not, the stream goes on as before.
                    pool.restart()
                    if alone:
                        task = todo.popleft()
                        events.failed(task, f"shard {task.shard.url}: a decode process died "
                                            "twice while reading it; not indexed (run build "
                                            "again to retry)")
                    else:
                        tqdm.write(f"Warning: a decode process died; reading shard "
                                   f"{todo[0].shard.url} again", file=sys.stderr)
                    alone = not alone
        finally:
            pool.shutdown()
