"""A sweep's winner against the default recipe at the same time budget per run, on the real data:
`python -m benchmarks.sweep_vs_default [--budget 10m] [--trial-budget 45s] [--seeds 3]`.

1. `fmnist sweep --trial-budget T --budget B` (default space for the default recipe; trials on a
   validation split of the training images; its final run is the winner's seed 0, on all
   training images, tested once);
2. then, alternating, the default recipe and the winner's settings (`--config winner.json`),
   each `fmnist train --time-budget T --seed s`, for the remaining seeds (the default's seed 0
   too).

Test accuracy of the winner vs the default, per seed and as mean ± std, written to
benchmarks/results/<date>-<machine>-sweep-vs-default.json (with every command and the machine).
The published measurement is a 20-minute sweep at 60 s per trial; the defaults here are scaled
down (see --help).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import HERE, ROOT, machine_info, machine_line, machine_slug


def run(cmd: list[str], log: Path) -> float:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        subprocess.run(cmd, check=True, env=env, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def test_accuracy(run_dir: Path) -> tuple[float, int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    return rows[-1]["test_accuracy"], rows[-1]["epoch"], rows[-1]["train_seconds"]


def write_subset(folder: Path, n_train: int) -> str:
    """The first `n_train` real training images and the whole real test set, as Kaggle-style CSV
    files: real Fashion-MNIST, fewer images, so an epoch fits a short trial on a busy CPU."""
    from fmnist import datasets

    folder.mkdir(parents=True, exist_ok=True)
    header = "label," + ",".join(f"pixel{i}" for i in range(1, 785))
    for split, n in (("train", n_train), ("test", None)):
        images, labels = datasets.load_arrays("fashion-mnist", split)
        images, labels = images[:n], labels[:n]
        lines = [header] + [f"{y}," + ",".join(map(str, x.reshape(-1).tolist()))
                            for x, y in zip(images, labels, strict=True)]
        (folder / f"fashion-mnist_{split}.csv").write_text("\n".join(lines) + "\n")
    return f"csv:{folder}"


def write_folder(folder: Path, spec: str) -> str:
    """An image folder made from the real training images: `spec` is "CLASSES:N", e.g.
    "0,2,4,6:300" (T-shirt, pullover, coat, shirt: the classes Fashion-MNIST confuses most),
    N PNGs per class, the first N of each; fmnist splits it 80/20 per class itself."""
    from PIL import Image

    from fmnist import datasets

    picked, n = spec.split(":")
    names = datasets.class_names("fashion-mnist")
    images, labels = datasets.load_arrays("fashion-mnist", "train")
    for label in map(int, picked.split(",")):
        out = folder / names[label].replace("/", "-")
        out.mkdir(parents=True, exist_ok=True)
        for i, index in enumerate((labels == label).nonzero()[0][: int(n)]):
            Image.fromarray(images[index]).save(out / f"{i:04d}.png")
    return f"folder:{folder}"


def winner_config(best: dict[str, Any]) -> dict[str, Any]:
    """best.json's values as a --config file over the default recipe (length left to the budget)."""
    values = best["values"]
    config: dict[str, Any] = {k: v for k, v in values.items() if not k.startswith("model_config.")}
    model = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("model_config.")}
    return config | ({"model_config": model} if model else {})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", default="10m", help="the sweep's wall clock (published: 20m)")
    p.add_argument("--trial-budget", default="45s", help="per trial and per run (published: 60s)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--space", default=str(HERE / "sweep-space.toml"),
                   help="space file (default benchmarks/sweep-space.toml; 'default': the "
                        "sweep's own default space)")
    p.add_argument("--epochs", type=int, default=0,
                   help="every trial and run at N epochs instead of a time budget (a comparison "
                        "a busy machine cannot disturb; --budget still bounds the sweep)")
    p.add_argument("--subset", type=int, default=0, metavar="N",
                   help="train on the first N real training images (all 10,000 test images); "
                        "0: all 60,000")
    p.add_argument("--folder", metavar="CLASSES:N",
                   help="an image folder of N real training images per class instead, e.g. "
                        "0,2,4,6:300 (its own 80/20 split is the test set)")
    p.add_argument("--work", help="folder for the runs (default: a temp folder)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads for every trial and run (0: torch's default); 1 leaves "
                        "the other core of a 2-core machine to another job")
    p.add_argument("--objective", default="accuracy",
                   help="the sweep's objective; with a second one (accuracy,latency) the sweep "
                        "and its front are recorded, and no seeds are trained")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="fmnist-sweep-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    fmnist = [sys.executable, "-m", "fmnist"]
    info = machine_info()
    load_before = os.getloadavg()
    commands: list[str] = []
    data = ["--dataset", write_subset(work / "data", args.subset)] if args.subset else []
    data += ["--threads", str(args.threads)] if args.threads else []
    if args.folder:
        data = ["--dataset", write_folder(work / "folder", args.folder),
                *(["--threads", str(args.threads)] if args.threads else [])]

    length = (["--epochs", str(args.epochs)] if args.epochs
              else ["--time-budget", args.trial_budget])
    sweep_cmd = [*fmnist, "sweep", *data, "--budget", args.budget,
                 *(length if args.epochs else ["--trial-budget", args.trial_budget]),
                 "--out", str(work / "sweep"), "--name", "bench", "--sampler-seed", "0",
                 "--objective", args.objective,
                 *(["--space", args.space] if args.space != "default" else [])]
    commands.append(shlex.join(sweep_cmd))
    sweep_seconds = run(sweep_cmd, log)
    folder = work / "sweep" / "bench"  # the sweep folder: OUT/NAME
    best = json.loads((folder / "best.json").read_text())
    trials = json.loads((folder / "trials.json").read_text())
    final_dir = next(folder.glob(f"final-{best['trial']:04d}"))
    # trial 0 is the recipe's own settings: the winner must not be worse on the validation split
    recipe_trial = next((t for t in trials if t["trial"] == 0), None)
    if "," in args.objective:
        acc, epochs, seconds = test_accuracy(final_dir)
        save_results(args, info, load_before, sweep_seconds, best, trials, recipe_trial,
                     {"winner": [{"seed": 0, "test_accuracy": acc, "epochs": epochs,
                                  "train_seconds": seconds, "run_dir": str(final_dir)}]},
                     commands, work)
        return
    config = work / "winner.json"
    config.write_text(json.dumps(winner_config(best), indent=2) + "\n")

    results: dict[str, list[dict[str, Any]]] = {"default": [], "winner": []}
    acc, epochs, seconds = test_accuracy(final_dir)
    results["winner"].append({"seed": 0, "test_accuracy": acc, "epochs": epochs,
                              "train_seconds": seconds, "run_dir": str(final_dir)})
    for seed in range(args.seeds):
        for who in ("default", "winner"):
            if who == "winner" and seed == 0:
                continue  # the sweep's own final run
            out = work / f"{who}-seed{seed}"
            cmd = [*fmnist, "train", "--recipe", "default", *data, *length,
                   "--seed", str(seed), "--out", str(out), "--no-tensorboard",
                   *(["--config", str(config)] if who == "winner" else [])]
            commands.append(shlex.join(cmd))
            try:
                run(cmd, log)
            except subprocess.CalledProcessError:  # e.g. a time budget a busy machine can't plan
                results[who].append({"seed": seed, "failed": True, "run_dir": str(out)})
                continue
            acc, epochs, seconds = test_accuracy(out)
            results[who].append({"seed": seed, "test_accuracy": acc, "epochs": epochs,
                                 "train_seconds": seconds, "run_dir": str(out)})

    save_results(args, info, load_before, sweep_seconds, best, trials, recipe_trial, results,
                 commands, work)


