"""A 20,000 x 20,000 px scene: peak memory of a tiled build, and bytes read for a window of it
as a COG on S3.

    python benchmarks/large_scene.py [--model runs/ucmerced/model.pt] [--work DIR]

1. Writes a 20,000 x 20,000 px 3-band tiled, deflate GeoTIFF (EPSG:32616, 1 m) assembled from
   UC Merced scenes (``tests/mosaic.py``, one row of scenes at a time), and the same as a COG.
2. Peak RSS of ``dahash-index build --tile 256 --stride 2000`` over the big scene (100 chips
   spread over the whole scene, so every read crosses it) against ``dahash-index build`` over
   100 plain 256-px UC Merced scenes, same model and batch size. Goal: <= 1.3 x.
3. The COG on a moto S3 server on 127.0.0.1: a 256 px and a 1024 px window read the way
   ``query --window`` reads it (``scene_chips.open_scene`` + ``read_window``), bytes fetched
   (with the 64 kB read-ahead) against the compressed bytes of the internal tiles the window
   needs (from the COG's BLOCK_SIZE tags) and against the file size. Goal: <= 2 x the tiles' bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rasterio
import rasterio.shutil
from _common import REPO, UCMERCED, machine

sys.path.insert(0, str(REPO / "tests"))
from mosaic import write_mosaic  # noqa: E402

SIZE = 20_000
GOALS = {"rss": 1.3, "bytes": 2.0}


def peak_rss_mb(command: list[str]) -> tuple[float, float]:
    """Run ``command``; its peak RSS (MB, from wait4) and wall time (s)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed: {process.stderr.read().decode()[-400:]}")
    return usage.ru_maxrss / 1024, wall


def needed_bytes(ds: rasterio.io.DatasetReader, window: tuple[int, int, int, int]) -> int:
    """Compressed bytes of the full-resolution internal tiles that ``window`` touches."""
    bw, bh = ds.block_shapes[0][1], ds.block_shapes[0][0]
    col, row, w, h = window
    total = 0
    for by in range(row // bh, (row + h - 1) // bh + 1):
        for bx in range(col // bw, (col + w - 1) // bw + 1):
            total += int(ds.get_tag_item(f"BLOCK_SIZE_{bx}_{by}", "TIFF", bidx=1))
    return total


def window_bytes(cog: Path, windows: list[tuple[int, int, int, int]]) -> list[tuple]:
    import boto3
    from moto.server import ThreadedMotoServer

    from dahash_index.sources.windows import ReadStats, open_scene, read_window

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **creds)
    s3.create_bucket(Bucket="scenes")
    s3.upload_file(str(cog), "scenes", "big/cog.tif")
    storage = {"key": "testing", "secret": "testing",
               "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    out = []
    with rasterio.open(cog) as local:
        for window in windows:
            stats = ReadStats()
            start = time.perf_counter()
            with open_scene("s3://scenes/big/cog.tif", storage, stats) as ds:
                image, _ = read_window(ds, window, None, None)
            seconds = time.perf_counter() - start
            out.append((window, stats.bytes_read, needed_bytes(local, window), stats.file_bytes,
                        stats.requests, seconds, image.shape))
    server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "runs" / "ucmerced" / "model.pt")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="large-scene-"))
    cli = shutil.which("dahash-index") or str(REPO / ".venv" / "bin" / "dahash-index")
    classes = sorted(p for p in UCMERCED.iterdir() if p.is_dir())
    scenes = [s for c in classes for s in sorted(c.iterdir())[:5]]

    big = work / "big" / "scene" / "big.tif"
    if not big.exists():
        big.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        write_mosaic(big, scenes, 79, (SIZE, SIZE))
        print(f"wrote {big} ({big.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
    cog = work / "cog.tif"
    if not cog.exists():
        rasterio.shutil.copy(big, cog, driver="COG", blocksize=256, compress="deflate")
    plain = work / "plain" / "scenes"
    plain.mkdir(parents=True, exist_ok=True)
    for scene in scenes[:100]:
        link = plain / scene.name
        if not link.exists():
            link.symlink_to(scene)

    common = ["--model", str(args.model), "--batch-size", "32"]
    shutil.rmtree(work / "index-plain", ignore_errors=True)
    shutil.rmtree(work / "index-tiled", ignore_errors=True)
    plain_rss, plain_s = peak_rss_mb([cli, "build", "--shards", str(plain.parent), "--index",
                                      str(work / "index-plain"), *common])
    tiled_rss, tiled_s = peak_rss_mb([cli, "build", "--shards", str(big.parent.parent),
                                      "--index", str(work / "index-tiled"), "--tile", "256",
                                      "--stride", "2000", *common])
    windows = [(10_000, 10_000, 256, 256), (5_120, 7_680, 1024, 1024)]
    reads = window_bytes(cog, windows)

    print(f"# benchmarks/large_scene.py (peak RSS from wait4; bytes counted where fsspec "
          f"fetches them from the S3 server; moto answers each ranged GET of a 1.3 GB object "
          f"in about a second, hence the times)\nmachine: {machine()}\nscene: {SIZE} x {SIZE} "
          f"px, 3 bands, tiled 256, deflate, {big.stat().st_size / 1e6:.0f} MB; COG "
          f"{cog.stat().st_size / 1e6:.0f} MB")
    ratio = tiled_rss / plain_rss
    verdict = "met" if ratio <= GOALS["rss"] else "NOT met"
    print(f"peak RSS, build of 100 plain 256-px scenes      {plain_rss:8.0f} MB ({plain_s:.0f} s)")
    print(f"peak RSS, --tile 256 --stride 2000 of the scene  {tiled_rss:8.0f} MB ({tiled_s:.0f} s, "
          f"100 chips)")
    print(f"ratio                                            {ratio:8.2f}    goal <= "
          f"{GOALS['rss']}: {verdict}")
    for window, got, needed, size, requests, seconds, shape in reads:
        r = got / needed
        verdict = "met" if r <= GOALS["bytes"] else "NOT met"
        print(f"window {window}: read {got / 1e3:.0f} kB in {requests} reads ({seconds:.2f} s) "
              f"for {needed / 1e3:.0f} kB of tiles = {r:.2f} x (goal <= {GOALS['bytes']}: "
              f"{verdict}); {100 * got / size:.3f} % of the {size / 1e6:.0f} MB file; "
              f"image {shape}")


if __name__ == "__main__":
    main()
