"""Load test of `fmnist serve` with a real load generator (wrk), side by side in one run:

    python -m benchmarks.serve_load [--seconds 10] [--checkpoint RUN_DIR] [--quick]

Each server configuration below is started as `fmnist serve` on 127.0.0.1 and driven by wrk
(Debian's package; `make bench-serve` installs it) with 1, 8, 32 and 128 keep-alive clients
posting one PNG each (raw image/png body), plus a batch of 32 images (multipart) and a lean
`?fields=label,probability` answer at 8 clients. For every scenario: requests/s, images/s,
p50/p99/p99.9 latency, status codes, wrk's socket errors and timeouts, the server's RSS (all its
processes) and the forward-pass size histogram from /v1/stats. The ceiling: the same
predictor in this process, no HTTP, decoding and predicting one image at a time and 64 at a
time, 32 and 64 at a time (torch and onnxruntime). wrk runs on the same cores as the server (2 here), so the server's figures are a lower
bound. Not a test: nothing asserts a timing; it exits 1 when a request got anything but a 200
(or a 503 in the overload scenario). Results: a markdown table, and JSON under
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from benchmarks.common import machine_info, machine_line, machine_slug

RESULTS = Path(__file__).parent / "results"

# name -> `fmnist serve` flags. "before" is the server as it was before batching: one process,
# eager PyTorch, one forward pass per request in turn.
CONFIGS: dict[str, list[str]] = {
    "before (no batching, 1 worker, torch)": ["--no-batching", "--workers", "1", "--backend", "torch"],
    "batching, 1 worker, torch": ["--workers", "1", "--backend", "torch"],
    "batching, auto workers, torch": ["--backend", "torch"],
    "default (batching, auto workers, auto backend)": [],
}
CLIENTS = (1, 8, 32, 128)
CEILING_BATCHES = (1, 32, 64)

# wrk's Lua hooks: post the body file, count status codes per thread, print one JSON line.
WRK_SCRIPT = r"""
wrk.method = "POST"
local f = assert(io.open(os.getenv("FMNIST_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("FMNIST_CONTENT_TYPE")
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local counts = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do counts[tostring(k)] = (counts[tostring(k)] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(counts) do table.insert(parts, string.format('"%s": %d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'FMNIST_RESULT {"requests": %d, "duration_s": %f, "p50_ms": %f, "p99_ms": %f, "p999_ms": %f, '
    .. '"max_ms": %f, "errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, '
    .. '"statuses": {%s}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3, latency:percentile(99.9) / 1e3, latency.max / 1e3,
    e.connect, e.read, e.write, e.timeout, table.concat(parts, ", ")))
end
"""


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="per scenario (default 10)")
    p.add_argument("--checkpoint", default=None,
                   help="run folder to serve (default: an untrained default-recipe cnn; speed "
                        "does not depend on the weights)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="8 clients only, first and last config")
    p.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and its children (the worker processes), in MB."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return [k for c in kids for k in (c, *_children(c))]


def start_server(checkpoint: str, port: int, flags: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fmnist", "serve", checkpoint, "--port", str(port),
           "--log-level", "warning", *flags]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early:\n{proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                # each worker process answers readyz once warm: ask a few times
                for _ in range(20):
                    httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready in 120 s")


def stop_server(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err or ""


def pass_sizes(port: int, workers: int) -> dict[int, Counter[int]]:
    """pid -> forward-pass size histogram, from /v1/stats of every worker (a fresh connection
    each time: the kernel hands connections to the workers)."""
    seen: dict[int, Counter[int]] = {}
    for _ in range(40 * workers):
        stats = httpx.get(f"http://127.0.0.1:{port}/v1/stats", timeout=5).json()
        seen[stats["pid"]] = Counter({int(k): v for k, v in (stats["pass_sizes"] or {}).items()})
        if len(seen) >= workers:
            break
    return seen


def run_wrk(url: str, body: Path, content_type: str, clients: int, seconds: float, script: Path) -> dict[str, Any]:
    cmd = ["wrk", "-t", str(min(clients, 2)), "-c", str(clients), "-d", f"{seconds:g}s",
           "--timeout", "30s", "-s", str(script), url]  # fmt: skip
    env = {**os.environ, "FMNIST_BODY": str(body), "FMNIST_CONTENT_TYPE": content_type}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 120)
    line = next((x for x in out.stdout.splitlines() if x.startswith("FMNIST_RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk gave no result:\n{out.stdout}\n{out.stderr}")
    return json.loads(line.removeprefix("FMNIST_RESULT "))


def sample_pngs(n: int) -> list[bytes]:
    try:
        from fmnist.datasets import load_arrays

        images = load_arrays("fashion-mnist", "test", download=False)[0][:n]
    except Exception:  # the benchmark also runs without the dataset
        images = np.random.default_rng(0).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    out = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def multipart(files: list[bytes], boundary: str = "fmnistbenchboundary") -> bytes:
    parts = [
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{i}.png\"\r\n"
        f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n"
        for i, data in enumerate(files)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def ceiling(checkpoint: str, backend: str, png: bytes, seconds: float) -> dict[str, float]:
    """Images/s of the server's predictor in this process: no HTTP, no JSON."""
    from fmnist.images import open_image
    from fmnist.serve.backends import load_predictor

    predictor = load_predictor(checkpoint, backend=backend)
    predictor.warmup()
    out = {}
    for n in CEILING_BATCHES:
        files = [png] * n
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            predictor.predict([open_image(f) for f in files])
            count += n
        out[f"batch_{n}_images_per_s"] = count / (time.perf_counter() - t0)
    return out


def default_checkpoint(folder: Path, seed: int = 0) -> str:
    import torch

    from fmnist.checkpoint import FASHION_CLASSES, save_model
    from fmnist.models import build_model
    from fmnist.recipes import get_recipe

    recipe = get_recipe("default")
    torch.manual_seed(seed)
    save_model(folder, build_model(recipe.model, recipe.model_config), {
        "classes": FASHION_CLASSES, "normalize": {"mean": 0.286, "std": 0.353},
        "dataset": "fashion-mnist", "tta_flip": recipe.tta_flip,
    })  # fmt: skip
    return str(folder)


def main(argv: list[str] | None = None) -> int:
    args = get_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: `make bench-serve` installs it (Debian's wrk).")
    info = machine_info()
    configs = dict(CONFIGS)
    if args.quick:
        names = list(configs)
        configs = {names[0]: configs[names[0]], names[-1]: configs[names[-1]]}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        checkpoint = args.checkpoint or default_checkpoint(tmp / "ckpt")
        pngs = sample_pngs(32)
        script = tmp / "post.lua"
        script.write_text(WRK_SCRIPT)
        single, batch = tmp / "one.png", tmp / "batch.bin"
        single.write_bytes(pngs[0])
        batch.write_bytes(multipart(pngs))
        scenarios = [(f"{c} clients, 1 image", c, single, "image/png", "") for c in
                     ((8,) if args.quick else CLIENTS)]  # fmt: skip
        scenarios += [
            ("8 clients, 1 image, ?fields=label,probability", 8, single, "image/png",
             "?fields=label,probability"),
            ("8 clients, 32 images (multipart)", 8, batch,
             "multipart/form-data; boundary=fmnistbenchboundary", ""),
        ]  # fmt: skip
        for name, flags in configs.items():
            port = free_port()
            server = start_server(checkpoint, port, flags)
            model = httpx.get(f"http://127.0.0.1:{port}/v1/model", timeout=5).json()
            workers = len(_children(server.pid)) or 1
            try:
                for scenario, clients, body, ctype, query in scenarios:
                    before = pass_sizes(port, workers)
                    rss0 = tree_rss_mb(server.pid)
                    url = f"http://127.0.0.1:{port}/v1/predict{query}"
                    result = run_wrk(url, body, ctype, clients, args.seconds, script)
                    after = pass_sizes(port, workers)
                    hist: Counter[int] = Counter()
                    for pid, counts in after.items():
                        hist.update(counts)
                        hist.subtract(before.get(pid, Counter()))
                    images = 32 if "32 images" in scenario else 1
                    rows.append({
                        "config": name, "flags": flags, "backend": model.get("backend"),
                        "workers": workers, "scenario": scenario, "clients": clients,
                        "images_per_request": images, **result,
                        "requests_per_s": result["requests"] / result["duration_s"],
                        "rss_mb_before": rss0, "rss_mb_after": tree_rss_mb(server.pid),
                        "pass_sizes": {k: v for k, v in sorted(hist.items()) if v > 0},
                    })  # fmt: skip
                    print_row(rows[-1], file=sys.stderr)
            finally:
                stop_server(server)
        ceilings = {b: ceiling(checkpoint, b, pngs[0], min(args.seconds, 5)) for b in ("torch", "auto")}

    failed = report(rows, ceilings, info, model, args)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"{time.strftime('%Y-%m-%d')}-{machine_slug(info)}-serve-load.json"
        out.write_text(json.dumps({"machine": info, "seconds": args.seconds, "rows": rows,
                                   "ceiling": ceilings}, indent=1))  # fmt: skip
        print(f"\nSaved {out}", file=sys.stderr)
    return 1 if failed else 0


def print_row(row: dict[str, Any], file: Any = sys.stdout) -> None:
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(row["statuses"].items()))
    errors = sum(row["errors"].values())
    hist = row["pass_sizes"]
    mean_pass = sum(k * v for k, v in hist.items()) / max(1, sum(hist.values())) if hist else None
    print(
        f"| {row['config']} | {row['scenario']} | {row['requests_per_s']:,.0f} | "
        f"{row['requests_per_s'] * row['images_per_request']:,.0f} | {row['p50_ms']:.1f} | "
        f"{row['p99_ms']:.1f} | {row['p999_ms']:.1f} | {statuses} | {errors} | "
        f"{row['rss_mb_after']:,.0f} | {f'{mean_pass:.1f}' if mean_pass else '-'} |",
        file=file,
    )


def ok_per_s(row: dict[str, Any]) -> float:
    return row["statuses"].get("200", 0) / row["duration_s"]


def report(rows: list[dict[str, Any]], ceilings: dict[str, dict[str, float]], info: dict[str, Any],
           model: dict[str, Any], args: argparse.Namespace) -> bool:  # fmt: skip
    print(f"\n`fmnist serve` under wrk: model `{model['model']}` ({model['parameters']:,} "
          f"parameters), {args.seconds:g} s per scenario, loopback, keep-alive. "
          f"{machine_line(info)}; wrk shares the cores with the server.\n")  # fmt: skip
    print("| server | load | requests/s | images/s | p50 ms | p99 ms | p99.9 ms | statuses | "
          "socket errors | RSS MB | mean pass |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    failed = False
    for row in rows:
        print_row(row)
        allowed = {"200", "503"} if row["clients"] >= 128 else {"200"}
        failed |= bool(set(row["statuses"]) - allowed) or sum(row["errors"].values()) > 0
    base = {r["scenario"]: ok_per_s(r) for r in rows if r["config"] == next(iter(CONFIGS))}
    print("\nAnswered requests (200s) per second against the server before batching, same run:")
    for row in rows:
        if row["config"] != next(iter(CONFIGS)) and row["scenario"] in base:
            print(f"- {row['config']}, {row['scenario']}: "
                  f"{ok_per_s(row) / base[row['scenario']]:.2f}x")  # fmt: skip
    print("\nCeiling, the same predictor in-process (decode + predict, no HTTP), images/s:")
    for backend, c in ceilings.items():
        print(f"- {backend}: " + ", ".join(
            f"{n} at a time {c[f'batch_{n}_images_per_s']:,.0f}" for n in CEILING_BATCHES))
    return failed


if __name__ == "__main__":
    sys.exit(main())
