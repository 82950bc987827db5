"""Training in the real world, measured on the real data: `python -m benchmarks.robustness`.

- sigterm: `fmnist train` (default recipe, 150 steps) stopped by SIGTERM part-way, then
  resumed: seconds from the signal to the exit, steps lost, and whether the resumed weights equal
  an uninterrupted run's bit for bit.
- fsync: what committing an epoch of the default recipe (weights, model.json, resume.pt,
  metrics.jsonl) costs with its fsyncs against the same writes without them, medians of 9.
- budget: `fmnist train --time-budget 60s` with a CPU hog (a second process spinning on every
  core) started 15 s in: the command's wall time against the budget, and the accuracy reached.

Writes benchmarks/results/<date>-<machine>-robustness.json and prints a summary.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import HERE, machine_info, machine_line, machine_slug

FMNIST = [sys.executable, "-m", "fmnist"]


def train(args: list[str], **kw: Any) -> subprocess.Popen:
    return subprocess.Popen([*FMNIST, "train", "--no-tensorboard", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def sigterm(tmp: Path, steps: int = 150, after: float = 8.0) -> dict[str, Any]:
    import torch

    from fmnist.checkpoint import ResumeState, load_model

    common = ["--steps", str(steps), "--bf16", "off"]
    whole = train([*common, "--out", str(tmp / "whole")])
    whole.communicate()
    stopped = train([*common, "--out", str(tmp / "stopped")])
    time.sleep(after)
    t0 = time.monotonic()
    stopped.send_signal(signal.SIGTERM)
    _, err = stopped.communicate()
    exit_seconds = time.monotonic() - t0
    saved = ResumeState.load(tmp / "stopped")
    resumed = subprocess.run([*FMNIST, "train", "--resume", str(tmp / "stopped")],
                             capture_output=True, text=True)
    a, _ = load_model(tmp / "whole")
    b, _ = load_model(tmp / "stopped")
    same = all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(),
                                                   strict=True))
    return {"steps": steps, "signal_after_s": after, "exit_code": stopped.returncode,
            "seconds_to_exit": round(exit_seconds, 2), "saved_at_step": saved.step,
            "saved_epoch": saved.epoch, "message": err.strip().splitlines()[-1],
            "resume_exit_code": resumed.returncode, "bit_identical": same}


def fsync_cost(tmp: Path, repeats: int = 9) -> dict[str, Any]:
    from unittest import mock

    import torch

    from fmnist import checkpoint, rundir
    from fmnist.models import build_model
    from fmnist.recipes import get_recipe

    recipe = get_recipe("default")
    torch.manual_seed(0)
    model = build_model(recipe.model, recipe.model_config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.zeros(2, 1, 28, 28)).sum().backward()
    optimizer.step()  # so the optimiser has its momentum buffers, as in a real resume.pt
    state = checkpoint.ResumeState(1, [{"epoch": 1}], {}, model.state_dict(),
                                   optimizer.state_dict(), {}, checkpoint.rng_state())
    files = checkpoint.model_files(model, {"classes": list("abcdefghij"),
                                           "normalize": {"mean": 0.0, "std": 1.0}})
    files |= {rundir.RESUME: state.to_bytes(), rundir.METRICS: b'{"epoch": 1}\n'}

    def timed(run: Path) -> float:
        run.mkdir()
        t0 = time.perf_counter()
        for i in range(repeats):
            rundir.commit(run, files, f"epoch-{i:04d}")
        return (time.perf_counter() - t0) / repeats

    with_fsync = [timed(tmp / f"sync-{r}") for r in range(3)]
    with mock.patch("os.fsync", lambda fd: None):
        without = [timed(tmp / f"nosync-{r}") for r in range(3)]
    return {"bytes": sum(map(len, files.values())),
            "ms_per_commit_with_fsync": round(1000 * statistics.median(with_fsync), 2),
            "ms_per_commit_without_fsync": round(1000 * statistics.median(without), 2)}


def spin(stop: Any) -> None:
    while not stop.is_set():
        pass


def budget(tmp: Path, seconds: int = 60, hog_at: float = 15.0) -> dict[str, Any]:
    t0 = time.monotonic()
    proc = train(["--time-budget", f"{seconds}s", "--out", str(tmp / "budget")])
    time.sleep(hog_at)
    stop = multiprocessing.Event()
    hogs = [multiprocessing.Process(target=spin, args=(stop,)) for _ in range(os.cpu_count() or 2)]
    for h in hogs:
        h.start()
    out, err = proc.communicate()
    wall = time.monotonic() - t0
    stop.set()
    for h in hogs:
        h.join()
    rows = [json.loads(x) for x in (tmp / "budget" / "metrics.jsonl").read_text().splitlines()]
    status = json.loads((tmp / "budget" / "status.json").read_text())
    return {"budget_s": seconds, "hog_at_s": hog_at, "hogs": len(hogs), "wall_s": round(wall, 1),
            "ratio": round(wall / seconds, 3), "test_accuracy": rows[-1]["test_accuracy"],
            "epochs": len(rows), "replans": len(status.get("replans", [])),
            "log": [x for x in out.splitlines() if x.startswith(("Plan", "Re-planned"))]}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.robustness")
    p.add_argument("--only", nargs="*", choices=("sigterm", "fsync", "budget"),
                   default=["sigterm", "fsync", "budget"])
    args = p.parse_args()
    info = machine_info()
    print(machine_line(info), flush=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        for name in args.only:
            Path(d, name).mkdir()
            results[name] = {"sigterm": sigterm, "fsync": fsync_cost, "budget": budget}[name](
                Path(d, name))
            print(name, json.dumps(results[name], indent=1), flush=True)
    out = HERE / "results" / f"{_dt.date.today()}-{machine_slug(info)}-robustness.json"
    earlier = json.loads(out.read_text())["cases"] if out.exists() else {}  # --only: keep the rest
    out.write_text(json.dumps({"machine": info, "argv": sys.argv[1:],
                               "cases": earlier | results}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
