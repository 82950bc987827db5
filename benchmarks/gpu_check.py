"""GPU check: a recipe (default: `default`) on CUDA with bf16 autocast, torch.compile off and on.

Reports, per configuration, images/s (training only, per epoch) and time to 94 % / 95 % test
accuracy (training seconds, and wall seconds including evaluation and compilation), with the card
named. With more than one GPU it also runs a 2-process torchrun NCCL smoke test of `fmnist train`.

    python benchmarks/gpu_check.py --out gpu_check.json                 # on a GPU machine
    python benchmarks/gpu_check.py --recipe best --batch-size 512 --epochs 80 --out best.json
    python benchmarks/gpu_check.py --device cpu --quick --out smoke.json # local smoke (seconds)

Needs the package importable (`pip install -e .`, or PYTHONPATH=src) and the Fashion-MNIST files
(`--data-dir`, FMNIST_DATA_DIR, or the usual places). Results are written after every
configuration, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fmnist.recipes import Recipe, get_recipe, to_dict
from fmnist.train import Callback, Data, RunState, fit, load_data

TARGETS = (0.94, 0.95)


class Clock(Callback):
    """Wall time since fit started, at the end of every epoch (after evaluation)."""

    def on_fit_start(self, state: RunState) -> None:
        self.t0 = time.perf_counter()
        self.wall: list[float] = []

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        self.wall.append(time.perf_counter() - self.t0)
        print(f"  epoch {row['epoch']:>2}  test acc {100 * row['test_accuracy']:.2f}%  "
              f"{row['images_per_s']:,.0f} img/s  train {row['train_seconds']:.1f}s  "
              f"wall {self.wall[-1]:.1f}s", flush=True)


def device_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "device": device,
    }
    if device == "cuda":
        info.update(card=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    gpu_count=torch.cuda.device_count(),
                    bf16_supported=torch.cuda.is_bf16_supported())
    else:
        info["card"] = f"CPU ({platform.processor() or platform.machine()})"
    return info


def subset(data: Data, n_train: int, n_test: int) -> Data:
    return Data(data.train_images[:n_train], data.train_labels[:n_train],
                data.test_images[:n_test], data.test_labels[:n_test], data.classes,
                fingerprint=data.fingerprint)


def time_to(rows: list[dict[str, Any]], wall: list[float], target: float) -> dict[str, Any] | None:
    for row, w in zip(rows, wall, strict=True):
        if row["test_accuracy"] >= target - 1e-6:  # 9,400/10,000 is 0.93999... in float32
            return {"epoch": row["epoch"], "train_s": round(row["train_seconds"], 3),
                    "wall_s": round(w, 3)}
    return None  # not reached in these epochs


def one_config(base: Recipe, data: Data, device: str, compile_: bool) -> dict[str, Any]:
    # every epoch evaluated: the time to each accuracy is read off the per-epoch rows
    recipe = replace(base, device=device, bf16="on", compile=compile_, eval_every=1)
    print(f"{recipe.name} recipe, {device}, bf16 on, compile {'on' if compile_ else 'off'}, "
          f"batch {recipe.batch_size}, "
          f"{recipe.epochs} epochs, {len(data.train_images):,} train images", flush=True)
    clock = Clock()
    t0 = time.perf_counter()
    result = fit(recipe, data=data, callbacks=[clock], save=False)
    total = time.perf_counter() - t0
    rows = result.rows
    speeds = [r["images_per_s"] for r in rows]
    steady = speeds[1:] or speeds  # epoch 1 carries compilation and warm-up
    return {
        "recipe": to_dict(recipe),
        "compile": compile_,
        "bf16": True,
        "epochs": [{**r, "wall_s": w} for r, w in zip(rows, clock.wall, strict=True)],
        "images_per_s_first_epoch": round(speeds[0]),
        "images_per_s_median_after_first": round(statistics.median(steady)),
        "final_test_accuracy": rows[-1]["test_accuracy"],
        **{f"time_to_{round(100 * t)}": time_to(rows, clock.wall, t) for t in TARGETS},
        "total_wall_s": round(total, 3),
    }


def ddp_smoke(device: str, data_dir: str | None, nproc: int = 2) -> dict[str, Any]:
    """`torchrun --standalone --nproc_per_node=2 -m fmnist train` for one epoch."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "fmnist", "train", "--device", device,
               "--epochs", "1", "--out", str(Path(tmp) / "run")]
        if data_dir:
            cmd += ["--data-dir", data_dir]
        print("ddp smoke:", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": "timed out after 600 s", "command": cmd}
        out: dict[str, Any] = {"ok": proc.returncode == 0, "returncode": proc.returncode,
                               "seconds": round(time.perf_counter() - t0, 1), "command": cmd,
                               "stderr_tail": proc.stderr[-2000:], "stdout_tail": proc.stdout[-1000:]}
        metrics = Path(tmp) / "run" / "metrics.jsonl"
        if metrics.is_file():
            out["metrics"] = [json.loads(line) for line in metrics.read_text().splitlines()]
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--quick", action="store_true",
                   help="2,048 train / 1,000 test images, 1 epoch: a smoke test, not a benchmark")
    p.add_argument("--recipe", default="default", help="recipe to run (default: default)")
    p.add_argument("--epochs", type=int, help="default: the recipe's (1 with --quick)")
    p.add_argument("--batch-size", type=int,
                   help="default: the recipe's; the lr is scaled linearly with it")
    p.add_argument("--compile", choices=("off", "on", "both"),
                   help="default: both (off with --device cpu --quick: inductor on CPU is slow)")
    p.add_argument("--data-dir", help="folder holding the Fashion-MNIST files")
    p.add_argument("--ddp-smoke", choices=("auto", "on", "off"), default="auto",
                   help="auto: a 2-process NCCL run when there is more than one GPU")
    args = p.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible; use --device cpu --quick for a local smoke test.",
              file=sys.stderr)
        return 2
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    compile_mode = args.compile or ("off" if args.device == "cpu" and args.quick else "both")
    configs = {"off": [False], "on": [True], "both": [False, True]}[compile_mode]
    epochs = args.epochs or (1 if args.quick else None)

    results: dict[str, Any] = {"command": " ".join([sys.executable, *sys.argv]),
                               "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "host": device_info(args.device), "quick": args.quick, "runs": []}
    print(json.dumps(results["host"]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out.write_text(json.dumps(results, indent=2) + "\n")

    recipe = get_recipe(args.recipe)
    if args.batch_size:
        recipe = replace(recipe, batch_size=args.batch_size,
                         lr=recipe.lr * args.batch_size / recipe.batch_size)
    if epochs is not None:
        recipe = replace(recipe, epochs=epochs)
    data = load_data(recipe, args.data_dir)
    if args.quick:
        data = subset(data, 2048, 1000)
    for compile_ in configs:
        results["runs"].append(one_config(recipe, data, args.device, compile_))
        save()

    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.ddp_smoke == "on" or (args.ddp_smoke == "auto" and gpus > 1):
        results["ddp_smoke"] = ddp_smoke(args.device, args.data_dir)
    else:
        results["ddp_smoke"] = {"skipped": f"{gpus} GPU(s): the NCCL smoke needs 2"}
    save()

    print(f"\n{results['host']['card']}, torch {results['host']['torch']}")
    print(f"{'compile':>8} {'img/s (ep1)':>12} {'img/s (median)':>15} {'to 94%':>16} "
          f"{'to 95%':>16} {'final acc':>10}")
    for r in results["runs"]:
        def fmt(t: dict[str, Any] | None) -> str:
            return f"{t['train_s']:.1f}s/{t['wall_s']:.1f}s" if t else "not reached"
        print(f"{'on' if r['compile'] else 'off':>8} {r['images_per_s_first_epoch']:>12,} "
              f"{r['images_per_s_median_after_first']:>15,} {fmt(r['time_to_94']):>16} "
              f"{fmt(r['time_to_95']):>16} {100 * r['final_test_accuracy']:>9.2f}%")
    print("(time to accuracy: training seconds / wall seconds including evaluation and compile)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