def without_local_paths(text: str, work: Path) -> str:
    """The results as a reader can use them: the work folder as WORK, the repository as `.`,
    this machine's Python as `python`."""
    return (text.replace(sys.executable, "python").replace(str(work), "WORK")
            .replace(str(ROOT) + "/", ""))


def stats(rows: list[dict[str, Any]]) -> dict[str, float]:
    accs = [r["test_accuracy"] for r in rows if "test_accuracy" in r]
    if not accs:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0}


def save_results(args: argparse.Namespace, info: dict[str, Any], load_before: Any,
                 sweep_seconds: float, best: dict[str, Any], trials: list[dict[str, Any]],
                 recipe_trial: dict[str, Any] | None, results: dict[str, list[dict[str, Any]]],
                 commands: list[str], work: Path) -> None:
    saved = {
        "date": _dt.date.today().isoformat(), "machine": info, "load_before": load_before,
        "load_after": os.getloadavg(), "subset": args.subset, "folder": args.folder,
        "epochs": args.epochs, "budget": args.budget, "trial_budget": args.trial_budget,
        "threads": args.threads, "objective": args.objective, "sweep_seconds": sweep_seconds, "best": best,
        "recipe_trial": recipe_trial, "trials": trials, "runs": results,
        "summary": {who: stats(rows) for who, rows in results.items()}, "commands": commands,
    }
    kind = f"{args.epochs}ep" if args.epochs else args.trial_budget
    kind += "-folder" if args.folder else ""
    kind += f"-{args.threads}thread" if args.threads else ""
    kind += "-" + args.objective.replace(",", "-") if "," in args.objective else ""
    out = HERE / "results" / f"{saved['date']}-{machine_slug(info)}-sweep-vs-default-{kind}.json"
    out.write_text(without_local_paths(json.dumps(saved, indent=2), work) + "\n")
    print(machine_line(info))
    if recipe_trial is not None:
        print(f"recipe as trial 0: validation {100 * (recipe_trial.get('validation_accuracy') or 0):.2f} %; "
              f"the winner (trial {best['trial']}): {100 * best['validation_accuracy']:.2f} %")
    for who, rows in results.items():
        s = saved["summary"][who]
        per_seed = ", ".join(f"{100 * r['test_accuracy']:.2f}" if "test_accuracy" in r
                             else "failed" for r in rows)
        print(f"{who:8} {100 * s['mean']:.2f} ± {100 * s['std']:.2f} %  (seeds: {per_seed})")
    print(f"Saved {out}")

if __name__ == "__main__":
    main()
