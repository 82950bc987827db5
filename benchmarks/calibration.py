"""Calibration, prediction sets and "not recognised", measured on the real data: the default
recipe over several seeds, with and without held-out training images.

    python benchmarks/calibration.py --runs-dir DIR [--seeds 0,1,2] [--holdouts 5000,0] \
        [--train] [--out benchmarks/results/NAME.json]

With --train, each (holdout, seed) run missing from DIR is trained first, one after another:
`python -m fmnist train --seed S --holdout H --threads 1 --no-tensorboard --out DIR/hH-sS`
(--threads 1: the machine is shared; accuracy does not depend on it). Then, for every finished
run: its test accuracy; and for runs with held-out images, from the model's logits (flip TTA, as
it predicts) on those images, the test set and the out-of-distribution pictures:

- the temperature (fitted again here with fmnist.trust.fit, and the one model.json holds);
- test ECE before and after it, with 95 % bootstrap intervals;
- split-conformal sets at 90 % and 95 %: coverage and mean size on the test set, for LAC (what
  fmnist uses), LAC with the top class forced in, and APS (not randomised);
- out-of-distribution scores (top probability, entropy, energy, max logit): AUROC against the
  test set on each set of pictures (fmnist.ood's drawn kinds, scikit-learn's digits), the share
  of them answered "not recognised" and the test set's pass rate, with the threshold passing
  95 % of the held-out images.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine_info, machine_line, machine_slug, run_child  # noqa: E402
from fmnist import datasets, ood, trust  # noqa: E402
from fmnist.checkpoint import load_model, normalization  # noqa: E402
from fmnist.evaluate import ece_interval, expected_calibration_error  # noqa: E402
from fmnist.inference import predict_logits, prepare_for_inference  # noqa: E402
from fmnist.train.data import Data, split_holdout  # noqa: E402

LEVELS = (0.90, 0.95)
DRAWN = 300  # pictures of each drawn kind


def train_command(holdout: int, seed: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "fmnist", "train", "--seed", str(seed), "--holdout",
            str(holdout), "--threads", "1", "--no-tensorboard", "--out", str(out)]


def finished(run: Path) -> bool:
    try:
        return json.loads((run / "status.json").read_text())["status"] == "finished"
    except (OSError, ValueError, KeyError):
        return False


def ood_scores(name: str, logits: np.ndarray, temperature: float) -> np.ndarray:
    """Higher is stranger, for the probability scores fmnist.trust has and two from logits."""
    if name in trust.OOD_SCORES:
        return trust.ood_scores(trust.softmax(logits, temperature), name)
    z = logits / temperature
    top = z.max(1)
    if name == "energy":  # -T logsumexp(logits / T) (Liu et al. 2020)
        return -temperature * (np.log(np.exp(z - top[:, None]).sum(1)) + top)
    if name == "maxlogit":
        return -logits.max(1)
    raise ValueError(name)


def measure(run: Path, holdout: int, pictures: dict[str, np.ndarray]) -> dict[str, Any]:
    model, meta = load_model(run)
    net = prepare_for_inference(model)
    mean, std = normalization(meta)
    tta = bool(meta.get("tta_flip"))

    def logits_of(x: np.ndarray | torch.Tensor) -> np.ndarray:
        return predict_logits(net, torch.as_tensor(x), mean, std, tta_flip=tta).double().numpy()

    xs, ys = datasets.load_arrays("fashion-mnist", "train")
    xt, yt = datasets.load_arrays("fashion-mnist", "test")
    data = split_holdout(Data(torch.from_numpy(xs), torch.from_numpy(ys), torch.from_numpy(xt),
                              torch.from_numpy(yt), list(meta["classes"])), holdout)
    assert data.holdout_images is not None and data.holdout_labels is not None
    held_y = data.holdout_labels.numpy()
    held, test = logits_of(data.holdout_images), logits_of(xt)
    fitted = trust.fit(held, held_y)
    t = fitted["temperature"]
    out: dict[str, Any] = {"temperature": t,
                           "temperature_in_model_json": (meta.get("trust") or {}).get("temperature"),
                           "held_out": len(held_y)}
    for when, temp in (("before", 1.0), ("after", t)):
        p = trust.softmax(test, temp)
        conf, right = p.max(1), (p.argmax(1) == yt).astype(np.float64)
        out[f"ece_{when}"] = expected_calibration_error(conf, right)
        out[f"ece_{when}_interval"] = ece_interval(conf, right)
        out[f"nll_{when}"] = trust.nll(test, yt, temp)
    held_p, test_p = trust.softmax(held, t), trust.softmax(test, t)
    sets: dict[str, Any] = {}
    for score in ("lac", "lac_top", "aps"):
        base = "lac" if score == "lac_top" else score
        for level in LEVELS:
            (q,) = trust.conformal_thresholds(held_p, held_y, base, [level])
            mask = trust.set_mask(test_p, base, q)
            if score == "lac_top":
                mask[np.arange(len(yt)), test_p.argmax(1)] = True
            sets[f"{score}@{level:g}"] = {"coverage": float(mask[np.arange(len(yt)), yt].mean()),
                                          "mean_size": float(mask.sum(1).mean()),
                                          "empty": float((~mask.any(1)).mean())}
    out["sets"] = sets
    pic_logits = {name: logits_of(x) for name, x in pictures.items()}
    scores: dict[str, Any] = {}
    for name in ("msp", "entropy", "energy", "maxlogit"):
        s_held, s_test = ood_scores(name, held, t), ood_scores(name, test, t)
        threshold = trust.ood_threshold(s_held, trust.DEFAULT_PASS_RATE)
        row: dict[str, Any] = {"test_pass_rate": float((s_test <= threshold).mean())}
        for pic, lg in pic_logits.items():
            s = ood_scores(name, lg, t)
            row[pic] = {"auroc": trust.auroc(s_test, s),
                        "not_recognised": float((s > threshold).mean())}
        scores[name] = row
    out["ood"] = scores
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs-dir", required=True, type=Path)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--holdouts", default="5000,0")
    p.add_argument("--train", action="store_true", help="train the runs missing from --runs-dir")
    p.add_argument("--out", type=Path)
    p.add_argument("--reuse", type=Path,
                   help="an earlier results file: its rows for runs measured there are kept")
    args = p.parse_args()
    reused = {(r["holdout"], r["seed"]): r
              for r in (json.loads(args.reuse.read_text())["runs"] if args.reuse else [])}
    seeds = [int(s) for s in args.seeds.split(",")]
    holdouts = [int(h) for h in args.holdouts.split(",")]
    info = machine_info()
    print(machine_line(info), flush=True)
    pictures = {kind: ood.drawn(kind, DRAWN) for kind in ood.DRAWN}
    pictures["digits"] = ood.digits()
    runs = []
    for holdout in holdouts:
        for seed in seeds:
            run = args.runs_dir / f"h{holdout}-s{seed}"
            row: dict[str, Any] = {"holdout": holdout, "seed": seed,
                                   "command": shlex.join(["python", *train_command(holdout, seed, Path("DIR"))[1:]])}
            if args.train and not finished(run):
                row["wall_s"] = run_child(train_command(holdout, seed, run))["wall_s"]
            if not finished(run):
                print(f"{run}: not trained (pass --train)", flush=True)
                continue
            if (holdout, seed) in reused:
                runs.append(reused[(holdout, seed)])
                continue
            metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                       if line.strip()][-1]
            row["test_accuracy"] = metrics["test_accuracy"]
            row["train_seconds"] = metrics["train_seconds"]
            if holdout:
                t0 = time.perf_counter()
                row |= measure(run, holdout, pictures)
                row["measure_seconds"] = time.perf_counter() - t0
            runs.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("sets", "ood")}), flush=True)
    result = {"benchmark": "calibration", "command": shlex.join(["python", *sys.argv]),
              "machine": info, "date": time.strftime("%Y-%m-%d"),
              "ood_pictures": {k: len(v) for k, v in pictures.items()}, "runs": runs}
    out = args.out or Path(__file__).parent / "results" / (
        f"{time.strftime('%Y-%m-%d')}-{machine_slug(info)}-calibration.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
