"""Sweeps that start from what you have: a new study's first trial is the recipe's own settings
(its value added to a choice that lacks it, a range's nearer end where a range lacks it); a
Pareto front of accuracy against latency or parameters, in the table, best.json and a picture,
with the final run for its most accurate point; one folder per study name; a sampled batch
size keeps the recipe's floor on steps."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_sweep import TWO_LRS, small, small_dataset

optuna = pytest.importorskip("optuna", reason="the sweep extra is not installed")

from fmnist.errors import ConfigError  # noqa: E402
from fmnist.models import build_model  # noqa: E402
from fmnist.recipes import get_recipe  # noqa: E402
from fmnist.sweep import parse_space, report, sweep  # noqa: E402
from fmnist.sweep.measures import Objective, latency_ms, parse_objective  # noqa: E402
from fmnist.sweep.space import to_recipe, with_recipe  # noqa: E402
from fmnist.sweep.storage import default_url  # noqa: E402
from fmnist.sweep.study import open_study, start_from_recipe, sweep_folder  # noqa: E402


@pytest.fixture
def dataset(tmp_path: Path) -> str:
    return small_dataset(tmp_path)


def test_a_new_studys_first_trial_is_the_recipes_own_settings(dataset, tmp_path):
    recipe = replace(small(dataset), lr=0.003)  # not among the space's choices 1e-5, 0.01
    space = parse_space(TWO_LRS, recipe)
    lines: list[str] = []
    first = sweep(recipe, space, out=tmp_path, trials=1, validation=0.2, final=False,
                  show=lines.append)
    trial = report.trials(first.study)[0]
    assert trial.params == {"lr": 0.003} and trial.user_attrs["from_recipe"]
    said = [line for line in lines if line.startswith("The first trial")]
    assert said == ["The first trial is the recipe's own settings (lr: the recipe's 0.003 added "
                    "to the choices)."]
    start_from_recipe(first.study, {"lr": 0.003}, [], lines.append)  # what a rerun does
    assert len(report.trials(first.study)) == 1  # a study that has trials is not started again
    assert sum(line.startswith("The first trial") for line in lines) == 1


def test_a_recipe_value_outside_a_range_starts_at_the_nearer_end():
    recipe = replace(get_recipe("default"), weight_decay=0.0)  # a log range cannot hold 0
    space = parse_space({"weight_decay": {"low": 1e-5, "high": 1e-2, "log": True},
                         "batch_size": {"choices": [64, 256]}, "tta_flip": False}, recipe)
    widened, first, notes = with_recipe(space, recipe)
    assert first == {"weight_decay": 1e-5, "batch_size": 128}
    assert widened["batch_size"].choices == (128, 64, 256) and widened["weight_decay"] == space[
        "weight_decay"]
    assert notes == ["weight_decay: the recipe's 0 lies outside 1e-05 .. 0.01 (log), so the first "
                     "trial takes 1e-05", "batch_size: the recipe's 128 added to the choices"]


def test_accuracy_and_params_make_a_pareto_front_with_a_final_run_for_its_most_accurate(
        dataset, tmp_path):
    recipe = small(dataset)
    space = parse_space({"lr": {"choices": [1e-5, 0.01]},
                         "model_config": {"widths": {"choices": [[8, 8, 16], [4, 4, 8]]}}}, recipe)
    lines: list[str] = []
    result = sweep(recipe, space, out=tmp_path, name="small", trials=3, validation=0.2, seed=0,
                   objective="accuracy,params", show=lines.append)
    assert result.sweep_dir == tmp_path / "small"
    assert any(line.startswith("Nothing is pruned") for line in lines)
    trials = report.trials(result.study)
    assert all(len(t.values) == 2 and t.values[1] == t.user_attrs["params"] for t in trials)
    best = json.loads((result.sweep_dir / "best.json").read_text())
    front = {p["trial"] for p in best["front"]}
    assert front == {t.number for t in result.study.best_trials}
    # the most accurate point of the front is the one trained on all images
    top = max(best["front"], key=lambda p: p["validation_accuracy"])
    assert best["trial"] == top["trial"] and result.final_dir == result.sweep_dir / (
        f"final-{top['trial']:04d}")
    table = (result.sweep_dir / "trials.md").read_text()
    assert "| parameters | front |" in table and table.count("| * |") == len(front)
    assert (result.sweep_dir / "pareto.png").stat().st_size > 0


def test_the_front_leaves_out_dominated_trials_in_the_table_best_json_and_picture(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("fmnist", {"objective": "accuracy,latency"})
    lr = {"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}
    for accuracy, ms, value in ((0.9, 0.5, 0.1), (0.8, 0.2, 0.01), (0.7, 0.6, 0.3)):
        study.add_trial(optuna.trial.create_trial(values=[accuracy, ms], params={"lr": value},
                                                  distributions=lr))
    recipe = get_recipe("default")
    report.write(tmp_path, study, recipe)
    best = json.loads((tmp_path / "best.json").read_text())
    assert [p["trial"] for p in best["front"]] == [0, 1]  # trial 2 is less accurate and slower
    assert best["trial"] == 0 and best["latency"] == 0.5 and best["front"][1]["latency"] == 0.2
    table = (tmp_path / "trials.md").read_text().splitlines()
    assert "| ms per image | front |" in table[0]
    assert [line.endswith("|") and "| * |" in line for line in table[2:]] == [True, True, False]
    assert (tmp_path / "pareto.png").stat().st_size > 0


def test_latency_is_ms_per_image_of_the_trained_model():
    model = build_model("cnn", {"widths": [4, 4, 8], "num_classes": 10})
    plain, flipped = latency_ms(model, tta_flip=False), latency_ms(model, tta_flip=True)
    assert 0 < plain < 1000 and 0 < flipped < 1000
    assert Objective("latency").measure(model, False) > 0
    assert Objective("params").measure(model, False) == sum(p.numel() for p in model.parameters())


def test_the_objective_is_one_a_study_keeps(tmp_path):
    assert parse_objective("accuracy,latency").directions == ["maximize", "minimize"]
    with pytest.raises(ConfigError, match=r"^Invalid objective 'speed'\. Only accuracy"):
        parse_objective("speed")
    url = default_url(tmp_path)
    open_study(url, "s", 30, None, Objective(), "median", 4)
    with pytest.raises(ConfigError, match=r"^Study 's' was started with another --objective"):
        open_study(url, "s", 30, None, Objective("latency"), "median", 4)


def test_studies_of_different_names_never_share_a_folder(tmp_path):
    assert sweep_folder(tmp_path, "a") == tmp_path / "a" != sweep_folder(tmp_path, "b")
    old = tmp_path / "old"  # a sweep folder from before the name was part of the path
    old.mkdir()
    (old / "sweep.json").write_text(json.dumps({"study": "shoes"}))
    assert sweep_folder(old, "shoes") == old and sweep_folder(old, "bags") == old / "bags"


def test_a_sampled_batch_size_keeps_the_recipes_floor_on_steps():
    recipe = get_recipe("default")
    assert recipe.min_steps > 0
    assert to_recipe(recipe, {"batch_size": 64}).min_steps == recipe.min_steps
    assert to_recipe(recipe, {"epochs": 3}).min_steps == 0  # a length asked for is kept
