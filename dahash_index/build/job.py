"""What a build is asked to do (``BuildOptions``, checked once) and what every worker of it
needs (``BuildJob``: the options, the model, the shards' reader, the staging area), plus what a
runner reports back (``BuildEvents``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dahash_index.build.engines import ENGINES
from dahash_index.build.stages import ShardTask
from dahash_index.errors import check_int
from dahash_index.model.checkpoint import Checkpoint
from dahash_index.model.encoder import check_device
from dahash_index.model.precision import check_precision
from dahash_index.scenes.chips import Tiling
from dahash_index.scenes.scene import DEFAULT_MAX_PIXELS
from dahash_index.sources.labels import SceneLabels
from dahash_index.sources.shards import ShardReader
from dahash_index.sources.stac import StacReader
from dahash_index.store import KINDS
from dahash_index.store.staging import StagedResult


@dataclass(frozen=True)
class BuildOptions:
    """How to build; every value is checked when the options are made (ValueError)."""

    kind: str = "flat"
    nlist: int | None = None
    bands: tuple[int, int, int] | None = None
    batch_size: int | None = None  # None: the device's default (encoder.default_batch_size)
    workers: int | None = None  # decode processes; 0 decodes in line; None: default_workers
    max_pixels: int = DEFAULT_MAX_PIXELS
    storage_options: dict = field(default_factory=dict)
    device: str | None = None
    engine: str = "local"  # a name of ``engines.ENGINES``
    ray_address: str | None = None  # engine "ray": a cluster to join; None starts one here
    retry_errors: bool = False  # re-index committed shards that recorded scene errors
    prune: bool = False  # retire committed shards under the root that are gone
    wait: float = 0.0  # seconds to wait for another build holding the index
    tiling: Tiling | None = None  # large TIFFs as chips (``chips``); None: every scene whole
    precision: str | None = None  # "fp32", "tf32", "bf16"; None: the device's default
    device_jpegs: bool | None = None  # JPEGs decoded on the device; None: when it is a GPU
    # Where scenes' labels come from (``sources.labels``); None: the index's own choice, and
    # no labels for a new index.
    labels: SceneLabels | None = None
    stac: bool = False  # the URL is a STAC catalog or item collection (``sources.stac``)
    asset: str | None = None  # with stac: each item's asset to index; None: its first image
    # Called where the worker runs, after each encoded batch, with its scene count
    # (instrumentation); must pickle for the Ray engine.
    on_batch: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.nlist is not None:
            if self.kind != "ivf":
                raise ValueError("nlist applies only to kind 'ivf'")
            check_int("nlist", self.nlist, 1)
        if self.bands is not None:
            if len(self.bands) != 3:
                raise ValueError(f"bands must be three band numbers, got {self.bands!r}")
            for band in self.bands:
                check_int("band numbers (1-based)", band, 1)
        if self.batch_size is not None:
            check_int("batch size", self.batch_size, 1)
        if self.precision is not None:
            check_precision(self.precision)
        check_device(self.device)
        if self.workers is not None:
            check_int("workers", self.workers, 0)
        check_int("max_pixels", self.max_pixels, 1)
        ENGINES.check(self.engine)
        if self.asset is not None and not self.stac:
            raise ValueError("asset applies only to a STAC catalog (stac)")
        if self.ray_address is not None and self.engine != "ray":
            raise ValueError("ray_address applies only to engine 'ray'")
        if not isinstance(self.wait, (int, float)) or self.wait < 0:
            raise ValueError(f"wait must be a non-negative number of seconds, got {self.wait!r}")


@dataclass(frozen=True)
class BuildJob:
    """What every worker of a build needs, made once by the build (sent to Ray as is): the
    options, the model, the reader of the shards URL (resolved once), and the index's staging
    area, where workers put their shard results."""

    options: BuildOptions
    checkpoint: Checkpoint
    reader: ShardReader | StacReader
    staging: Path


@dataclass
class BuildEvents:
    """What a runner reports, as it happens (called from the thread that runs ``run``)."""

    staged: Callable[[ShardTask, StagedResult], None]
    failed: Callable[[ShardTask, str], None]  # a one-line reason; the shard is retried later
    scenes: Callable[[int, int], None] = lambda encoded, errors: None  # progress


class Runner(Protocol):
    def run(self, job: BuildJob, tasks: Sequence[ShardTask], events: BuildEvents) -> None:
        """Index every task: ``events.staged`` or ``events.failed`` once per task, in any
        order. Raises only for what no shard can succeed with (a bad model, no device)."""
