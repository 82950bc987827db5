"""`fmnist serve` through the life of a deployed service, on 127.0.0.1 only:

    python -m benchmarks.serve_lifecycle [--checkpoint RUN_DIR] [--seconds 8]

- sigterm: wrk (16 clients, a connection per request) against the default server; SIGTERM
  a third of the way in. Requests answered, refused and failed (wrk's read errors are requests
  cut mid-way; connect errors came after the port closed), exit status, seconds to exit.
- kill9: the same load; kill -9 of one of the two workers. Failures, and the seconds from
  the kill until a probe client (a request every 20 ms, each on a new connection) last failed.
- storm: 48 clients posting 32-image batches with a 0.3 s timeout, retrying at once (about
  3x capacity here), for `--seconds`; beside them a patient client posting one image at a
  time with no timeout. Its statuses and p99 during the storm, and the latency of its first
  request after the storm. wrk cannot give up and retry, so the storm is an asyncio client.

Every load is bounded in time; nothing asserts a timing. Prints one JSON line per scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import machine_info, machine_line
from benchmarks.serve_load import (
    WRK_SCRIPT,
    default_checkpoint,
    free_port,
    multipart,
    run_wrk,
    sample_pngs,
)


def start(checkpoint: str, port: int, *flags: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "fmnist", "serve", checkpoint, "--port", str(port), *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:  # both workers: /readyz answers from either, so ask until two pids answered
            pids = {httpx.get(f"http://127.0.0.1:{port}/v1/stats", timeout=2).json()["pid"] for _ in range(12)}
            if len(pids) >= 2 or "--workers" in flags:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start")


def under_wrk(url: str, body: Path, seconds: float, script: Path, action: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(run_wrk(url, body, "image/png", 16, seconds, script)))
    t.start()
    time.sleep(seconds / 3)
    extra = action()
    t.join()
    return {"wrk": result, **extra}


def probe(url: str, stop: threading.Event, log: list[tuple[float, bool]]) -> None:
    body = sample_pngs(1)[0]
    while not stop.is_set():
        try:
            ok = httpx.post(url, content=body, headers={"Content-Type": "image/png"}, timeout=5).status_code == 200
        except httpx.HTTPError:
            ok = False
        log.append((time.monotonic(), ok))
        time.sleep(0.02)


def sigterm(checkpoint: str, body: Path, script: Path, seconds: float) -> dict[str, Any]:
    port = free_port()
    proc = start(checkpoint, port)

    def stop() -> dict[str, Any]:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        return {"exit_status": code, "seconds_to_exit": round(time.monotonic() - t0, 2)}

    return under_wrk(f"http://127.0.0.1:{port}/v1/predict", body, seconds, script, stop)


def kill9(checkpoint: str, body: Path, script: Path, seconds: float) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(checkpoint, port)
    log: list[tuple[float, bool]] = []
    halt = threading.Event()
    prober = threading.Thread(target=probe, args=(url + "/v1/predict", halt, log))
    prober.start()

    def kill() -> dict[str, Any]:
        victim = httpx.get(url + "/v1/stats", timeout=5).json()["pid"]
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        return {"killed_at": t0}

    try:
        out = under_wrk(url + "/v1/predict", body, seconds, script, kill)
    finally:
        halt.set()
        prober.join()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    t0 = out.pop("killed_at")
    fails = [t - t0 for t, ok in log if not ok and t >= t0]
    return {**out, "probe_requests": len(log), "probe_failures": len(fails),
            "seconds_until_all_succeed": round(max(fails), 2) if fails else 0.0}  # fmt: skip


async def storm(checkpoint: str, seconds: float) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/predict"
    proc = start(checkpoint, port)
    pngs = sample_pngs(32)
    batch = multipart(pngs)
    batch_headers = {"Content-Type": "multipart/form-data; boundary=fmnistbenchboundary"}
    one = {"content": pngs[0], "headers": {"Content-Type": "image/png"}}
    end = time.monotonic() + seconds
    storm_counts: dict[str, int] = {}

    async def impatient(client: httpx.AsyncClient) -> None:
        while time.monotonic() < end:
            try:
                r = await client.post(url, content=batch, headers=batch_headers, timeout=0.3)
                key = str(r.status_code)
            except httpx.TimeoutException:
                key = "timeout"
            except httpx.HTTPError:
                key = "error"
            storm_counts[key] = storm_counts.get(key, 0) + 1

    patient: list[tuple[float, int]] = []

    async def patient_client(client: httpx.AsyncClient) -> None:
        while time.monotonic() < end:
            t0 = time.perf_counter()
            r = await client.post(url, timeout=60, **one)
            patient.append((time.perf_counter() - t0, r.status_code))

    try:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=100)) as client:
            await asyncio.gather(patient_client(client), *(impatient(client) for _ in range(48)))
            t0 = time.perf_counter()
            first = await client.post(url, timeout=60, **one)
            first_ms = (time.perf_counter() - t0) * 1e3
        ok = sorted(t for t, s in patient if s == 200)
        statuses: dict[str, int] = {}
        for _, s in patient:
            statuses[str(s)] = statuses.get(str(s), 0) + 1
        return {
            "storm": storm_counts, "patient_statuses": statuses,
            "patient_p99_ms": round(ok[int(0.99 * (len(ok) - 1))] * 1e3, 1) if ok else None,
            "first_after_ms": round(first_ms, 1), "first_after_status": first.status_code,
        }  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="run folder (default: an untrained default cnn)")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--only", choices=["sigterm", "kill9", "storm"], default=None)
    args = p.parse_args(argv)
    print(machine_line(machine_info()))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = args.checkpoint or default_checkpoint(folder)
        body = folder / "one.png"
        body.write_bytes(sample_pngs(1)[0])
        script = folder / "wrk.lua"
        # a connection per request, as a load balancer's fresh connections would be
        script.write_text(WRK_SCRIPT.replace('wrk.method = "POST"', 'wrk.method = "POST"\nwrk.headers["Connection"] = "close"'))
        for name in ("sigterm", "kill9", "storm"):
            if args.only not in (None, name):
                continue
            if name == "storm":
                result = asyncio.run(storm(checkpoint, args.seconds))
            else:
                result = {"sigterm": sigterm, "kill9": kill9}[name](checkpoint, body, script, args.seconds)
            print(json.dumps({"scenario": name, **result}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
