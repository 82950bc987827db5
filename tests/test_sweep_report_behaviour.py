"""What `fmnist sweep` shows about a study: the line printed after each trial, the closing
summary, and the sweep folder's trials.md, trials.json, best.json and pictures.

Each study is made here, in memory, with the trials a sweep leaves behind (complete, pruned at a
report, failed with its error, the retry of a killed trial, interrupted by a signal, its queued
continuation, skipped, still running, and a final run's claim, which is never shown); nothing is
trained."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="the sweep extra is not installed")

from optuna.trial import TrialState, create_trial  # noqa: E402

from fmnist.errors import WriteError  # noqa: E402
from fmnist.recipes import Recipe  # noqa: E402
from fmnist.sweep import report  # noqa: E402

LR = {"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)}
RECIPE = Recipe(lr=0.1, batch_size=256, model_config={"widths": [16, 32, 64]})
SAMPLED = {"lr": 0.1, "model_config.widths": [8, 8, 16], "batch_size": 64}


def trial(state: TrialState = TrialState.COMPLETE, lr: float = 0.1, **kwargs):
    return create_trial(state=state, params={"lr": lr}, distributions=LR, **kwargs)


def new_study(*trials, directions=("maximize",), **fmnist):
    study = optuna.create_study(directions=list(directions))
    if fmnist:
        study.set_user_attr("fmnist", fmnist)
    for t in trials:
        study.add_trial(t)
    return study


def a_sweep():
    """A single-objective study with a 10 s --trial-budget and one trial of each kind."""
    return new_study(
        trial(value=0.9, user_attrs={"values": SAMPLED, "epochs": 3, "train_seconds": 12.5,
                                     "run_dir": "/sweep/trials/0000", "host": "box:41"}),
        trial(TrialState.PRUNED, lr=0.0123456, intermediate_values={12: 0.5, 62: 0.7},
              user_attrs={"epochs": 2, "train_seconds": 12.6, "host": "box:42"}),
        trial(TrialState.FAIL, lr=2e-4,
              user_attrs={"error": "Training diverged in epoch 1: the loss is nan"}),
        trial(value=0.9, lr=0.5, system_attrs={"failed_trial": 2},
              user_attrs={"epochs": 3, "train_seconds": 9.0}),
        trial(TrialState.FAIL, lr=0.3, intermediate_values={12: 0.4},
              user_attrs={"interrupted": "Stopped by SIGTERM in trial 4"}),
        create_trial(state=TrialState.FAIL, user_attrs={report.CLAIM: "box:43", "final_of": 0}),
        trial(TrialState.WAITING, lr=0.3, user_attrs={"continues": 4}),
        trial(TrialState.FAIL, user_attrs={"skipped": "the study has its 5 trials"}),
        trial(TrialState.RUNNING),
        objective="accuracy", trial_budget=10)


def a_front(objective: str | None = "accuracy,latency"):
    """Accuracy against a second measure: trial 2 is dominated, 1 and 3 tie, 4 failed."""
    named = {} if objective is None else {"objective": objective}
    return new_study(
        trial(values=[0.9, 0.5], user_attrs={"train_seconds": 100}),
        trial(values=[0.8, 0.2], lr=0.01),
        trial(values=[0.7, 0.6], lr=0.3),
        trial(values=[0.8, 0.2], lr=0.02),
        trial(TrialState.FAIL, lr=0.4, user_attrs={"error": "out of memory"}),
        trial(values=[0.95, 0.9], lr=0.05, user_attrs={"values": SAMPLED}),
        directions=("maximize", "minimize"), **named)


# ---- the table: trials.md -------------------------------------------------------------------


def test_the_table_has_a_line_per_trial_saying_how_it_ended_and_never_the_final_runs_claim():
    study = a_sweep()
    assert report.table(study).splitlines() == [
        "| trial | state | val acc | epochs | train s | settings |",
        "| ---: | --- | ---: | ---: | ---: | --- |",
        "| 0 | complete | 90.00 % | 3 | 12.5 | lr=0.1, widths=8,8,16, batch_size=64 |",
        "| 1 | pruned at 62 % (over budget) | 70.00 % | 2 | 12.6 | lr=0.0123 |",
        "| 2 | failed |  |  |  | lr=0.0002 |",
        "| 3 | complete (retry of 2) | 90.00 % | 3 | 9.0 | lr=0.5 |",
        "| 4 | interrupted | 40.00 % |  |  | lr=0.3 |",
        "| 6 | waiting (continues 4) |  |  |  | lr=0.3 |",
        "| 7 | skipped |  |  |  | lr=0.1 |",
        "| 8 | running |  |  |  | lr=0.1 |",
    ]
    assert report.table(study).endswith(" |\n")
    assert [t.number for t in report.trials(study)] == [0, 1, 2, 3, 4, 6, 7, 8]
    assert [t.number for t in report.completed(study)] == [0, 3]
    assert [t.number for t in report.pruned(study)] == [1]


def test_a_front_adds_the_second_measure_and_marks_the_trials_on_the_front():
    study = a_front()
    assert report.table(study).splitlines() == [
        "| trial | state | val acc | ms per image | front | epochs | train s | settings |",
        "| ---: | --- | ---: | ---: | :---: | ---: | ---: | --- |",
        "| 0 | complete | 90.00 % | 0.5 | * |  | 100 | lr=0.1 |",  # no budget: never over it
        "| 1 | complete | 80.00 % | 0.2 | * |  |  | lr=0.01 |",
        "| 2 | complete | 70.00 % | 0.6 |  |  |  | lr=0.3 |",
        "| 3 | complete | 80.00 % | 0.2 | * |  |  | lr=0.02 |",
        "| 4 | failed |  |  |  |  |  | lr=0.4 |",
        "| 5 | complete | 95.00 % | 0.9 | * |  |  | lr=0.1, widths=8,8,16, batch_size=64 |",
    ]
    # most accurate first; equal points in trial order
    assert [t.number for t in report.front(study)] == [5, 0, 1, 3]
    assert report.best_of(study).number == 5
    assert report.table(a_front("accuracy,params")).splitlines()[0] == (
        "| trial | state | val acc | parameters | front | epochs | train s | settings |")


def test_a_two_measure_study_that_does_not_name_its_second_calls_it_second():
    for fmnist in ({}, {"trial_budget": 10}, {"objective": "accuracy"}):
        study = new_study(trial(values=[0.9, 3.0]), directions=("maximize", "minimize"),
                          **fmnist)
        assert report.second_of(study) == "second"
        assert report.table(study).splitlines()[:3] == [
            "| trial | state | val acc | second | front | epochs | train s | settings |",
            "| ---: | --- | ---: | ---: | :---: | ---: | ---: | --- |",
            "| 0 | complete | 90.00 % | 3 | * |  |  | lr=0.1 |"]
        assert report.rows(study)[0]["second"] == 3.0
        assert report.progress(study.get_trials()[0], study, None, None) == (
            "trial 0 complete: 90.00 %, 3 second | 1 done, best 90.00 % (trial 0)")
    one = new_study(trial(value=0.9), objective="accuracy,latency")  # one direction: one measure
    assert report.second_of(one) is None and report.front(one) == []
    assert "front" not in report.table(one) and "front" not in report.rows(one)[0]


def test_the_best_trial_is_the_most_accurate_and_the_earlier_of_a_tie():
    study = a_sweep()
    assert report.best_of(study).number == 0  # trial 3 is as accurate, but later
    later = new_study(trial(value=0.8), trial(value=0.9), trial(value=0.9))
    assert report.best_of(later).number == 1
    assert report.best_of(new_study(trial(TrialState.PRUNED, intermediate_values={12: 0.9}))) \
        is None
    no_front = new_study(trial(TrialState.FAIL), directions=("maximize", "minimize"))
    assert report.front(no_front) == [] and report.best_of(no_front) is None


def test_a_trials_accuracy_is_its_score_or_its_last_report():
    done, pruned, failed = a_sweep().get_trials()[:3]
    assert report.accuracy_of(done) == 0.9
    assert report.accuracy_of(pruned) == 0.7  # the report at 62 %, not the one at 12 %
    assert report.accuracy_of(failed) is None
    assert [report.state_of(t) for t in a_sweep().get_trials()] == [
        "complete", "pruned", "failed", "complete", "interrupted", "failed", "waiting",
        "skipped", "running"]


# ---- trials.json ------------------------------------------------------------------------------


def test_trials_json_holds_every_field_of_each_trial():
    rows = report.rows(a_sweep())
    assert rows[:3] == [
        {"trial": 0, "state": "complete", "validation_accuracy": 0.9, "epochs": 3,
         "reported_at": None, "train_seconds": 12.5, "over_budget": False, "retry_of": None,
         "continues": None, "worker": "box:41", "run_dir": "/sweep/trials/0000", "error": None,
         "values": SAMPLED},
        {"trial": 1, "state": "pruned", "validation_accuracy": 0.7, "epochs": 2,
         "reported_at": 62, "train_seconds": 12.6, "over_budget": True, "retry_of": None,
         "continues": None, "worker": "box:42", "run_dir": None, "error": None,
         "values": {"lr": 0.0123456}},
        {"trial": 2, "state": "failed", "validation_accuracy": None, "epochs": None,
         "reported_at": None, "train_seconds": None, "over_budget": False, "retry_of": None,
         "continues": None, "worker": None, "run_dir": None,
         "error": "Training diverged in epoch 1: the loss is nan", "values": {"lr": 0.0002}},
    ]
    assert [(r["trial"], r["retry_of"], r["continues"], r["reported_at"]) for r in rows[3:]] == [
        (3, 2, None, None), (4, None, None, 12), (6, None, 4, None), (7, None, None, None),
        (8, None, None, None)]
    front = report.rows(a_front())
    assert [(r["latency"], r["front"], r["over_budget"]) for r in front] == [
        (0.5, True, False), (0.2, True, False), (0.6, False, False), (0.2, True, False),
        (None, False, False), (0.9, True, False)]


# ---- the line after each trial ------------------------------------------------------------------


def test_the_line_after_each_trial_says_how_it_ended_the_count_the_best_and_the_time_left():
    study = a_sweep()
    done, pruned, failed, retry, interrupted, _, _, skipped, _ = study.get_trials()
    best = "best 90.00 % (trial 0)"
    assert report.progress(done, study, 5, 600.0) == (
        f"trial 0 complete: 90.00 % | 3/5 done, {best} | 10.0 min of budget left")
    assert report.progress(pruned, study, None, None) == (
        f"trial 1 pruned: 70.00 % at 62 % of its steps | 3 done, {best}")
    assert report.progress(failed, study, 5, -30.0) == (
        "trial 2 failed: Training diverged in epoch 1: the loss is nan | 3/5 done, "
        f"{best} | 0.0 min of budget left")
    assert report.progress(retry, study, 0, 3000.0) == (
        f"trial 3 complete: 90.00 % | 3 done, {best} | 50.0 min of budget left")
    assert report.progress(interrupted, study, 5, None) == (
        f"trial 4 interrupted: 40.00 % | 3/5 done, {best}")
    assert report.progress(skipped, study, 5, 60.0) == (
        "trial 7 skipped: the study has its 5 trials")


def test_before_a_trial_completes_the_line_names_no_best():
    study = new_study(trial(TrialState.PRUNED, intermediate_values={0: 0.1, 12: 0.5}),
                      trial(TrialState.FAIL, user_attrs={"error": "boom"}))
    first, second = study.get_trials()
    assert report.progress(first, study, 3, None) == (
        "trial 0 pruned: 50.00 % at 12 % of its steps | 1/3 done")
    assert report.progress(second, study, 3, None) == "trial 1 failed: boom | 1/3 done"
    # a trial that failed after it had reported: its last report, then why it failed
    late = new_study(trial(TrialState.FAIL, intermediate_values={12: 0.4},
                           user_attrs={"error": "Training diverged in epoch 2"}))
    assert report.progress(late.get_trials()[0], late, None, None) == (
        "trial 0 failed: 40.00 %: Training diverged in epoch 2 | 0 done")


def test_on_a_front_the_line_gives_the_second_measure_and_the_fronts_most_accurate():
    study = a_front()
    *_, failed, top = study.get_trials()
    assert report.progress(top, study, 8, None) == (
        "trial 5 complete: 95.00 %, 0.9 ms per image | 5/8 done, best 95.00 % (trial 5)")
    assert report.progress(failed, study, None, None) == (
        "trial 4 failed: out of memory | 5 done, best 95.00 % (trial 5)")


# ---- best.json and the summary ------------------------------------------------------------------


def test_best_json_gives_the_best_settings_and_what_differs_from_the_recipe():
    assert report.best_settings(a_sweep(), RECIPE) == {
        "trial": 0, "validation_accuracy": 0.9, "values": SAMPLED,
        "changed": {"model_config.widths": {"recipe": [16, 32, 64], "best": [8, 8, 16]},
                    "batch_size": {"recipe": 256, "best": 64}},
        "run_dir": "/sweep/trials/0000"}
    own = new_study(trial(value=0.5, lr=0.1))  # no `values` attribute: its params
    assert report.best_settings(own, RECIPE) == {
        "trial": 0, "validation_accuracy": 0.5, "values": {"lr": 0.1}, "changed": {},
        "run_dir": None}
    assert report.best_settings(new_study(trial(TrialState.FAIL)), RECIPE) is None


def test_best_json_on_a_front_lists_every_point_with_its_second_measure():
    best = report.best_settings(a_front(), RECIPE)
    point = {"values": {"lr": 0.1}, "changed": {}, "run_dir": None}
    assert best == {
        "trial": 5, "validation_accuracy": 0.95, "values": SAMPLED,
        "changed": {"model_config.widths": {"recipe": [16, 32, 64], "best": [8, 8, 16]},
                    "batch_size": {"recipe": 256, "best": 64}},
        "run_dir": None, "latency": 0.9,
        "front": [
            {"trial": 5, "validation_accuracy": 0.95, "values": SAMPLED,
             "changed": best["changed"], "run_dir": None, "latency": 0.9},
            {"trial": 0, "validation_accuracy": 0.9, **point, "latency": 0.5},
            {"trial": 1, "validation_accuracy": 0.8, **point, "values": {"lr": 0.01},
             "changed": {"lr": {"recipe": 0.1, "best": 0.01}}, "latency": 0.2},
            {"trial": 3, "validation_accuracy": 0.8, **point, "values": {"lr": 0.02},
             "changed": {"lr": {"recipe": 0.1, "best": 0.02}}, "latency": 0.2}]}


def test_the_summary_shows_the_table_the_best_against_the_recipe_and_the_final_run():
    study = a_sweep()
    final = Path("/sweep/final-0000")
    assert report.summary(study, RECIPE, final, 0.9123) == [
        "", report.table(study).rstrip(),
        "Best: trial 0, 90.00 % on the validation split.",
        "  model_config.widths: 16,32,64 -> 8,8,16",
        "  batch_size: 256 -> 64",
        "Final run (all training images, test set read once): 91.23 % test accuracy in "
        "/sweep/final-0000",
        "  reuse it: fmnist train --config /sweep/final-0000/config.json"]
    # another worker trains the final run: nothing to show of it here
    assert report.summary(study, RECIPE, None, None)[-1] == "  batch_size: 256 -> 64"
    assert report.summary(study, RECIPE, final, None)[-1] == "  batch_size: 256 -> 64"
    assert report.summary(study, RECIPE, None, 0.9)[-1] == "  batch_size: 256 -> 64"


def test_the_summary_says_when_the_best_is_the_recipe_or_nothing_has_completed():
    own = new_study(trial(value=0.5, lr=0.1))
    assert report.summary(own, RECIPE, None, None)[2:] == [
        "Best: trial 0, 50.00 % on the validation split.", "  (the recipe's own settings)"]
    empty = new_study(trial(TrialState.PRUNED, intermediate_values={12: 0.3}))
    assert report.summary(empty, RECIPE, None, None) == [
        "", report.table(empty).rstrip(), "No trial has completed yet."]


def test_the_summary_of_a_front_names_its_points():
    study = a_front()
    lines = report.summary(study, RECIPE, Path("/sweep/final-0005"), 0.9)
    assert lines[2:5] == [
        "Pareto front (accuracy against latency): trials 5, 0, 1, 3; the final run trains its "
        "most accurate point.",
        "Best: trial 5, 95.00 % on the validation split.",
        "  model_config.widths: 16,32,64 -> 8,8,16"]


# ---- the sweep folder ---------------------------------------------------------------------------


def test_the_sweep_folder_gets_the_table_trials_json_and_best_json(tmp_path):
    study = a_sweep()
    report.write(tmp_path, study, RECIPE, pictures=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "trials.json", "trials.md"]
    assert (tmp_path / "trials.md").read_text() == report.table(study)
    text = (tmp_path / "trials.json").read_text()
    assert text.startswith('[\n  {\n    "trial": 0,\n    "state": "complete",') and text.endswith(
        "\n]\n")
    assert json.loads(text) == report.rows(study)
    best = (tmp_path / "best.json").read_text()
    assert best.startswith('{\n  "trial": 0,\n  "validation_accuracy": 0.9,') and best.endswith(
        "\n}\n")
    assert json.loads(best) == report.best_settings(study, RECIPE)
    nothing = tmp_path / "nothing"
    report.write(nothing, new_study(trial(TrialState.RUNNING)), RECIPE, pictures=False)
    assert sorted(p.name for p in nothing.iterdir()) == ["trials.json", "trials.md"]


@pytest.mark.parametrize(("name", "what"), [
    ("trials.md", "trials table"), ("trials.json", "trials"), ("best.json", "best settings"),
    ("history.png", "picture")])
def test_a_file_that_cannot_be_written_is_named_in_one_sentence(tmp_path, name, what):
    (tmp_path / name).mkdir()  # a folder where the file should go
    study = new_study(trial(value=0.8), trial(value=0.9, lr=0.2))
    with pytest.raises(WriteError) as e:
        report.write(tmp_path, study, RECIPE, pictures=name.endswith(".png"))
    assert str(e.value) == (f"Could not write the {what} {tmp_path / name}: a folder stands "
                            "where the file should go.")


class Drawn:
    """What each saved figure shows: its axes' labels and legend, and the plotted points."""

    def __init__(self, monkeypatch):
        import matplotlib.figure

        self.figures: list[dict] = []
        save = matplotlib.figure.Figure.savefig

        def savefig(figure, *args, **kwargs):
            self.figures.append({
                "labels": [(ax.get_xlabel(), ax.get_ylabel()) for ax in figure.axes],
                "legend": [t.get_text() for ax in figure.axes if ax.get_legend()
                           for t in ax.get_legend().get_texts()],
                "y": sorted({round(float(y), 6) for ax in figure.axes for c in ax.collections
                             for _, y in c.get_offsets()}),
                "canvas": tuple(round(v * kwargs.get("dpi", 100))
                                for v in figure.get_size_inches())})
            return save(figure, *args, **kwargs)

        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)


