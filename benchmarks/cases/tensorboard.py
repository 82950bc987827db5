"""What TensorBoard logging costs `fmnist train`: training images/s (the loop with its per-step
sampling, from metrics.jsonl) and process wall time (adds the import, the graph and the
end-of-run figures), each recipe with and without `--no-tensorboard`, in alternating order;
reference: the same run with --no-tensorboard. Also, in one process, the seconds spent inside
the TensorBoard callback's hooks during the epochs against the training seconds around them:
a busy machine slows both alike, so this share holds where whole-run timings are noise."""

from __future__ import annotations

import argparse
import shlex
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import med, ratio, sec, train, train_cmd

if TYPE_CHECKING:
    from fmnist.train import Callback

# quickstart: 938 small steps an epoch, where a per-step cost shows most; default: the recipe
# people run, for its first 200 steps (the per-epoch images/s of a part epoch is as good).
# Short runs keep the case to minutes on 2 cores; the sides alternate every repetition.
RUNS = {"quickstart": ["--recipe", "quickstart", "--epochs", "1"],
        "default": ["--recipe", "default", "--steps", "200"]}
SIDES = {"tensorboard": [], "off": ["--no-tensorboard"]}


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    reps = 1 if args.quick else args.reps
    out: dict[str, Any] = {"commands": [], "recipes": {}}
    for name, flags in RUNS.items():
        samples: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        for i in range(reps):
            order = list(SIDES) if i % 2 == 0 else list(reversed(SIDES))  # ABBA: drift cancels
            for side in order:
                res, rows = train(tmp / f"{name}-{side}-{i}", *flags, *SIDES[side])
                samples[side].append({"wall_s": res["wall_s"],
                                      "images_per_s": [r["images_per_s"] for r in rows]})
        summary = {side: {
            # every epoch of every repetition: the loop's speed, evaluation excluded
            "images_per_s": statistics.median(v for s in runs for v in s["images_per_s"]),
            "wall_s": med([s["wall_s"] for s in runs]),
        } for side, runs in samples.items()}
        on, off = summary["tensorboard"], summary["off"]
        out["recipes"][name] = {
            "runs": samples, "summary": summary,
            "speed_cost": 1 - on["images_per_s"] / off["images_per_s"],
            "wall_cost_s": on["wall_s"] - off["wall_s"],
        }
        out["commands"] += [shlex.join(train_cmd(*flags, *SIDES[side], "--out", "TMP"))
                            for side in SIDES]
        out["recipes"][name]["in_loop"] = time_hooks(flags, tmp / f"{name}-hooks")
    return out


def time_hooks(flags: list[str], out: Path) -> dict[str, float]:
    """Train once in this process with the TensorBoard callback timed hook by hook."""
    from fmnist.cli import get_parser
    from fmnist.cli.train import recipe_from_args
    from fmnist.tensorboard import TensorBoardLog
    from fmnist.train import fit

    timed = timed_callback(TensorBoardLog())
    result = fit(recipe_from_args(get_parser().parse_args(["train", *flags])), out=out,
                 display=False, callbacks=[timed])
    seconds = timed.seconds  # type: ignore[attr-defined]
    train_s = result.rows[-1]["train_seconds"]
    return {**seconds, "train_seconds": train_s,
            "loop_share": (seconds["on_step"] + seconds["on_epoch_start"]) / train_s}


def timed_callback(inner: Callback) -> Callback:
    """`inner`, with the seconds spent in each of its hooks added up (on_epoch_end runs after
    the epoch's clock stops, so only on_step and on_epoch_start count against training)."""
    import time

    from fmnist.train import Callback

    hooks = ("on_fit_start", "on_epoch_start", "on_step", "on_epoch_end", "on_fit_end")

    class Timed(Callback):
        seconds = dict.fromkeys(hooks, 0.0)

    def timed(name: str) -> Any:
        def hook(self: Any, *args: Any) -> None:
            t0 = time.perf_counter()
            getattr(inner, name)(*args)
            self.seconds[name] += time.perf_counter() - t0
        return hook

    for name in hooks:
        setattr(Timed, name, timed(name))
    return Timed()


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    lines = []
    for name, r in result["recipes"].items():
        on, off = r["summary"]["tensorboard"], r["summary"]["off"]
        lines += [
            (f"tensorboard ({name})", "training images/s (median epoch)",
             f"{on['images_per_s']:,.0f}", f"{off['images_per_s']:,.0f} (--no-tensorboard)",
             f"{100 * r['speed_cost']:+.1f} % cost"),
            (f"tensorboard ({name})", "process wall time", sec(on["wall_s"]),
             f"{sec(off['wall_s'])} (--no-tensorboard)",
             f"{ratio(on['wall_s'], off['wall_s'])} (+{r['wall_cost_s']:.1f} s)"),
        ]
        if "in_loop" in r:
            h = r["in_loop"]
            lines.append((f"tensorboard ({name})", "seconds in its hooks during training, "
                          "one process", f"{h['on_step'] + h['on_epoch_start']:.3f} s",
                          f"{sec(h['train_seconds'])} training",
                          f"{100 * h['loop_share']:.2f} % of training; start +"
                          f"{h['on_fit_start']:.1f} s, end +{h['on_fit_end']:.1f} s"))
    return lines
