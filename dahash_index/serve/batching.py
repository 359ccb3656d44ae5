"""Encoding the uploads of concurrent requests together.

One thread encodes: a request's images wait up to ``window`` seconds for other requests'
images to join them, then all go through the network as one batch (up to ``max_images``).
On a CPU a batch of 16 costs much less than 16 batches of one; a lone request waits
``window`` more.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dahash_index.query.scene_index import SceneIndex, renamed_error


@dataclass
class _Job:
    images: Sequence[bytes]
    names: Sequence[str]
    bands: tuple[int, int, int] | None
    max_pixels: int
    window: tuple[int, int, int, int] | None
    done: threading.Event = field(default_factory=threading.Event)
    codes: np.ndarray | None = None
    owners: np.ndarray | None = None
    errors: list[str | None] | None = None
    vectors: np.ndarray | None = None
    failure: BaseException | None = None


class EncodeBatcher:
    """``encode`` for many threads at once, batched (see the module docstring)."""

    def __init__(self, index: SceneIndex, window: float = 0.005, max_images: int = 64,
                 orientations: int = 1) -> None:
        self.index, self.window, self.max_images = index, window, max_images
        self.orientations = orientations  # each image is encoded in this many (4: rotations)
        self._jobs: list[_Job] = []
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None

    def encode(self, images: Sequence[bytes], names: Sequence[str],
               bands: tuple[int, int, int] | None, max_pixels: int,
               window: tuple[int, int, int, int] | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[str | None], np.ndarray | None]:
        """-> (codes uint8 (m, K/8) of the images that decoded, in order, several for an image
        cut into chips or encoded in several orientations (``SceneIndex.encode_chips``);
        owners int64 (m,): the image of each code; per image its error naming it by
        ``names``, or None; the codes' re-rank vectors (m, D) or None). Blocks until its batch
        is encoded."""
        job = _Job(images, names, bands, max_pixels, window)
        with self._ready:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="encode-batcher",
                                                daemon=True)
                self._thread.start()
            self._jobs.append(job)
            self._ready.notify()
        job.done.wait()
        if job.failure is not None:
            raise job.failure
        return job.codes, job.owners, job.errors, job.vectors

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._jobs:
                    self._ready.wait()
            time.sleep(self.window)  # let concurrent requests join
            with self._ready:
                batch, count = [], 0
                while self._jobs and (not batch or
                                      count + len(self._jobs[0].images) <= self.max_images):
                    job = self._jobs.pop(0)
                    batch.append(job)
                    count += len(job.images)
            groups: dict[tuple, list[_Job]] = {}
            for job in batch:
                groups.setdefault((job.bands, job.max_pixels, job.window), []).append(job)
            for (bands, max_pixels, window), jobs in groups.items():
                self._encode(jobs, bands, max_pixels, window)

    def _encode(self, jobs: list[_Job], bands, max_pixels: int, window) -> None:
        images = [image for job in jobs for image in job.images]
        try:
            encoded = self.index.encode_chips(images, bands, batch_size=len(images),
                                              max_pixels=max_pixels, window=window,
                                              orientations=self.orientations)
            start = 0
            owners = encoded.owners
            for job in jobs:
                n = len(job.images)
                mine = encoded.errors[start:start + n]
                rows = (owners >= start) & (owners < start + n)
                job.codes, job.owners = encoded.codes[rows], owners[rows] - start
                job.vectors = encoded.vectors[rows] if encoded.vectors is not None else None
                job.errors = [None if e is None else renamed_error(e, old, new)
                              for e, old, new in zip(mine, encoded.names[start:start + n],
                                                     job.names, strict=True)]
                start += n
        except BaseException as err:  # handed to every waiting request: none waits forever
            for job in jobs:
                job.failure = err
        for job in jobs:
            job.done.set()