def png(path: Path) -> tuple[tuple[int, int], float]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size, round(image.info["dpi"][0])


def test_pictures_of_the_history_and_importances_once_two_trials_completed(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    drawn = Drawn(monkeypatch)
    one = new_study(trial(value=0.8), trial(TrialState.PRUNED, intermediate_values={12: 0.1}))
    assert report.plots(tmp_path / "one", one) == [] and not (tmp_path / "one").exists()
    study = new_study(trial(value=0.8), trial(value=0.9, lr=0.2),
                      trial(TrialState.FAIL, lr=0.3))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        report.write(tmp_path, study, RECIPE)  # pictures unless told not to
    assert said == []  # Optuna's warnings that its plots are experimental are not shown
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.json", "history.png", "importances.png", "trials.json", "trials.md"]
    assert [f["legend"][0] for f in drawn.figures] == ["Objective Value"] * 2
    for name, figure in zip(("history.png", "importances.png"), drawn.figures, strict=True):
        size, dpi = png(tmp_path / name)
        assert dpi == 110 and size != figure["canvas"]  # 110 dpi, cropped to what is drawn
    assert plt.get_fignums() == []  # every figure closed


def test_a_front_gets_the_accuracys_history_and_importances_and_the_pareto_front(tmp_path,
                                                                                  monkeypatch):
    drawn = Drawn(monkeypatch)
    written = report.plots(tmp_path, a_front())
    assert written == [tmp_path / "history.png", tmp_path / "importances.png",
                       tmp_path / "pareto.png"]
    history, importances, pareto = drawn.figures
    assert history["labels"][0][1] == "validation accuracy"
    assert history["y"] == [0.7, 0.8, 0.9, 0.95]  # the accuracies, not the latencies
    assert importances["legend"] == ["validation accuracy"]
    assert pareto["labels"] == [("validation accuracy", "ms per image")]
    assert all(png(p)[1] == 110 for p in written)
    report.plots(tmp_path / "unnamed", a_front(objective=None))
    assert drawn.figures[-1]["labels"] == [("validation accuracy", "second")]
