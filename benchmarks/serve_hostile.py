"""`fmnist serve` against hostile uploads and through a model reload, with `hey`, on 127.0.0.1:

    python -m benchmarks.serve_hostile [--reference SRC] [--checkpoint RUN_DIR] [--seconds 10]
                                       [--rounds 2] [--out FILE.json]

- textchunks: one worker; 4 clients post, back to back, a 67 KB PNG carrying 64 zTXt chunks of
  1 MB of text each (Pillow inflates them as it opens the file), while a fifth polls /healthz
  20 times a second: /healthz p50/p99/max, and the uploads' statuses and rate.
- ordinary: the default server (one worker per core), 8 keep-alive clients posting one small
  PNG each: requests/s and p99, so that the limits can be seen to cost nothing.
- reload (this code only): 16 clients posting against two workers from `--seconds` before to
  `--seconds` after the swap (at most 120 s); after `--seconds`, the path served is pointed at
  another checkpoint and the server gets SIGHUP. Failed
  requests (anything but a 200, or a connection error), and the seconds from SIGHUP until
  /v1/model answers with the new model id from every worker.

`--reference SRC` runs textchunks and ordinary also with the `src` folder of another fmnist
(e.g. `git worktree add /tmp/before <commit>`, then `--reference /tmp/before/src`), alternating
with this code round by round, so both are measured side by side on the same machine. Every
load is bounded in time; nothing asserts a timing. With --out, writes a results file that
docs/serving.md's table reads (`python -m benchmarks.docs_tables`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from statistics import median
from typing import Any

import httpx

from benchmarks.common import machine_info, machine_line
from benchmarks.serve_load import default_checkpoint, free_port, sample_pngs

SRC = str(Path(__file__).resolve().parents[1] / "src")


def text_chunk_png() -> bytes:
    """A 28x28 PNG (a real test image) with 64 zTXt chunks of 1 MB of text each: 67 KB."""
    base = sample_pngs(1)[0]
    text = b"comment\0\0" + zlib.compress(b"a" * ((1 << 20) - 1), 9)
    chunk = struct.pack(">I", len(text)) + b"zTXt" + text + struct.pack(">I", zlib.crc32(b"zTXt" + text))
    return base[:33] + chunk * 64 + base[33:]


def start(src: str, checkpoint: str, *flags: str, log: Path | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": src}
    err = open(log, "w") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "fmnist", "serve", checkpoint, "--port", str(port),
                             "--log-level", "info" if log is not None else "warning", *flags],
                            stdout=subprocess.DEVNULL, stderr=err, env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                time.sleep(2)  # the other workers too
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server did not start (status {proc.returncode})")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start in 240 s")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def hey(url: str, seconds: float, clients: int, body: Path | None = None, rate: float | None = None) -> dict[str, Any]:
    """`hey` for `seconds`: requests/s, p50/p99/slowest, statuses, and requests that got no
    answer (its error distribution), from its summary."""
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(clients)]
    if rate:
        cmd += ["-q", str(rate)]
    if body is not None:
        cmd += ["-m", "POST", "-T", "image/png", "-D", str(body)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 120).stdout

    def secs(pattern: str) -> float | None:
        m = re.search(pattern, out)
        return round(float(m[1]) * 1e3, 1) if m else None

    statuses = {m[1]: int(m[2]) for m in re.finditer(r"\[(\d{3})\]\s+(\d+) responses", out)}
    _, _, error_part = out.partition("Error distribution:")
    errors = {m[2].strip(): int(m[1]) for m in re.finditer(r"^\s+\[(\d+)\]\s+(.*)$", error_part, re.M)}
    per_s = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return {"requests": sum(statuses.values()), "per_s": float(per_s[1]) if per_s else None,
            "p50_ms": secs(r"50%+ in ([\d.]+) secs"), "p99_ms": secs(r"99%+ in ([\d.]+) secs"),
            "max_ms": secs(r"Slowest:\s+([\d.]+) secs"), "statuses": statuses, "errors": errors}  # fmt: skip


def probe(url: str, seconds: float) -> dict[str, Any]:
    """GET `url` 20 times a second for `seconds`, one at a time: latency p50/p99/max, failures."""
    latencies, failures = [], 0
    end = time.monotonic() + seconds
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < end:
            t0 = time.monotonic()
            try:
                ok = client.get(url).status_code == 200
            except httpx.HTTPError:
                ok = False
            took = time.monotonic() - t0
            latencies.append(took * 1e3)
            failures += not ok
            time.sleep(max(0.0, 0.05 - took))
    latencies.sort()

    def at(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)

    return {"requests": len(latencies), "failures": failures, "p50_ms": at(0.5), "p99_ms": at(0.99),
            "max_ms": round(latencies[-1], 1)}  # fmt: skip


def textchunks(src: str, checkpoint: str, folder: Path, seconds: float) -> dict[str, Any]:
    body = folder / "textchunks.png"
    body.write_bytes(text_chunk_png())
    proc, url = start(src, checkpoint, "--workers", "1")
    try:
        result: dict[str, Any] = {}
        uploads = threading.Thread(target=lambda: result.update(uploads=hey(url + "/v1/predict", seconds, 4, body)))
        uploads.start()
        time.sleep(0.5)
        health = probe(url + "/healthz", seconds - 1)
        uploads.join()
        return {"healthz": health, **result}
    finally:
        stop(proc)


def ordinary(src: str, checkpoint: str, folder: Path, seconds: float) -> dict[str, Any]:
    body = folder / "one.png"
    body.write_bytes(sample_pngs(1)[0])
    proc, url = start(src, checkpoint)
    try:
        hey(url + "/v1/predict", 2, 8, body)  # warm-up
        return hey(url + "/v1/predict", seconds, 8, body)
    finally:
        stop(proc)


def model_ids(url: str) -> set[str]:
    ids = set()
    for _ in range(10):  # fresh connections: the kernel spreads them over the workers
        try:
            ids.add(httpx.get(url + "/v1/model", timeout=5).json()["model_id"])
        except httpx.HTTPError:
            ids.add("unanswered")
    return ids


def reload(checkpoint: str, folder: Path, seconds: float, wait_s: float = 120.0) -> dict[str, Any]:
    second = Path(default_checkpoint(folder / "second", seed=1))  # other weights: another id
    latest = folder / "latest"
    latest.symlink_to(Path(checkpoint).resolve())
    body = folder / "one.png"
    body.write_bytes(sample_pngs(1)[0])
    log = folder / "reload.log"
    proc, url = start(SRC, str(latest), "--workers", "2", log=log)
    try:
        (before,) = model_ids(url)
        result: dict[str, Any] = {}
        # the load goes on until well after the swap (the new model loads in a process of its
        # own, then in each worker, beside the one serving)
        duration = seconds + wait_s + seconds
        load = threading.Thread(target=lambda: result.update(load=hey(url + "/v1/predict", duration, 16, body)))
        load.start()
        time.sleep(seconds)
        latest.unlink()
        latest.symlink_to(second)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        ids = model_ids(url)
        while (ids == {before} or len(ids) > 1) and time.monotonic() - t0 < wait_s:
            time.sleep(0.2)
            ids = model_ids(url)
        swapped = time.monotonic() - t0 if len(ids) == 1 and ids != {before} else None
        load.join()
        sent = result["load"]
        failed = sum(n for s, n in sent["statuses"].items() if s != "200") + sum(sent["errors"].values())
        lines = [line.replace(str(folder), "<tmp>") for line in log.read_text().splitlines()
                 if "SIGHUP" in line or "Reload" in line]  # fmt: skip
        return {"clients": 16, "seconds": duration, "load": sent, "failed": failed,
                "seconds_to_new_model": None if swapped is None else round(swapped, 2),
                "old_id": before, "new_ids": sorted(ids), "log": lines}  # fmt: skip
    finally:
        stop(proc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="run folder (default: an untrained default cnn)")
    p.add_argument("--reference", default=None, help="the src folder of another fmnist, measured beside")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", choices=("reload",), default=None, help="the reload alone")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if shutil.which("hey") is None:
        raise SystemExit("hey is not installed: apt-get install hey (Debian's package).")
    info = machine_info()
    print(machine_line(info))
    codes = {"this": SRC, **({"reference": args.reference} if args.reference else {})}
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="serve-hostile-") as tmp:
        folder = Path(tmp)
        checkpoint = args.checkpoint or default_checkpoint(folder / "first")
        for r in range(args.rounds if args.only is None else 0):
            for name, src in codes.items():  # alternating, round by round
                row = {"round": r, "code": name, "textchunks": textchunks(src, checkpoint, folder, args.seconds),
                       "ordinary": ordinary(src, checkpoint, folder, args.seconds)}  # fmt: skip
                print(json.dumps(row), flush=True)
                rounds.append(row)
        swap = reload(checkpoint, folder, args.seconds)
        print(json.dumps({"reload": swap}), flush=True)
    if args.out:
        command = ["python", "-m", "benchmarks.serve_hostile", *(argv if argv is not None else sys.argv[1:])]
        if args.reference:  # a folder of this machine's: the reader has their own
            command = [c if c != args.reference else "<before>/src" for c in command]
        Path(args.out).write_text(json.dumps({"benchmark": "serve_hostile", "machine": info,
                                              "command": " ".join(command), "seconds": args.seconds,
                                              "checkpoint": args.checkpoint or "untrained default cnn",
                                              "rounds": rounds, "reload": swap}, indent=1) + "\n")  # fmt: skip
        print(f"Wrote {args.out}")
    return 0


def hostile_table(saved: dict[str, Any]) -> str:
    """A saved run as markdown: the machine and command lines, then this code beside the
    reference (medians over the rounds), then the reload."""
    codes = list(dict.fromkeys(r["code"] for r in saved["rounds"]))
    names = {"this": "this version", "reference": "before (reference)"}

    def med(code: str, *path: str) -> str:
        values = []
        for row in saved["rounds"]:
            if row["code"] == code:
                v: Any = row
                for key in path:
                    v = v[key]
                values.append(v)
        return f"{median(values):,.1f}" if values and None not in values else "—"

    def statuses(code: str) -> str:
        total: dict[str, int] = {}
        for row in saved["rounds"]:
            if row["code"] == code:
                for s, n in row["textchunks"]["uploads"]["statuses"].items():
                    total[s] = total.get(s, 0) + n
        return ", ".join(f"{s}: {n:,}" for s, n in sorted(total.items()))

    lines = [
        f"- {machine_line(saved['machine'])}",
        f"- Command: `{saved['command']}` ({len({r['round'] for r in saved['rounds']})} alternating rounds, medians)",
        "",
        "| scenario | measure | " + " | ".join(names[c] for c in codes) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in codes) + " |",
        "| 4 clients posting the text-chunk PNG, 1 worker | `/healthz` p50 / p99 / max ms | "
        + " | ".join(f"{med(c, 'textchunks', 'healthz', 'p50_ms')} / {med(c, 'textchunks', 'healthz', 'p99_ms')} / "
                     f"{med(c, 'textchunks', 'healthz', 'max_ms')}" for c in codes) + " |",
        "|  | uploads answered per s | " + " | ".join(med(c, "textchunks", "uploads", "per_s") for c in codes) + " |",
        "|  | uploads' statuses | " + " | ".join(statuses(c) for c in codes) + " |",
        "| 8 clients, one small PNG each, default server | requests/s | "
        + " | ".join(med(c, "ordinary", "per_s") for c in codes) + " |",
        "|  | p99 ms | " + " | ".join(med(c, "ordinary", "p99_ms") for c in codes) + " |",
    ]
    swap = saved["reload"]
    load = swap["load"]
    lines += [
        "",
        f"SIGHUP with a new checkpoint under {swap['clients']} clients ({swap['seconds']:g} s, 2 workers): "
        f"{load['requests']:,} requests, {swap['failed']} failed"
        + (f" ({', '.join(f'{n} {e}' for e, n in load['errors'].items())})" if load["errors"] else "")
        + f"; every worker served the new model id {swap['seconds_to_new_model']} s after the signal; "
        f"p99 over the whole run {load['p99_ms']} ms.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
