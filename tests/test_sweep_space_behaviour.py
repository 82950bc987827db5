"""The search space of `fmnist sweep`, as a user meets it: the default space docs/sweep.md
promises for each model, a space file read into ranges, choices and fixed values (whole numbers
for integer fields, log scales, steps), every bad entry refused before the first trial in one
sentence that says what to change, what Optuna is asked to sample (and that every sample of the
default space is a recipe fmnist builds), a sampled point turned back into a recipe, the first
trial of a new study (the recipe's own settings, a range's nearer end, a choice that gains the
recipe's value) and what best.json calls a change from the recipe.

No training: real Optuna studies in memory with a seeded random sampler, and the models built
at the range ends and choices, as `parse_space` checks them."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace

import pytest

optuna = pytest.importorskip("optuna", reason="the sweep extra is not installed")

from optuna.distributions import (  # noqa: E402
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from fmnist.errors import ConfigError  # noqa: E402
from fmnist.models import build_model  # noqa: E402
from fmnist.recipes import Recipe, get_recipe  # noqa: E402
from fmnist.sweep import Param, default_space, parse_space, read_space  # noqa: E402
from fmnist.sweep.space import (  # noqa: E402
    NOT_SWEPT,
    describe,
    differences,
    recipe_value,
    sample,
    to_recipe,
    with_recipe,
)
from fmnist.sweep.study import check_args  # noqa: E402

DEFAULT = get_recipe("default")  # cnn 16,32,96 pooled, lr 0.1, batch 128, shift 0
# docs/sweep.md, "The search space": the default space for the default recipe
DOCUMENTED = {
    "lr": "0.01 .. 0.3 (log)",
    "weight_decay": "1e-05 .. 0.01 (log)",
    "label_smoothing": "0 .. 0.2",
    "batch_size": "one of 64, 128, 256",
    "shift": "0 .. 2",
    "model_config.widths": "one of [16, 32, 96], [16, 64, 128], [16, 32, 128]",
}
# docs/sweep.md's example space file, word for word (and a comment that is not ASCII)
DOCS_EXAMPLE = """\
# größe: a space file is TOML, and TOML is UTF-8
lr = {low = 0.01, high = 0.3, log = true}   # a range (whole numbers for integer fields)
batch_size = {choices = [64, 128, 256]}      # a choice
flip = {choices = [true, false]}
tta_flip = false                             # fixed: the same in every trial
[model_config]
widths = {choices = [[16, 32, 96], [16, 64, 128]]}
"""


pytestmark = pytest.mark.usefixtures("quiet_optuna")


def random_study():
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))


def asked(space, trials: int = 1):
    """`trials` trials of a new study: each one's sampled values and Optuna's distributions."""
    study = random_study()
    out = []
    for _ in range(trials):
        trial = study.ask()
        out.append((sample(trial, space), trial.distributions))
    return out


def builds(recipe: Recipe) -> None:
    build_model(recipe.model, {**recipe.model_config, "num_classes": 10})


# ---- the default space ------------------------------------------------------------------------


def test_the_default_space_of_the_default_recipe_is_the_documented_one():
    assert describe(default_space(DEFAULT)) == DOCUMENTED


def test_the_default_space_follows_the_recipes_lr_and_model():
    # lr over [lr/10, 3 lr] on a log scale, around the recipe's own; the mlp has no shift to
    # sample and no widths; the resnet samples the shift but keeps its own widths
    quickstart = describe(default_space(get_recipe("quickstart")))
    assert quickstart == {"lr": "0.0001 .. 0.003 (log)", "weight_decay": "1e-05 .. 0.01 (log)",
                          "label_smoothing": "0 .. 0.2", "batch_size": "one of 64, 128, 256"}
    resnet = describe(default_space(replace(DEFAULT, model="resnet", model_config={}, lr=0.05)))
    assert resnet == {**quickstart, "lr": "0.005 .. 0.15 (log)", "shift": "0 .. 2"}
    assert describe(default_space(get_recipe("best")))["lr"] == "0.005 .. 0.15 (log)"


@pytest.mark.parametrize("recipe", [DEFAULT, get_recipe("quickstart"), get_recipe("best"),
                                    replace(DEFAULT, model="resnet", model_config={})],
                         ids=["default", "quickstart", "best", "resnet"])
def test_what_optuna_samples_from_the_default_space(recipe):
    space = default_space(recipe)
    values, dists = asked(space)[0]
    lr = dists["lr"]
    assert isinstance(lr, FloatDistribution) and lr.log and lr.step is None
    assert math.isclose(lr.low, recipe.lr / 10) and math.isclose(lr.high, recipe.lr * 3)
    assert dists["weight_decay"] == FloatDistribution(1e-5, 1e-2, log=True)
    assert dists["label_smoothing"] == FloatDistribution(0.0, 0.2)
    assert dists["batch_size"] == CategoricalDistribution((64, 128, 256))
    conv = recipe.model in ("cnn", "resnet")
    assert ("shift" in dists) == conv and (not conv or dists["shift"] == IntDistribution(0, 2))
    if recipe.model == "cnn":  # a list choice travels to Optuna as its JSON
        assert dists["model_config.widths"] == CategoricalDistribution(
            ("[16, 32, 96]", "[16, 64, 128]", "[16, 32, 128]"))
    else:
        assert "model_config.widths" not in dists
    assert set(values) == set(dists) == set(space)


def test_every_sample_of_the_default_space_is_a_recipe_fmnist_builds():
    for values, _ in asked(default_space(DEFAULT), trials=40):
        assert 0.01 <= values["lr"] <= 0.3 + 1e-12 and 1e-5 <= values["weight_decay"] <= 1e-2
        assert 0 <= values["label_smoothing"] <= 0.2 and values["batch_size"] in (64, 128, 256)
        assert values["shift"] in (0, 1, 2) and isinstance(values["shift"], int)
        assert values["model_config.widths"] in ([16, 32, 96], [16, 64, 128], [16, 32, 128])
        recipe = to_recipe(DEFAULT, values)
        assert recipe.model_config == {"widths": values["model_config.widths"],
                                       "pool_last_stage": True}
        assert (recipe.lr, recipe.shift, recipe.batch_size) == (
            values["lr"], values["shift"], values["batch_size"])
        builds(recipe)


# ---- a space file -------------------------------------------------------------------------------


def test_the_documented_space_file_reads_into_ranges_choices_and_fixed_values(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(DOCS_EXAMPLE, encoding="utf-8")
    space = parse_space(read_space(path), DEFAULT)
    assert space == {
        "lr": Param("float", 0.01, 0.3, log=True),
        "batch_size": Param("choice", choices=(64, 128, 256)),
        "flip": Param("choice", choices=(True, False)),
        "tta_flip": Param("fixed", value=False),
        "model_config.widths": Param("choice", choices=([16, 32, 96], [16, 64, 128])),
    }
    assert describe(space) == {"lr": "0.01 .. 0.3 (log)", "batch_size": "one of 64, 128, 256",
                               "flip": "one of true, false", "tta_flip": "false",
                               "model_config.widths": "one of [16, 32, 96], [16, 64, 128]"}
    assert describe({"label_smoothing": Param("float", 0.0, 0.2), "epochs": Param("fixed", value=3)}
                    ) == {"label_smoothing": "0 .. 0.2", "epochs": "3"}


def test_a_space_file_that_cannot_be_read_is_one_sentence(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as e:
        read_space(missing)
    assert str(e.value) == f"Cannot read space file {missing}: No such file or directory."
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = {low = 0.1, high\n")
    with pytest.raises(ConfigError, match=rf"^Space file {bad} is not valid TOML: .+\.$"):
        read_space(str(bad))


def test_integer_fields_take_whole_numbers_and_float_fields_stay_floats():
    space = parse_space({
        "epochs": {"low": 2.0, "high": 5.0},       # whole numbers written as floats
        "weight_decay": {"low": 0, "high": 1},     # a float field with whole-number ends
        "lr": {"low": 0.05, "high": 1},            # one end a whole number
        "model_config": {"pool_last_stage": {"choices": [True, False]}},
    }, DEFAULT)
    assert space["epochs"] == Param("int", 2, 5)
    assert space["weight_decay"] == Param("float", 0.0, 1.0)
    assert space["lr"] == Param("float", 0.05, 1.0)
    for values, dists in asked(space, trials=5):
        assert dists["epochs"] == IntDistribution(2, 5) and isinstance(values["epochs"], int)
        assert dists["weight_decay"] == FloatDistribution(0.0, 1.0)
        assert dists["lr"] == FloatDistribution(0.05, 1.0)
        assert to_recipe(DEFAULT, values).epochs == values["epochs"]
    # a model setting is whole when both ends are: the mlp's hidden units
    quickstart = get_recipe("quickstart")
    hidden = parse_space({"model_config": {"hidden": {"low": 32, "high": 64}}}, quickstart)
    assert hidden == {"model_config.hidden": Param("int", 32, 64)}
    for values, _ in asked(hidden, trials=3):
        assert isinstance(values["model_config.hidden"], int)
        builds(to_recipe(quickstart, values))


def test_log_scales_and_steps_reach_optuna_as_written():
    space = parse_space({
        "epochs": {"low": 1, "high": 8, "log": True},
        "shift": {"low": 0, "high": 4, "step": 2},
        "weight_decay": {"low": 0.0, "high": 0.01, "step": 0.0025},
        "seed": {"low": -2, "high": 0},   # a range may end at 0
        "tta_flip": False,
    }, DEFAULT)
    assert space["epochs"] == Param("int", 1, 8, log=True)
    assert space["shift"] == Param("int", 0, 4, step=2)
    assert space["weight_decay"] == Param("float", 0.0, 0.01, step=0.0025)
    assert describe(space)["weight_decay"] == "0 .. 0.01"
    runs = asked(space, trials=12)
    for values, dists in runs:
        assert dists == {"epochs": IntDistribution(1, 8, log=True),
                         "shift": IntDistribution(0, 4, step=2),
                         "weight_decay": FloatDistribution(0.0, 0.01, step=0.0025),
                         "seed": IntDistribution(-2, 0)}
        assert values["tta_flip"] is False and values["shift"] in (0, 2, 4)
        assert math.isclose(values["weight_decay"] / 0.0025, round(values["weight_decay"] / 0.0025),
                            abs_tol=1e-9)
    assert {v["seed"] for v, _ in runs} == {-2, -1, 0}


# ---- refused before the first trial, in one sentence ----------------------------------------------


REFUSED = [
    ({}, "The space is empty: give at least one field to sample, e.g. "
         "lr = {low = 0.01, high = 0.3, log = true}."),
    ({"lr": 0.1, "model_config": 3}, "model_config in a space file must be a table: [model_config]."),
    ({"dataset": {"choices": ["fashion-mnist"]}},
     "Field 'dataset' cannot be swept: the sweep sets it for every trial."),
    ({"holdout": 0}, "Field 'holdout' cannot be swept: the sweep sets it for every trial."),
    ({"lr": {"low": 0.01, "high": 0.3, "typo": 1}},
     "Space entry 'lr' must be {low = .., high = ..} or {choices = [..]}, got "
     "{'low': 0.01, 'high': 0.3, 'typo': 1}."),
    ({"lr": {"low": 0.01}},
     "Space entry 'lr' must be {low = .., high = ..} or {choices = [..]}, got {'low': 0.01}."),
    ({"lr": {"choices": []}}, "Space entry 'lr' has no choices to sample from."),
    ({"lr": {"choices": 0.1}}, "Space entry 'lr' has no choices to sample from."),
    ({"lr": {"low": "a", "high": 1}},
     "Space entry 'lr' needs numbers for low and high, got 'a' and 1."),
    ({"flip": {"low": False, "high": True}},
     "Space entry 'flip' needs numbers for low and high, got False and True."),
    ({"epochs": {"low": 2, "high": 5.5}},
     "Space entry 'epochs' is a whole number: low and high must be too."),
    ({"lr": {"low": 0.1, "high": 0.1}},
     "Space entry 'lr' cannot be sampled: low 0.1 is not below high 0.1."),
    ({"weight_decay": {"low": 0, "high": 0.01, "log": True}},
     "Space entry 'weight_decay' cannot be sampled on a log scale from 0: make low positive."),
    ({"lr": {"low": 0.01, "high": 0.3, "log": True, "step": 0.01}},
     "Space entry 'lr' cannot have both log and step."),
    # every range end and choice makes a recipe the recipe's checks accept
    ({"batch_size": {"choices": [32, 0]}},
     "Space entry 'batch_size' cannot be sampled: 0 is not a valid value (batch_size must be "
     "positive, got 0.)"),
    ({"label_smoothing": {"low": 0.0, "high": 1.0}},
     "Space entry 'label_smoothing' cannot be sampled: 1.0 is not a valid value "
     "(label_smoothing must be in [0, 1), got 1.0.)"),
    ({"shift": {"low": -1, "high": 2}},
     "Space entry 'shift' cannot be sampled: -1 is not a valid value (shift must not be "
     "negative, got -1.)"),
    ({"tta_flip": 3},
     "Space entry 'tta_flip' cannot be sampled: 3 is not a valid value (Recipe field tta_flip "
     "must be true or false, got 3.)"),
    # ... and a model fmnist can build: three widths for the cnn
    ({"model_config": {"widths": {"choices": [[16, 32, 96], [16, 32]]}}},
     "Space entry 'model_config.widths' cannot be sampled: [16, 32] is not a valid value (Bad "
     "model_config for 'cnn': not enough values to unpack (expected 3, got 2).)"),
    ({"model_config": {"depth": {"choices": [1, 2]}}},
     "Space entry 'model_config.depth' cannot be sampled: 1 is not a valid value (Unknown "
     "option(s) depth for model 'cnn'. Valid: num_classes, pool_last_stage, widths.)"),
    # a model setting is named as written, a dot in it included (TOML's "pool.last" = ...)
    ({"model_config": {"pool.last": True}},
     "Space entry 'model_config.pool.last' cannot be sampled: True is not a valid value (Unknown "
     "option(s) pool.last for model 'cnn'. Valid: num_classes, pool_last_stage, widths.)"),
]


@pytest.mark.parametrize(("table", "says"), REFUSED, ids=[s[:48] for _, s in REFUSED])
def test_a_space_that_cannot_be_sampled_fails_at_once_saying_what_to_change(table, says):
    with pytest.raises(ConfigError) as e:
        parse_space(table, DEFAULT)
    assert str(e.value) == says


def test_an_unknown_field_lists_exactly_the_fields_a_space_can_sample():
    with pytest.raises(ConfigError) as e:
        parse_space({"lrr": {"low": 0.1, "high": 1.0}}, DEFAULT)
    head, valid = str(e.value).split(" Valid: ")
    assert head == "Unknown field 'lrr' in the space."
    assert valid.endswith(", model_config.KEY.")
    names = valid.removesuffix(", model_config.KEY.").split(", ")
    assert names == [f for f in asdict(Recipe()) if f not in NOT_SWEPT]
    assert "lr" in names and "batch_size" in names and "dataset" not in names


def test_a_space_that_sets_the_trials_length_cannot_have_a_trial_budget_too():
    both = parse_space({"epochs": 2, "steps": {"low": 100, "high": 200}, "lr": 0.1}, DEFAULT)
    with pytest.raises(ConfigError, match=r"^The space sets epochs and steps, but --trial-budget"):
        check_args(both, 4, None, 60.0, "median", True)
    check_args(both, 4, None, None, "median", True)  # without a trial budget: the space's length
    check_args(parse_space({"lr": 0.1}, DEFAULT), 4, None, 60.0, "median", True)


# ---- a sampled point as a recipe ----------------------------------------------------------------


def test_a_sampled_point_is_the_recipe_with_its_values_and_the_models_other_settings():
    point = to_recipe(DEFAULT, {"lr": 0.05, "model_config.widths": [16, 64, 128]})
    assert point == replace(DEFAULT, lr=0.05,
                            model_config={"widths": [16, 64, 128], "pool_last_stage": True})
    # another model starts from that model's defaults, not from the recipe's cnn settings
    resnet = to_recipe(DEFAULT, {"model": "resnet", "model_config.blocks": [1, 1, 1]})
    assert (resnet.model, resnet.model_config, resnet.whiten) == ("resnet", {"blocks": [1, 1, 1]},
                                                                 False)
    builds(resnet)
    with pytest.raises(ConfigError, match=r"^Unknown option\(s\) depth for model 'cnn'\. Valid: "):
        to_recipe(DEFAULT, {"model_config.depth": 3})


def test_the_recipes_floor_on_steps_holds_unless_the_point_sets_a_length():
    assert DEFAULT.min_steps == 100
    assert to_recipe(DEFAULT, {"batch_size": 64}).min_steps == 100
    assert to_recipe(DEFAULT, {"epochs": 3}).min_steps == 0
    assert to_recipe(DEFAULT, {"steps": 500}).min_steps == 0
    assert to_recipe(DEFAULT, {"min_steps": 10, "batch_size": 64}).min_steps == 10


# ---- a new study's first trial ------------------------------------------------------------------


def test_a_default_sweeps_first_trial_trains_exactly_the_recipe():
    space = default_space(DEFAULT)
    widened, first, notes = with_recipe(space, DEFAULT)
    assert notes == [] and widened == space
    assert first == {"lr": 0.1, "weight_decay": 5e-4, "label_smoothing": 0.1, "batch_size": 128,
                     "shift": 0, "model_config.widths": "[16, 32, 96]"}
    study = random_study()
    study.enqueue_trial(first)  # what start_from_recipe does
    values = sample(study.ask(), widened)
    assert values["model_config.widths"] == [16, 32, 96]
    assert to_recipe(DEFAULT, values) == DEFAULT


def test_the_first_trial_takes_a_ranges_nearer_end_and_keeps_values_on_its_ends():
    recipe = replace(DEFAULT, lr=0.1, shift=0, label_smoothing=0.1)
    space = parse_space({"lr": {"low": 0.01, "high": 0.05, "log": True},  # lr above the range
                         "shift": {"low": 1, "high": 2},                     # shift below it
                         "label_smoothing": {"low": 0.1, "high": 0.2},       # on the low end
                         "weight_decay": {"low": 1e-5, "high": 5e-4},        # on the high end
                         "tta_flip": True}, recipe)
    widened, first, notes = with_recipe(space, recipe)
    assert widened == space
    assert first == {"lr": 0.05, "shift": 1, "label_smoothing": 0.1, "weight_decay": 5e-4}
    assert notes == [
        "lr: the recipe's 0.1 lies outside 0.01 .. 0.05 (log), so the first trial takes 0.05",
        "shift: the recipe's 0 lies outside 1 .. 2, so the first trial takes 1"]


def test_a_choice_gains_the_recipes_model_setting_or_the_models_own_default():
    space = parse_space({"model_config": {"widths": {"choices": [[16, 64, 128]]},
                                          "pool_last_stage": {"choices": [False]}}}, DEFAULT)
    widened, first, notes = with_recipe(space, DEFAULT)
    assert widened == {
        "model_config.widths": Param("choice", choices=([16, 32, 96], [16, 64, 128])),
        "model_config.pool_last_stage": Param("choice", choices=(True, False))}
    assert first == {"model_config.widths": "[16, 32, 96]", "model_config.pool_last_stage": True}
    assert notes == ["model_config.widths: the recipe's [16, 32, 96] added to the choices",
                     "model_config.pool_last_stage: the recipe's true added to the choices"]
    study = random_study()
    study.enqueue_trial(first)
    assert sample(study.ask(), widened) == {"model_config.widths": [16, 32, 96],
                                            "model_config.pool_last_stage": True}
    # where the recipe's model_config is silent, its value is the model's default
    plain = replace(DEFAULT, model_config={}, whiten=False)
    assert recipe_value(plain, "model_config.widths") == [32, 64, 128]
    assert recipe_value(DEFAULT, "model_config.widths") == [16, 32, 96]
    assert recipe_value(DEFAULT, "batch_size") == 128
    widths = parse_space({"model_config": {"widths": {"choices": [[16, 32, 96], [32, 64, 128]]}}},
                         plain)
    assert with_recipe(widths, plain) == (widths, {"model_config.widths": "[32, 64, 128]"}, [])


# ---- best.json's "changed" ----------------------------------------------------------------------


def test_a_change_is_a_value_that_differs_from_the_recipes():
    values = {"lr": 0.1 * 3 / 3,                 # 0.10000000000000002: the recipe's 0.1
              "weight_decay": 0.001, "batch_size": 128, "shift": 1, "tta_flip": True,
              "model_config.widths": [16, 32, 96], "model_config.pool_last_stage": False}
    assert differences(DEFAULT, values) == {"weight_decay": (5e-4, 0.001), "shift": (0, 1),
                                            "model_config.pool_last_stage": (True, False)}
    assert differences(DEFAULT, {"model_config.widths": [16, 64, 128], "lr": 0.05}) == {
        "model_config.widths": ([16, 32, 96], [16, 64, 128]), "lr": (0.1, 0.05)}
    assert differences(DEFAULT, {}) == {}
    # a setting the recipe leaves to its model's default is that default, not None
    silent = replace(DEFAULT, model_config={})
    assert differences(silent, {"model_config.widths": [8, 8, 16]}) == {
        "model_config.widths": (recipe_value(silent, "model_config.widths"), [8, 8, 16])}
    assert recipe_value(silent, "model_config.widths") is not None
    assert differences(silent, {"model_config.widths": recipe_value(silent, "model_config.widths")}) == {}
    # best.json writes it: the recipe's value, then the sampled one
    assert json.dumps(differences(DEFAULT, {"label_smoothing": 0.0})) == (
        '{"label_smoothing": [0.1, 0.0]}')
