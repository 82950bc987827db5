"""Load test for `fmnist serve`: concurrent clients on loopback for a fixed time.

    python benchmarks/serve_load.py [--seconds 10] [--clients 8] [--batch 32] [--checkpoint RUN_DIR]

Starts the server (a subprocess, 127.0.0.1, free port), then for each scenario (one image per
request, then `--batch` images per request, all as multipart PNG uploads) runs `--clients`
threads that post back to back for `--seconds`. Prints a markdown table: requests/s, images/s,
p50/p99 latency, failed requests (must be 0), and the server's RSS before and after. Without
`--checkpoint` it serves an untrained model of `--model` (speed does not depend on the weights).
The clients share the machine's cores with the server, so the numbers are a lower bound.
Not a test: nothing here asserts a timing. Exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

MAX_SECONDS = 120
MAX_CLIENTS = 64


@dataclass
class Result:
    name: str
    images_per_request: int
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="per scenario (default 10)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--batch", type=int, default=32, help="images per batch request (default 32)")
    p.add_argument("--checkpoint", default=None, help="run folder or checkpoint to serve")
    p.add_argument("--model", default="cnn", help="untrained model to serve without --checkpoint")
    args = p.parse_args(argv)
    if not 0 < args.seconds <= MAX_SECONDS:
        p.error(f"--seconds must be in (0, {MAX_SECONDS}]")
    if not 1 <= args.clients <= MAX_CLIENTS:
        p.error(f"--clients must be in 1..{MAX_CLIENTS}")
    if not 1 <= args.batch <= 64:
        p.error("--batch must be in 1..64 (the server's default --max-batch)")
    return args


def test_images(n: int) -> list[bytes]:
    """PNG files of real test images when the data is there, else synthetic ones."""
    try:
        from fmnist.datasets import load_arrays

        images = load_arrays("fashion-mnist", "test")[0][:n]
    except Exception:  # the benchmark also runs without the dataset
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    out = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(checkpoint: str, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fmnist", "serve", checkpoint, "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early:\n{proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready in 60 s")


def run_scenario(url: str, result: Result, files: list[tuple], clients: int, seconds: float) -> None:
    lock = threading.Lock()
    times = [0.0, 0.0]  # start, stop: set once every client is warm, before any is released

    def go() -> None:
        times[0] = time.perf_counter()
        times[1] = times[0] + seconds

    start = threading.Barrier(clients + 1, action=go)

    def client() -> None:
        lat: list[float] = []
        failed, errors = 0, []
        with httpx.Client(timeout=30) as c:
            for _ in range(2):  # warm the connection and the server path
                c.post(url, files=files)
            start.wait()
            while time.perf_counter() < times[1]:
                t0 = time.perf_counter()
                try:
                    r = c.post(url, files=files)
                    ok = r.status_code == 200 and r.json()["count"] == len(files)
                    if not ok:
                        errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                except (httpx.HTTPError, ValueError, KeyError) as e:
                    ok = False
                    errors.append(repr(e))
                if ok:
                    lat.append(time.perf_counter() - t0)
                else:
                    failed += 1
        with lock:
            result.latencies.extend(lat)
            result.failed += failed
            result.errors.extend(errors[:3])

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join()
    result.wall = time.perf_counter() - times[0]


def main(argv: list[str] | None = None) -> int:
    args = get_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            import torch

            from fmnist.checkpoint import FASHION_CLASSES, save_model
            from fmnist.models import build_model

            torch.manual_seed(0)
            save_model(tmp, build_model(args.model), {
                "classes": FASHION_CLASSES, "normalize": {"mean": 0.286, "std": 0.353},
                "dataset": "fashion-mnist",
            })  # fmt: skip
            checkpoint = tmp
        pngs = test_images(args.batch)
        port = free_port()
        url = f"http://127.0.0.1:{port}/v1/predict"
        server = start_server(checkpoint, port)
        try:
            model = httpx.get(f"http://127.0.0.1:{port}/v1/model", timeout=5).json()
            rss_before = rss_mb(server.pid)
            results = []
            for name, n in (("single image", 1), (f"batch of {args.batch}", args.batch)):
                files = [("file", (f"{i}.png", pngs[i % len(pngs)], "image/png")) for i in range(n)]
                result = Result(name, n)
                run_scenario(url, result, files, args.clients, args.seconds)
                results.append(result)
            rss_after = rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(10)

    print(f"\n`fmnist serve` load test: model `{model['model']}` ({model['parameters']:,} parameters), "
          f"{args.clients} clients, {args.seconds:g} s per scenario, loopback, multipart PNG uploads; "
          f"{platform.machine()}, {os.cpu_count()} CPUs (clients share them with the server).\n")  # fmt: skip
    print("| scenario | requests | requests/s | images/s | p50 ms | p99 ms | failed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    failed = 0
    for r in results:
        lat = np.array(r.latencies) * 1e3
        p50, p99 = (np.percentile(lat, [50, 99]) if len(lat) else (float("nan"),) * 2)
        rps = len(lat) / r.wall
        print(f"| {r.name} | {len(lat)} | {rps:.1f} | {rps * r.images_per_request:.0f} | "
              f"{p50:.1f} | {p99:.1f} | {r.failed} |")  # fmt: skip
        failed += r.failed
        for e in r.errors[:5]:
            print(f"  error: {e}", file=sys.stderr)
    print(f"\nServer RSS: {rss_before:.0f} MB before, {rss_after:.0f} MB after.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
