"""What a sweep shows: a line per trial while it runs, and in the sweep folder the trials table
(trials.md, trials.json), the best settings and how they differ from the recipe (best.json; with
a second objective, the Pareto front), and Optuna's optimisation history, parameter importances
and Pareto front (history.png, importances.png, pareto.png).

The study also holds the final run's claims (fmnist.sweep.final): bookkeeping trials, never
shown or counted here."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

from fmnist.atomic import write_bytes, write_text
from fmnist.recipes import Recipe
from fmnist.sweep.measures import SECOND
from fmnist.sweep.space import differences

CLAIM = "final_claim"  # the user attribute that makes a trial a final-run claim


def trials(study: Any) -> list[Any]:
    """The study's trials, less the final run's claims."""
    return [t for t in study.get_trials(deepcopy=False) if CLAIM not in t.user_attrs]


def second_of(study: Any) -> str | None:
    """The second objective (latency, params) of a multi-objective study, else None."""
    if len(study.directions) < 2:
        return None
    name = (study.user_attrs.get("fmnist") or {}).get("objective", "")
    return name.split(",")[1] if "," in name else "second"


def state_of(trial: Any) -> str:
    """complete | pruned | failed | interrupted | skipped | running | waiting."""
    if "skipped" in trial.user_attrs:
        return "skipped"
    if "interrupted" in trial.user_attrs:
        return "interrupted"
    return {"FAIL": "failed"}.get(trial.state.name, trial.state.name.lower())


def completed(study: Any) -> list[Any]:
    return [t for t in trials(study) if t.state.name == "COMPLETE"]


def pruned(study: Any) -> list[Any]:
    return [t for t in trials(study) if t.state.name == "PRUNED"]


def accuracy_of(trial: Any) -> float | None:
    """A trial's validation accuracy: its score, or a pruned or stopped trial's last report."""
    if trial.values:
        return float(trial.values[0])
    reported = trial.intermediate_values
    return reported[max(reported)] if reported else None


def front(study: Any) -> list[Any]:
    """The Pareto front of a multi-objective study (most accurate first); [] otherwise."""
    if second_of(study) is None:
        return []
    return sorted(study.best_trials, key=lambda t: (-t.values[0], t.values[1], t.number))


def best_of(study: Any) -> Any | None:
    """The trial the sweep picks: the most accurate (on a Pareto front: its most accurate point,
    the others are listed beside it)."""
    if second_of(study) is not None:
        points = front(study)
        return points[0] if points else None
    done = completed(study)
    return max(done, key=lambda t: (t.values[0], -t.number)) if done else None


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
    second = second_of(study)
    on_front = {t.number for t in front(study)}
    for t in trials(study):
        seconds = t.user_attrs.get("train_seconds")
        reported = t.intermediate_values
        row = {
            "trial": t.number, "state": state_of(t), "validation_accuracy": accuracy_of(t),
            "epochs": t.user_attrs.get("epochs"),
            "reported_at": max(reported) if reported else None,  # percent of its steps
            "train_seconds": seconds,
            "over_budget": bool(budget and seconds and seconds > OVER_BUDGET * budget),
            "retry_of": t.system_attrs.get("failed_trial"),
            "continues": t.user_attrs.get("continues"), "worker": t.user_attrs.get("host"),
            "run_dir": t.user_attrs.get("run_dir"), "error": t.user_attrs.get("error"),
            "values": t.user_attrs.get("values") or t.params,
        }
        if second is not None:
            row[second] = t.values[1] if t.values else None
            row["front"] = t.number in on_front
        out.append(row)
    return out


def table(study: Any) -> str:
    """The trials as a Markdown table (validation accuracy: a pruned trial's last report)."""
    second = second_of(study)
    extra = f" {SECOND.get(second, ('', second))[1]} | front |" if second else ""
    lines = [f"| trial | state | val acc |{extra} epochs | train s | settings |",
             "| ---: | --- | ---: |" + (" ---: | :---: |" if second else "")
             + " ---: | ---: | --- |"]
    for t, r in zip(trials(study), rows(study), strict=True):
        acc = "" if r["validation_accuracy"] is None else f"{100 * r['validation_accuracy']:.2f} %"
        state = r["state"] + (f" (retry of {r['retry_of']})" if r["retry_of"] is not None else "")
        state += f" (continues {r['continues']})" if r["continues"] is not None else ""
        state += f" at {r['reported_at']} %" if r["state"] == "pruned" and r["reported_at"] else ""
        state += " (over budget)" if r["over_budget"] else ""
        cells = ""
        if second:
            cells = f" {'' if r[second] is None else _fmt(r[second])} | {'*' if r['front'] else ''} |"
        lines.append(f"| {r['trial']} | {state} | {acc} |{cells} {r['epochs'] or ''} | "
                     f"{r['train_seconds'] or ''} | {_values(t)} |")
    return "\n".join(lines) + "\n"


def progress(trial: Any, study: Any, trials_asked: int | None, left: float | None) -> str:
    """`trial 4 complete: 91.20 % | 5/20 done, best 92.10 % (trial 2) | 12.5 min left`"""
    state = state_of(trial)
    if state == "skipped":
        return f"trial {trial.number} skipped: {trial.user_attrs['skipped']}"
    value = accuracy_of(trial)
    shown = "" if value is None else f": {100 * value:.2f} %"
    second = second_of(study)
    if second and trial.values:
        shown += f", {_fmt(trial.values[1])} {SECOND.get(second, ('', second))[1]}"
    if state == "pruned":
        shown += f" at {max(trial.intermediate_values)} % of its steps"
    if "error" in trial.user_attrs:
        shown += f": {trial.user_attrs['error']}"
    done = sum(state_of(t) in ("complete", "pruned") for t in trials(study))
    best = best_of(study)
    parts = [f"trial {trial.number} {state}{shown}",
             f"{done}{'/' + str(trials_asked) if trials_asked else ''} done"
             + (f", best {100 * best.values[0]:.2f} % (trial {best.number})" if best else "")]
    if left is not None:
        parts.append(f"{max(0.0, left) / 60:.1f} min of budget left")
    return " | ".join(parts)


def settings_of(trial: Any, recipe: Recipe) -> dict[str, Any]:
    values = trial.user_attrs.get("values", trial.params)
    return {"trial": trial.number, "validation_accuracy": trial.values[0], "values": values,
            "changed": {k: {"recipe": a, "best": b}
                        for k, (a, b) in differences(recipe, values).items()},
            "run_dir": trial.user_attrs.get("run_dir")}


def best_settings(study: Any, recipe: Recipe) -> dict[str, Any] | None:
    """The chosen trial's settings (and with a second objective, the whole front's)."""
    best = best_of(study)
    if best is None:
        return None
    chosen = settings_of(best, recipe)
    second = second_of(study)
    if second is not None:
        chosen[second] = best.values[1]
        chosen["front"] = [{**settings_of(t, recipe), second: t.values[1]} for t in front(study)]
    return chosen


def write(sweep_dir: Path, study: Any, recipe: Recipe, pictures: bool = True) -> None:
    """trials.md, trials.json, best.json and (with `pictures`) the plots into the sweep folder."""
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

    if len(completed(study)) < 2:
        return []
    second = second_of(study)
    # a multi-objective study's history and importances are those of the accuracy
    by_accuracy: dict[str, Any] = ({"target": lambda t: t.values[0],
                                    "target_name": "validation accuracy"} if second else {})
    pictures = [("history.png", lambda: vis.plot_optimization_history(study, **by_accuracy)),
                ("importances.png", lambda: vis.plot_param_importances(study, **by_accuracy))]
    if second:
        names = ["validation accuracy", SECOND.get(second, ("", second))[1]]
        pictures.append(("pareto.png", lambda: vis.plot_pareto_front(study, target_names=names)))
    written = []
    for name, draw in pictures:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax: Any = draw()
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
    second = second_of(study)
    if second:
        lines.append(f"Pareto front (accuracy against {second}): trials "
                     f"{', '.join(str(p['trial']) for p in best['front'])}; the final run "
                     "trains its most accurate point.")
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
