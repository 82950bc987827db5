"""`fmnist serve` through the life of a deployed service, on 127.0.0.1 only:

    python -m benchmarks.serve_lifecycle [--checkpoint RUN_DIR] [--seconds 8] [--out FILE.json]

- sigterm: wrk (16 clients, a connection per request) against the default server; SIGTERM
  a third of the way in. Requests answered and cut (wrk's read errors: a connection reset
  before its answer; refused connections after the port closed show as wrk's connect or write
  errors and were never accepted), exit status, seconds to exit. Each worker logs, as it closes
  its port, the requests in progress, the connections accepted with their request still to come
  (answered: fmnist.serve.server.FirstRequestGrace) and the connections the kernel had queued
  that it never accepted (reset with the socket: intrinsic to closing a port under load, which
  `--drain-delay` behind a load balancer avoids); the cut requests are reported beside them.
- kill9: the same load; kill -9 of one of the two workers. Failures, and the seconds from
  the kill until a probe client (a request every 20 ms, each on a new connection) last failed,
  and until the replacement worker (warm before it listens) answered; the resident memory of
  the supervising parent and of each worker at the start.
- storm: 48 clients posting 32-image batches with a 0.3 s timeout, retrying at once (about
  3x capacity here), for `--seconds`; beside them a patient client posting one image at a
  time with no timeout. Its statuses and p99 during the storm, and the latency of its first
  request after the storm. wrk cannot give up and retry, so the storm is an asyncio client.
- hol: one worker; wrk (2 keep-alive clients, one small PNG each) while another client posts
  a 6,000 x 6,000 PNG (36 M pixels, a 35 KB file) once a second: the small requests' p50/p99/max
  beside the huge decodes, and the huge requests' own latency.

Every load is bounded in time; nothing asserts a timing. Prints one JSON line per scenario;
with --out, writes them with the machine to a results file (docs/serving.md's table reads it:
`python -m benchmarks.docs_tables`).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
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
    _children,
    default_checkpoint,
    free_port,
    multipart,
    run_wrk,
    sample_pngs,
)


def start(checkpoint: str, port: int, *flags: str, log: Path | None = None) -> subprocess.Popen:
    err = open(log, "w") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "fmnist", "serve", checkpoint, "--port", str(port), *flags],
                            stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
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


CLOSING = re.compile(r"Closing the port: (\d+) request\(s\) in progress, (\d+) connection\(s\) accepted with "
                     r"their request still to come, (\d+) idle; (\d+) connection\(s\) queued in the kernel")


def sigterm(checkpoint: str, body: Path, script: Path, seconds: float) -> dict[str, Any]:
    port = free_port()
    log = body.parent / "sigterm.log"
    proc = start(checkpoint, port, log=log)

    def stop() -> dict[str, Any]:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        return {"exit_status": code, "seconds_to_exit": round(time.monotonic() - t0, 2)}

    out = under_wrk(f"http://127.0.0.1:{port}/v1/predict", body, seconds, script, stop)
    text = log.read_text()
    closing = [tuple(map(int, m.groups())) for m in CLOSING.finditer(text)]
    # summed over the workers' "Closing the port" lines
    keys = ("in_progress", "accepted_request_to_come", "idle", "kernel_queue_reset")
    out["closing"] = {k: sum(c[i] for c in closing) for i, k in enumerate(keys)}
    out["closing"]["workers"] = len(closing)
    return out


def kill9(checkpoint: str, body: Path, script: Path, seconds: float) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(checkpoint, port)
    rss = {"parent_rss_mb": round(rss_mb(proc.pid), 1),
           "worker_rss_mb": [round(rss_mb(k), 1) for k in _children(proc.pid) if rss_mb(k) > 50]}  # fmt: skip
    log: list[tuple[float, bool]] = []
    halt = threading.Event()
    prober = threading.Thread(target=probe, args=(url + "/v1/predict", halt, log))
    prober.start()

    def kill() -> dict[str, Any]:
        before = answering_pids(url)
        victim = min(before)
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        replaced = None
        deadline = t0 + 120
        while replaced is None and time.monotonic() < deadline:  # a new pid answers
            try:
                pid = httpx.get(url + "/v1/stats", timeout=5).json()["pid"]
            except httpx.HTTPError:
                pid = None
            if pid is not None and pid not in before:
                replaced = time.monotonic() - t0
            time.sleep(0.05)
        return {"killed_at": t0, "seconds_until_replacement_answers": round(replaced, 2) if replaced else None}

    try:
        out = under_wrk(url + "/v1/predict", body, seconds, script, kill)
    finally:
        halt.set()
        prober.join()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    t0 = out.pop("killed_at")
    fails = [t - t0 for t, ok in log if not ok and t >= t0]
    return {**out, **rss, "probe_requests": len(log), "probe_failures": len(fails),
            "seconds_until_all_succeed": round(max(fails), 2) if fails else 0.0}  # fmt: skip


def rss_mb(pid: int) -> float:
    """A process's resident memory (the supervising parent's, a worker's), in MB; 0 if gone.
    The workers are told apart from multiprocessing's resource tracker (about 12 MB) by size."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def answering_pids(url: str, want: int = 2) -> set[int]:
    pids: set[int] = set()
    for _ in range(50):
        pids.add(httpx.get(url + "/v1/stats", timeout=5).json()["pid"])
        if len(pids) >= want:
            break
    return pids


