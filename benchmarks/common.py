"""What every benchmark case shares: the machine, child processes, medians and cell formatting."""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable

# ---- machine -----------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import torch

    from fmnist import hardware

    # The class (amx, avx512, avx2, other) decides which kernels torch picks, so a figure is only
    # comparable with figures of the same class; a run with capped kernels records the capped one.
    flags = hardware.cpu_flags()
    mem_gb = None
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        mem_gb = round(int(m.group(1)) / 2**20, 1) if m else None
    except OSError:
        pass
    return {
        "cpu": hardware.cpu_model(),
        "cpu_class": hardware.cpu_class(flags),
        # the cores this process may run on: a run pinned with taskset counts its own
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "machine_cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def machine_line(info: dict[str, Any]) -> str:
    # results saved before cpu_class was recorded only know whether the CPU had AMX
    klass = info.get("cpu_class") or ("amx" if info.get("amx_bf16") else "not recorded")
    whole = info.get("machine_cores")
    pinned = f" (pinned, of {whole})" if whole and whole != info["cores"] else ""
    return (f"Machine: {info['cpu']} (CPU class {klass}), {info['cores']} cores{pinned}, "
            f"{info['memory_gb']} GB, torch {info['torch']} ({info['torch_threads']} threads), "
            f"Python {info['python']}")


def machine_slug(info: dict[str, Any]) -> str:
    cpu = re.sub(r"\(R\)|\(TM\)|CPU|Processor|@.*", "", info["cpu"])
    return re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-") + f"-{info['cores']}c"


# ---- child processes ---------------------------------------------------------------------------


def run_child(cmd: list[str], env: dict[str, str] | None = None,
              cwd: str | None = None) -> dict[str, Any]:
    """Run `cmd`; its wall time (start to exit), peak RSS (MiB, from wait4) and stdout."""
    with tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "stdout": text}


def train_cmd(*args: str) -> list[str]:
    return [PY, "-m", "fmnist", "train", *args]


def train(out: Path, *args: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`fmnist train *args --out out`: the child's wall time and RSS, and its metrics rows."""
    res = run_child(train_cmd(*args, "--out", str(out)))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return res, [json.loads(line) for line in lines if line.strip()]


def time_to(rows: list[dict[str, Any]], target: float) -> float | None:
    """Training seconds until the first epoch whose test accuracy reaches `target`."""
    for row in rows:
        if row.get("test_accuracy", 0.0) >= target:  # an epoch not evaluated has none
            return row["train_seconds"]
    return None


# ---- statistics and cells ----------------------------------------------------------------------


def med(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def sec(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f} s"


def ratio(a: float | None, b: float | None, fmt: str = "{:.2f}x") -> str:
    return "—" if not a or not b else fmt.format(a / b)
