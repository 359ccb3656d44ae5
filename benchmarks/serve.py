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

Goals: p50 <= 150 ms, no errors, the new rows visible. Writes benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from _common import REPO, UCMERCED, headline, machine, results_header, write_results

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
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve.json")
    args = parser.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"{args.model}: no model there (make demo trains it)")
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

    p50, p99 = np.percentile(times, [50, 99])
    visible = after == before + 100 and build_rc == 0
    load_goal = f"{args.clients} clients, {args.seconds:g} s"
    figures = [
        headline(f"one query, warm, each of {args.requests} (median: p50)", times, "ms",
                 f"p50 <= {GOAL_P50_S * 1e3:.0f} ms", p50 <= GOAL_P50_S, scale=1e3),
        headline("one query, warm: p99", [p99], "ms", "reported", scale=1e3),
        headline(f"queries/s, {load_goal}", [ok / args.seconds], "/s", "reported"),
        headline(f"errors, {load_goal}", [errors], "", "0", errors == 0),
        headline("queries/s while a build adds a shard", [ok2 / args.seconds], "/s",
                 "reported"),
        headline("errors while a build adds a shard", [errors2], "", "0", errors2 == 0),
        headline("rows added by the build, visible to the service", [after - before], "",
                 f"100 (build exit status {build_rc})", visible),
        headline("service start, until /healthz answers", [started], "s", "reported"),
    ]
    print(f"machine: {machine()}; UC Merced index, {len(queries)} query scenes (256-px JPEG), "
          "top 50")
    for f in figures:
        status = {True: " met", False: " NOT met", None: ""}[f["met"]]
        print(f"{f['figure']:<60}{f['median']:>9.1f} {f['unit']:<3} {f['goal']}{status}")
    write_results(args.out, results_header(sys.argv) | {
        "queries": len(queries), "rows_before": before, "rows_after": after,
        "headline": figures})


if __name__ == "__main__":
    main()
