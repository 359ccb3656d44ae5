"""The query service under load: latency of one query, throughput of 16 clients, and the same
while a build commits a new shard.

    python benchmarks/serve.py [--model runs/ucmerced/model.pt] [--seconds 60] [--clients 16]
                               [--requests 100]

The index is UC Merced built with the trained model into a temporary directory
(``dahash-index build``, minutes), minus the shard ``tenniscourt``, which the third phase
adds. ``dahash-index serve`` runs as its own process on
127.0.0.1. Queries are UC Merced scenes as 256-px JPEG uploads (``top=50``), sent with the
standard library's HTTP client, one connection per request.

  latency     ``--requests`` sequential queries after 5 warm-up ones: p50 and p99
  throughput  ``--clients`` threads querying for ``--seconds``: requests/s, errors
  with build  the same while ``dahash-index build`` adds ``tenniscourt`` (100 scenes) to the
              index; errors, and the rows /healthz reports before and after
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from _common import REPO, UCMERCED, machine

LATE_SHARD = "tenniscourt"
GOAL_P50_S = 0.150


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_image(url: str, name: str, data: bytes) -> int:
    """POST one image to /query?top=50; the HTTP status (0 when no answer came)."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"'
            f"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"{url}/query?top=50", body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def rows(url: str) -> int:
    import json

    with urllib.request.urlopen(f"{url}/healthz", timeout=30) as response:
        return json.loads(response.read())["rows"]


def load(url: str, queries: list[tuple[str, bytes]], clients: int, seconds: float
         ) -> tuple[int, int]:
    """``clients`` threads querying for ``seconds`` -> (requests answered 200, errors)."""
    done, errors = [0] * clients, [0] * clients
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            name, data = queries[i % len(queries)]
            if post_image(url, name, data) == 200:
                done[k] += 1
            else:
                errors[k] += 1
            i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done), sum(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "runs" / "ucmerced" / "model.pt")
    parser.add_argument("--data", type=Path, default=UCMERCED)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    cli = [str(Path(shutil.which("dahash-index") or REPO / ".venv/bin/dahash-index"))]

    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        shards.mkdir()
        for d in sorted(args.data.iterdir()):
            if d.is_dir():
                (shards / d.name).symlink_to(d.resolve(), target_is_directory=True)
        late = shards / LATE_SHARD
        late.unlink()  # added by the third phase
        index = Path(tmp) / "index"
        subprocess.run([*cli, "build", "--shards", str(shards), "--index", str(index),
                        "--model", str(args.model)], check=True, capture_output=True)
        queries = [(p.name, p.read_bytes()) for p in sorted(args.data.glob("*/*.jpg"))[::37]]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([*cli, "serve", "--index", str(index), "--port", str(port)],
                                  stderr=subprocess.PIPE, text=True)
        try:
            t0 = time.perf_counter()
            while True:
                try:
                    before = rows(url)
                    break
                except OSError:
                    assert server.poll() is None, server.stderr.read()
                    time.sleep(0.2)
            started = time.perf_counter() - t0
            for name, data in queries[:5]:
                assert post_image(url, name, data) == 200
            times = []
            for i in range(args.requests):
                name, data = queries[i % len(queries)]
                t = time.perf_counter()
                status = post_image(url, name, data)
                times.append(time.perf_counter() - t)
                assert status == 200, status
            p50, p99 = np.percentile(times, [50, 99])
            ok, errors = load(url, queries, args.clients, args.seconds)
            (shards / LATE_SHARD).symlink_to((args.data / LATE_SHARD).resolve(),
                                             target_is_directory=True)
            build = subprocess.Popen([*cli, "build", "--shards", str(shards), "--index",
                                      str(index), "--model", str(args.model)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            ok2, errors2 = load(url, queries, args.clients, args.seconds)
            build_rc = build.wait()
            time.sleep(1.5)  # the service looks at the manifest at most once a second
            after = rows(url)
        finally:
            server.terminate()
            server.wait(timeout=30)

    print(f"# benchmarks/serve.py --seconds {args.seconds:g} --clients {args.clients} "
          f"--requests {args.requests}")
    print(f"machine: {machine()}; UC Merced index, {len(queries)} query scenes (256-px JPEG), "
          "top 50; the service started in "
          f"{started:.1f} s")
    print(f"{'figure':<52}{'measured':>16}   goal")
    print(f"{'one query, warm: p50 / p99':<52}{p50 * 1e3:>7.0f} /{p99 * 1e3:>5.0f} ms   "
          f"p50 <= {GOAL_P50_S * 1e3:.0f} ms {'met' if p50 <= GOAL_P50_S else 'NOT met'}")
    print(f"{f'{args.clients} clients, {args.seconds:g} s: queries/s, errors':<52}"
          f"{ok / args.seconds:>9.1f}, {errors:>4}   0 errors "
          f"{'met' if errors == 0 else 'NOT met'}")
    print(f"{'the same while a build adds a shard: queries/s, errors':<52}"
          f"{ok2 / args.seconds:>9.1f}, {errors2:>4}   0 errors "
          f"{'met' if errors2 == 0 else 'NOT met'}")
    visible = after == before + 100 and build_rc == 0
    print(f"{'rows before / after the build (build exit status)':<52}"
          f"{before:>7} / {after:>5} ({build_rc})   the new rows visible "
          f"{'met' if visible else 'NOT met'}")


if __name__ == "__main__":
    main()
