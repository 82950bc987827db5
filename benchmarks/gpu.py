"""GPU section of the benchmark: `python -m benchmarks.gpu [--data-dir DIR] [--epochs N]`.

One short prepared run on a CUDA machine: the `best` recipe's model trained with CUDA, bf16
autocast and torch.compile, timed to 94 % and 95 % test accuracy (measured after each epoch;
training seconds, evaluation excluded, compile time included in the first epoch). The same
recipe in eager mode runs first as the reference, so the compile gain is measured side by side.
Prints a markdown table naming the card and writes benchmarks/results/<date>-<card>.json (or
--out).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent


def time_to(rows: list[dict], target: float) -> float | None:
    return next((r["train_seconds"] for r in rows if r["test_accuracy"] >= target), None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__)
    p.add_argument("--data-dir", help="folder holding the Fashion-MNIST .gz files")
    p.add_argument("--recipe", default="best")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--no-eager", action="store_true", help="skip the eager reference run")
    p.add_argument("--out", help="results JSON")
    args = p.parse_args(argv)

    import torch

    from fmnist.recipes import get_recipe
    from fmnist.train import fit, load_data

    if not torch.cuda.is_available():
        print("No CUDA GPU here: the GPU benchmark needs one.", file=sys.stderr)
        return 1
    card = torch.cuda.get_device_name(0)
    base = get_recipe(args.recipe)
    base = replace(base, device="cuda", bf16="on", batch_size=args.batch_size,
                   lr=base.lr * args.batch_size / base.batch_size,
                   epochs=args.epochs or base.epochs)
    data = load_data(base, args.data_dir)
    runs = {}
    for label, compiled in (("eager", False), ("compile", True)):
        if label == "eager" and args.no_eager:
            continue
        t0 = time.perf_counter()
        result = fit(replace(base, compile=compiled), data=data, save=False, callbacks=[])
        rows = result.rows
        runs[label] = {"wall_s": time.perf_counter() - t0, "rows": rows,
                       "final_accuracy": rows[-1]["test_accuracy"],
                       "train_seconds": rows[-1]["train_seconds"],
                       "time_to": {f"{t:.2f}": time_to(rows, t) for t in (0.94, 0.95)}}
        print(f"{label}: {100 * rows[-1]['test_accuracy']:.2f} % in "
              f"{rows[-1]['train_seconds']:.1f} s of training", flush=True)

    lines = [f"GPU: {card}, torch {torch.__version__}, recipe `{args.recipe}` "
             f"(batch {base.batch_size}, {base.epochs} epochs, bf16 autocast)", "",
             "| run | time to 94 % | time to 95 % | final accuracy | train time |",
             "| --- | --- | --- | --- | --- |"]

    def sec(x: float | None) -> str:
        return "—" if x is None else f"{x:.1f} s"

    for label, r in runs.items():
        lines.append(f"| {label} | {sec(r['time_to']['0.94'])} | {sec(r['time_to']['0.95'])} | "
                     f"{100 * r['final_accuracy']:.2f} % | {sec(r['train_seconds'])} |")
    report = "\n".join(lines)
    print(report)
    slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")
    out = Path(args.out) if args.out else \
        HERE / "results" / f"{_dt.date.today().isoformat()}-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"card": card, "torch": torch.__version__, "argv": argv or sys.argv[1:],
                               "runs": runs, "table": report}, indent=2, default=str) + "\n")
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