def huge_png(side: int = 6000) -> bytes:
    """A light rectangle on black, `side` x `side` pixels: a small file, a costly decode."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (side, side))
    ImageDraw.Draw(img).rectangle((side // 4, side // 5, 3 * side // 4, 4 * side // 5), fill=200)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# few small clients, so that the cores have room: with 8 the CPU is saturated either way and the
# small requests' p99 measures contention more than waiting behind a decode
HOL_CLIENTS = 2


def hol(checkpoint: str, body: Path, seconds: float) -> dict[str, Any]:
    """Small requests' latency while huge images are being decoded in the same worker."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/predict"
    proc = start(checkpoint, port, "--workers", "1")
    huge = huge_png()
    halt = threading.Event()
    huge_ms: list[float] = []
    statuses: dict[str, int] = {}

    def post_huge() -> None:
        time.sleep(0.5)
        while not halt.is_set():
            t0 = time.perf_counter()
            try:
                key = str(httpx.post(url, content=huge, headers={"Content-Type": "image/png"}, timeout=60).status_code)
                huge_ms.append((time.perf_counter() - t0) * 1e3)
            except httpx.HTTPError:
                key = "error"
            statuses[key] = statuses.get(key, 0) + 1
            halt.wait(1.0)

    script = body.parent / "wrk-keepalive.lua"
    script.write_text(WRK_SCRIPT)
    side = threading.Thread(target=post_huge)
    side.start()
    try:
        small = run_wrk(url, body, "image/png", HOL_CLIENTS, seconds, script)
    finally:
        halt.set()
        side.join()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return {"clients": HOL_CLIENTS, "huge_bytes": len(huge), "huge_pixels": 6000 * 6000, "huge_statuses": statuses,
            "huge_ms_median": round(sorted(huge_ms)[len(huge_ms) // 2], 1) if huge_ms else None,
            "small": small}  # fmt: skip


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


SCENARIOS = ("sigterm", "kill9", "storm", "hol")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="run folder (default: an untrained default cnn)")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--only", choices=SCENARIOS, default=None)
    p.add_argument("--out", default=None, help="results JSON to write (e.g. benchmarks/results/"
                                               "<date>-<machine>-serve-lifecycle.json)")
    args = p.parse_args(argv)
    info = machine_info()
    print(machine_line(info))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="serve-lifecycle-") as tmp:
        folder = Path(tmp)
        checkpoint = args.checkpoint or default_checkpoint(folder)
        body = folder / "one.png"
        body.write_bytes(sample_pngs(1)[0])
        script = folder / "wrk.lua"
        # a connection per request, as a load balancer's fresh connections would be
        script.write_text(WRK_SCRIPT.replace('wrk.method = "POST"', 'wrk.method = "POST"\nwrk.headers["Connection"] = "close"'))
        for name in SCENARIOS:
            if args.only not in (None, name):
                continue
            if name == "storm":
                result = asyncio.run(storm(checkpoint, args.seconds))
            elif name == "hol":
                result = hol(checkpoint, body, args.seconds)
            else:
                result = {"sigterm": sigterm, "kill9": kill9}[name](checkpoint, body, script, args.seconds)
            results[name] = result
            print(json.dumps({"scenario": name, **result}), flush=True)
    if args.out:
        command = ["python", "-m", "benchmarks.serve_lifecycle", *(argv if argv is not None else sys.argv[1:])]
        Path(args.out).write_text(json.dumps({"benchmark": "serve_lifecycle", "machine": info,
                                              "command": " ".join(command), "seconds": args.seconds,
                                              "checkpoint": args.checkpoint or "untrained default cnn",
                                              "scenarios": results}, indent=1) + "\n")  # fmt: skip
        print(f"Wrote {args.out}")
    return 0


