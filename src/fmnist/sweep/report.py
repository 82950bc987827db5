"""What a sweep shows: a line per trial while it runs, and in the sweep folder the trials table
(trials.md, trials.json), the best settings and how they differ from the recipe (best.json), and
Optuna's optimisation history and parameter importances (history.png, importances.png)."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

from fmnist.atomic import write_bytes, write_text
from fmnist.recipes import Recipe
from fmnist.sweep.space import differences


def state_of(trial: Any) -> str:
    """complete | pruned | failed | skipped | running | waiting."""
    if "skipped" in trial.user_attrs:
        return "skipped"
    return {"FAIL": "failed"}.get(trial.state.name, trial.state.name.lower())


def completed(study: Any) -> list[Any]:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]


def pruned(study: Any) -> list[Any]:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == "PRUNED"]


def best_of(study: Any) -> Any | None:
    done = completed(study)
    return max(done, key=lambda t: t.value) if done else None


def _values(trial: Any) -> str:
    values = trial.user_attrs.get("values") or trial.params
    return ", ".join(f"{k.removeprefix('model_config.')}={_fmt(v)}" for k, v in values.items())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


# A trial that trained this much longer than its --trial-budget did not get an equal share:
# the plan is measured in a few seconds, and a machine whose load changes after that runs
# longer (or shorter) than planned. The table says so, so its score is read with care.
OVER_BUDGET = 1.25


def rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial: what the table shows and trials.json holds."""
    out = []
    budget = (study.user_attrs.get("fmnist") or {}).get("trial_budget")
    for t in study.get_trials(deepcopy=False):
        seconds = t.user_attrs.get("train_seconds")
        reported = t.intermediate_values
        value = t.value if t.value is not None else (reported[max(reported)] if reported else None)
        out.append({
            "trial": t.number, "state": state_of(t), "validation_accuracy": value,
            "epochs": t.user_attrs.get("epochs") or (max(reported) if reported else None),
            "train_seconds": seconds,
            "over_budget": bool(budget and seconds and seconds > OVER_BUDGET * budget),
            "retry_of": t.system_attrs.get("failed_trial"), "worker": t.user_attrs.get("host"),
            "run_dir": t.user_attrs.get("run_dir"), "error": t.user_attrs.get("error"),
            "values": t.user_attrs.get("values") or t.params,
        })
    return out


def table(study: Any) -> str:
    """The trials as a Markdown table (validation accuracy: a pruned trial's last report)."""
    lines = ["| trial | state | val acc | epochs | train s | settings |",
             "| ---: | --- | ---: | ---: | ---: | --- |"]
    for t, r in zip(study.get_trials(deepcopy=False), rows(study), strict=True):
        acc = "" if r["validation_accuracy"] is None else f"{100 * r['validation_accuracy']:.2f} %"
        state = r["state"] + (f" (retry of {r['retry_of']})" if r["retry_of"] is not None else "")
        state += " (over budget)" if r["over_budget"] else ""
        lines.append(f"| {r['trial']} | {state} | {acc} | {r['epochs'] or ''} | "
                     f"{r['train_seconds'] or ''} | {_values(t)} |")
    return "\n".join(lines) + "\n"


def progress(trial: Any, study: Any, trials: int | None, left: float | None) -> str:
    """`trial 4 complete: 91.20 % | 5/20 done, best 92.10 % (trial 2) | 12.5 min left`"""
    state = state_of(trial)
    if state == "skipped":
        return f"trial {trial.number} skipped: the study already had its {trials} trials"
    value = trial.value if trial.value is not None else (
        trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values
        else None)
    shown = "" if value is None else f": {100 * value:.2f} %"
    if state == "pruned":
        shown += f" at epoch {max(trial.intermediate_values)}"
    if "error" in trial.user_attrs:
        shown += f": {trial.user_attrs['error']}"
    done = sum(state_of(t) in ("complete", "pruned") for t in study.get_trials(deepcopy=False))
    best = best_of(study)
    parts = [f"trial {trial.number} {state}{shown}",
             f"{done}{'/' + str(trials) if trials else ''} done"
             + (f", best {100 * best.value:.2f} % (trial {best.number})" if best else "")]
    if left is not None:
        parts.append(f"{max(0.0, left) / 60:.1f} min of budget left")
    return " | ".join(parts)


def best_settings(study: Any, recipe: Recipe) -> dict[str, Any] | None:
    best = best_of(study)
    if best is None:
        return None
    values = best.user_attrs.get("values", best.params)
    return {"trial": best.number, "validation_accuracy": best.value, "values": values,
            "changed": {k: {"recipe": a, "best": b}
                        for k, (a, b) in differences(recipe, values).items()},
            "run_dir": best.user_attrs.get("run_dir")}


def write(sweep_dir: Path, study: Any, recipe: Recipe, pictures: bool = True) -> None:
    """trials.md, trials.json, best.json and (with `pictures`) the two plots into the sweep
    folder."""
    write_text(sweep_dir / "trials.md", table(study), "trials table")
    write_text(sweep_dir / "trials.json", json.dumps(rows(study), indent=2) + "\n", "trials")
    best = best_settings(study, recipe)
    if best is not None:
        write_text(sweep_dir / "best.json", json.dumps(best, indent=2) + "\n", "best settings")
    if pictures:
        plots(sweep_dir, study)


def plots(sweep_dir: Path, study: Any) -> list[Path]:
    """Optuna's matplotlib plots; one that cannot be drawn yet (too few trials) is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    written = []
    for name, draw in (("history.png", vis.plot_optimization_history),
                       ("importances.png", vis.plot_param_importances)):
        if len(completed(study)) < 2:
            break
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax: Any = draw(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. no parameter varied
            plt.close("all")
            continue
        fig: Any = ax.figure
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(write_bytes(sweep_dir / name, buf.getvalue(), "picture"))
    return written


def summary(study: Any, recipe: Recipe, final_dir: Path | None, accuracy: float | None) -> list[str]:
    """The closing lines: the table, the best settings against the recipe, the final run."""
    lines = ["", table(study).rstrip()]
    best = best_settings(study, recipe)
    if best is None:
        return [*lines, "No trial has completed yet."]
    lines.append(f"Best: trial {best['trial']}, {100 * best['validation_accuracy']:.2f} % on the "
                 f"validation split.")
    for key, change in best["changed"].items():
        lines.append(f"  {key}: {_fmt(change['recipe'])} -> {_fmt(change['best'])}")
    if not best["changed"]:
        lines.append("  (the recipe's own settings)")
    if final_dir is not None and accuracy is not None:
        lines.append(f"Final run (all training images, test set read once): {100 * accuracy:.2f} % "
                     f"test accuracy in {final_dir}")
        lines.append(f"  reuse it: fmnist train --config {final_dir / 'config.json'}")
    return lines
