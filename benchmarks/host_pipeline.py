"""How close the build's host side lets a GPU come to its limit, measured without a GPU.

    python benchmarks/host_pipeline.py [--data DIR] [--format jpeg|tiff] [--scenes 10000] \
        [--shards 20] [--device-rate 5600] [--workers 0,1] [--batch-size 256]

The GPU JPEG build (``build_index`` with JPEGs left to the device, batches of 256) runs for
real on the host: listing, reading, header parsing in decode processes, hand-over, batching,
staging and commits. Only the device is simulated: it takes ``--device-rate`` scenes/s
(default: the pipeline limit measured on an H200, issue 10) for decode + resize + network,
one batch after another, asynchronously. Launching a batch queues it, and reading its codes
back waits until the simulated device has finished it (sleeping, the GIL released, as a
CUDA copy to the host waits). The build's rate over ``--device-rate`` is then the share of
the GPU's limit that the host side leaves: the issue's goal for the real build is >= 0.80.

Also printed: the main process's CPU time per scene (all its threads), which bounds the
rate whatever the device: about 1 / that on one core's worth of GIL.

``--format tiff`` builds uncompressed RGB TIFFs instead (decoded on the CPU, in decode
processes, whatever the device): with as many workers as cores, the rate is about what the
decoders of this machine give.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _common import UCMERCED, machine, untrained_model
from gpu_build import make_archive

from dahash_index import runtime


class SimulatedDevice:
    """A device that runs one batch at a time at ``rate`` scenes/s, queued as a GPU is."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.free_at = 0.0
        self.ready: dict[int, float] = {}
        self.lock = threading.Lock()
        self.model_load = 0.0  # seconds spent making encoders (loading the model)
        self.model_load_cpu = 0.0  # CPU seconds of the same

    def launch(self, encoder, images) -> object:
        import torch

        out = torch.zeros((len(images), encoder.bits))
        with self.lock:
            start = max(time.perf_counter(), self.free_at)
            self.free_at = start + len(images) / self.rate
            self.ready[id(out)] = self.free_at
        return out

    def read_back(self, outputs) -> np.ndarray:
        with self.lock:
            ready = self.ready.pop(id(outputs))
        time.sleep(max(0.0, ready - time.perf_counter()))
        return np.zeros((outputs.shape[0], outputs.shape[1] // 8), np.uint8)


def _cpu_seconds() -> float:
    """CPU time of this process (every thread), seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def simulate(device: SimulatedDevice) -> None:
    """Route the encoder's device work to ``device``; JPEGs 'decode' to shared placeholders."""
    import torch

    from dahash_index import device_jpeg, encoder

    placeholders: dict[tuple[int, int], torch.Tensor] = {}

    def placeholder(height: int, width: int) -> torch.Tensor:
        if (height, width) not in placeholders:
            placeholders[height, width] = torch.zeros((height, width, 3), dtype=torch.uint8)
        return placeholders[height, width]

    def decode_jpegs(items, _device):
        return [placeholder(i.height, i.width) for i in items]

    device_jpeg.decode_jpegs = decode_jpegs
    encoder.SceneEncoder._launch = lambda self, images: device.launch(self, images)
    encoder.hash_codes = device.read_back
    construct = encoder.SceneEncoder.__init__

    def timed_init(self, *args, **kwargs):  # the model load is not the pipeline: timed apart
        start, cpu = time.perf_counter(), _cpu_seconds()
        construct(self, *args, **kwargs)
        device.model_load += time.perf_counter() - start
        device.model_load_cpu += _cpu_seconds() - cpu

    encoder.SceneEncoder.__init__ = timed_init


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=UCMERCED)
    parser.add_argument("--format", choices=("jpeg", "tiff"), default="jpeg")
    parser.add_argument("--scenes", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--device-rate", type=float, default=5600.0)
    parser.add_argument("--workers", default="0,1")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    runtime.configure_threads()

    from dahash_index.build.indexer import build_index
    from dahash_index.build.job import BuildOptions

    device = SimulatedDevice(args.device_rate)
    simulate(device)
    work = Path(tempfile.mkdtemp())
    try:
        if args.format == "jpeg":
            root, _, _ = make_archive(args.data, work / "archive", args.scenes, args.shards, 0, 1)
        else:
            _, root, _ = make_archive(args.data, work / "archive", 0, 1, args.scenes, args.shards)
        model = untrained_model(work / "model.pt", "random")
        print(f"machine: {machine()}; {args.scenes} {args.format.upper()} scenes in "
              f"{args.shards} shards, "
              f"batch {args.batch_size}; simulated device {args.device_rate:.0f} scenes/s; "
              f"best of {args.rounds}")
        print("build: end to end less the model load (timed apart; the backbone is random here)")
        print(f"{'workers':>7} {'build scenes/s':>15} {'of the device':>14} "
              f"{'main CPU ms/scene':>18}")
        for workers in map(int, args.workers.split(",")):
            best = None
            for round_ in range(args.rounds):
                index = work / f"index-{workers}-{round_}"
                options = BuildOptions(device="cpu", device_jpegs=True, workers=workers,
                                       batch_size=args.batch_size)
                device.model_load = device.model_load_cpu = 0.0
                start, cpu = time.perf_counter(), _cpu_seconds()
                report = build_index(str(root), index, model, options, progress=False)
                seconds = time.perf_counter() - start - device.model_load
                cpu = _cpu_seconds() - cpu - device.model_load_cpu
                assert report.scenes == args.scenes and report.errors == 0, report
                if best is None or seconds < best[0]:
                    best = seconds, cpu
                shutil.rmtree(index)
            seconds, cpu = best
            rate = args.scenes / seconds
            print(f"{workers:>7} {rate:>15.0f} {rate / args.device_rate:>14.2f} "
                  f"{1e3 * cpu / args.scenes:>18.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