def _n(x: Any) -> str:
    return "—" if x is None else f"{x:,}" if isinstance(x, int) else f"{x:g}"


def _statuses(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items())) or "none"


def lifecycle_table(saved: dict[str, Any]) -> str:
    """A saved run as markdown: the machine and command lines, then one row per measure."""
    sc = saved["scenarios"]
    rows: list[tuple[str, str, str]] = []
    if "sigterm" in sc:
        r, w = sc["sigterm"], sc["sigterm"]["wrk"]
        c = r.get("closing", {})
        rows += [
            ("SIGTERM under load", "requests answered (statuses)", _statuses(w["statuses"])),
            ("", "requests cut (wrk read errors)", _n(w["errors"]["read"])),
            ("", "of them: queued in the kernel at close, never accepted (workers' log)", _n(c.get("kernel_queue_reset"))),
            ("", "accepted with their request still to come, answered", _n(c.get("accepted_request_to_come"))),
            ("", "exit status, seconds to exit", f"{r['exit_status']}, {_n(r['seconds_to_exit'])}"),
        ]  # fmt: skip
    if "kill9" in sc:
        r, w = sc["kill9"], sc["kill9"]["wrk"]
        rows += [
            ("kill -9 of one of two workers", "requests answered (statuses)", _statuses(w["statuses"])),
            ("", "requests cut (wrk read errors)", _n(w["errors"]["read"])),
            ("", "probe client: requests, failures", f"{_n(r['probe_requests'])}, {_n(r['probe_failures'])}"),
            ("", "seconds until all requests succeed again", _n(r["seconds_until_all_succeed"])),
            ("", "seconds until the replacement answers", _n(r.get("seconds_until_replacement_answers"))),
        ]  # fmt: skip
        if "parent_rss_mb" in r:
            rows.append(("", "RSS MB: the supervising parent; each worker",
                         f"{_n(r['parent_rss_mb'])}; {', '.join(_n(x) for x in r['worker_rss_mb'])}"))  # fmt: skip
    if "storm" in sc:
        r = sc["storm"]
        rows += [
            ("retry storm", "storm clients' outcomes", _statuses(r["storm"])),
            ("", "patient client: statuses, p99 ms", f"{_statuses(r['patient_statuses'])}; {_n(r['patient_p99_ms'])}"),
            ("", "first request after the storm: status, ms", f"{r['first_after_status']}, {_n(r['first_after_ms'])}"),
        ]  # fmt: skip
    if "hol" in sc:
        r, w = sc["hol"], sc["hol"]["small"]
        rows += [
            (f"huge uploads beside {r.get('clients', 8)} small clients (1 worker)", "small requests: answered, p50 / p99 / max ms",
             f"{_n(w['requests'])}, {w['p50_ms']:.1f} / {w['p99_ms']:.1f} / {w['max_ms']:.1f}"),
            ("", f"huge ({r['huge_pixels'] / 1e6:.0f} M pixels): statuses, median ms",
             f"{_statuses(r['huge_statuses'])}; {_n(r['huge_ms_median'])}"),
        ]  # fmt: skip
    return "\n".join([
        machine_line(saved["machine"]), f"Command: `{saved['command']}`", "",
        "| scenario | measure | result |", "| --- | --- | --- |",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
    ])


if __name__ == "__main__":
    raise SystemExit(main())
