"""The search space: which recipe fields a sweep samples, and from what.

A space maps recipe fields (and `model_config.KEY` for the model's own settings) to one of

    {low = 0.01, high = 0.3, log = true}   a range (whole numbers for integer fields; `step`
                                            optional)
    {choices = [64, 128, 256]}              a choice (lists allowed: widths = [[16, 32, 96], ...])
    3                                       a fixed value, the same in every trial

A space file is TOML with those entries at the top level and the model's in a `[model_config]`
table. Every range end and every choice is checked against the recipe before the first trial,
so a space that cannot be sampled fails at once, in one sentence, not in trial 7.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fmnist.errors import ConfigError
from fmnist.models import build_model, make_config
from fmnist.recipes import Recipe, apply_overrides

# Fields a sweep sets itself (where the data comes from, what is shown, the validation split):
# they are the same in every trial and the final run.
NOT_SWEPT = ("name", "dataset", "holdout", "device", "log", "model_config")
# The length of a trial, which --trial-budget chooses when it is given.
LENGTH = ("epochs", "steps")


@dataclass(frozen=True)
class Param:
    kind: str  # float | int | choice | fixed
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None

    def describe(self) -> str:
        if self.kind == "fixed":
            return json.dumps(self.value)
        if self.kind == "choice":
            return "one of " + ", ".join(json.dumps(c) for c in self.choices)
        return f"{self.low:g} .. {self.high:g}" + (" (log)" if self.log else "")


Space = dict[str, Param]  # "lr" -> Param, "model_config.widths" -> Param


def default_space(recipe: Recipe) -> Space:
    """What is worth tuning first for `recipe`: its lr over a decade and a half around its own,
    regularisation, batch size, and for the conv nets the shift augmentation (and cnn widths)."""
    space: Space = {
        "lr": Param("float", recipe.lr / 10, recipe.lr * 3, log=True),
        "weight_decay": Param("float", 1e-5, 1e-2, log=True),
        "label_smoothing": Param("float", 0.0, 0.2),
        "batch_size": Param("choice", choices=(64, 128, 256)),
    }
    if recipe.model in ("cnn", "resnet"):
        space["shift"] = Param("int", 0, 2)
    if recipe.model == "cnn":
        space["model_config.widths"] = Param(
            # first convs of 16 channels: the cheap choice, and one the default's whitening fits
            "choice", choices=([16, 32, 96], [16, 64, 128], [16, 32, 128]))
    return space


def read_space(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"Cannot read space file {path}: {e.strerror}.") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"Space file {path} is not valid TOML: {e}.") from e


def parse_space(table: dict[str, Any], recipe: Recipe) -> Space:
    """A space from a space file's table, every entry checked against `recipe`."""
    entries = {k: v for k, v in table.items() if k != "model_config"}
    model_table = table.get("model_config", {})
    if not isinstance(model_table, dict):
        raise ConfigError("model_config in a space file must be a table: [model_config].")
    entries.update({f"model_config.{k}": v for k, v in model_table.items()})
    space = {key: _param(key, spec, recipe) for key, spec in entries.items()}
    if not space:
        raise ConfigError("The space is empty: give at least one field to sample, e.g. "
                          "lr = {low = 0.01, high = 0.3, log = true}.")
    check(space, recipe)
    return space


def _param(key: str, spec: Any, recipe: Recipe) -> Param:
    fields = asdict(Recipe())
    if key.startswith("model_config."):
        default: Any = None
    elif key not in fields:
        raise ConfigError(f"Unknown field '{key}' in the space. Valid: "
                          f"{', '.join(f for f in fields if f not in NOT_SWEPT)}, model_config.KEY.")
    elif key in NOT_SWEPT:
        raise ConfigError(f"Field '{key}' cannot be swept: the sweep sets it for every trial.")
    else:
        default = fields[key]
    if not isinstance(spec, dict):
        return Param("fixed", value=spec)
    unknown = sorted(set(spec) - {"low", "high", "log", "step", "choices"})
    if unknown or not ({"low", "high"} <= set(spec) or "choices" in spec):
        raise ConfigError(f"Space entry '{key}' must be {{low = .., high = ..}} or "
                          f"{{choices = [..]}}, got {spec}.")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"Space entry '{key}' has no choices to sample from.")
        return Param("choice", choices=tuple(choices))
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"Space entry '{key}' needs numbers for low and high, got {low!r} and {high!r}.")
    whole = isinstance(default, int) and not isinstance(default, bool) or (
        default is None and isinstance(low, int) and isinstance(high, int))
    if whole and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"Space entry '{key}' is a whole number: low and high must be too.")
    if not low < high:
        raise ConfigError(f"Space entry '{key}' cannot be sampled: low {low} is not below high {high}.")
    if log and low <= 0:
        raise ConfigError(f"Space entry '{key}' cannot be sampled on a log scale from {low}: "
                          "make low positive.")
    if log and step is not None:
        raise ConfigError(f"Space entry '{key}' cannot have both log and step.")
    kind = "int" if whole else "float"
    return Param(kind, int(low) if whole else float(low), int(high) if whole else float(high),
                 bool(log), step)


def check(space: Space, recipe: Recipe) -> None:
    """Every range end and every choice makes a valid recipe and model (ConfigError if not)."""
    for key, param in space.items():
        values = {"float": (param.low, param.high), "int": (param.low, param.high),
                  "choice": param.choices, "fixed": (param.value,)}[param.kind]
        for value in values:
            try:
                candidate = to_recipe(recipe, {key: value})
                if key.startswith("model_config."):
                    build_model(candidate.model, {**candidate.model_config, "num_classes": 10})
            except ConfigError as e:
                raise ConfigError(f"Space entry '{key}' cannot be sampled: {value!r} is not a "
                                  f"valid value ({e})") from e


def fixed_length(space: Space) -> list[str]:
    """The space's entries that set a trial's length (which --trial-budget would choose)."""
    return [k for k in LENGTH if k in space]


def sample(trial: Any, space: Space) -> dict[str, Any]:
    """The trial's values (an optuna.Trial): key -> value, lists decoded."""
    values: dict[str, Any] = {}
    for key, p in space.items():
        if p.kind == "fixed":
            values[key] = p.value
        elif p.kind == "float":
            values[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        elif p.kind == "int":
            values[key] = trial.suggest_int(key, int(p.low or 0), int(p.high or 0), log=p.log,
                                            step=int(p.step or 1))
        else:  # Optuna's choices are plain values: a list travels as its JSON
            encoded = [json.dumps(c) if isinstance(c, list | dict) else c for c in p.choices]
            picked = trial.suggest_categorical(key, encoded)
            values[key] = p.choices[encoded.index(picked)]
    return values


def to_recipe(recipe: Recipe, values: dict[str, Any]) -> Recipe:
    """`recipe` with the sampled `values` applied (model_config.KEY into its model_config)."""
    fields = {k: v for k, v in values.items() if not k.startswith("model_config.")}
    model = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("model_config.")}
    if model:
        name = fields.get("model", recipe.model)
        base = recipe.model_config if name == recipe.model else {}
        make_config(name, {**base, **model})  # unknown keys: ConfigError naming the valid ones
        fields["model_config"] = {**base, **model}
    if not {"epochs", "steps", "min_steps"} & set(fields):
        # A sampled batch size is a point of the search, not a user's wish for exactly that
        # batch (for which apply_overrides turns min_steps off): the recipe's floor on steps
        # still holds, in trials and in the final run alike.
        fields["min_steps"] = recipe.min_steps
    return apply_overrides(recipe, fields)


def differences(recipe: Recipe, values: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """key -> (the recipe's value, the sampled one), for the values that differ."""
    out = {}
    for key, value in values.items():
        old = recipe_value(recipe, key)  # a model's default where the recipe's config is silent
        same = (isinstance(old, float) and isinstance(value, float)
                and math.isclose(old, value, rel_tol=1e-9)) or old == value
        if not same:
            out[key] = (old, value)
    return out


def describe(space: Space) -> dict[str, str]:
    return {key: p.describe() for key, p in space.items()}


def recipe_value(recipe: Recipe, key: str) -> Any:
    """The recipe's own value for a space key (a model's default where its config is silent)."""
    if key.startswith("model_config."):
        value = getattr(make_config(recipe.model, recipe.model_config), key.split(".", 1)[1])
        return list(value) if isinstance(value, tuple) else value
    return getattr(recipe, key)


def with_recipe(space: Space, recipe: Recipe) -> tuple[Space, dict[str, Any], list[str]]:
    """The space made to hold the recipe's own settings, which the first trial of a new study
    tries: (that space, the first trial's values, a sentence for each entry that had to change).
    A choice that lacks the recipe's value gains it; a range that lacks it keeps its ends, and
    the first trial takes the nearer end (a range is the user's idea of what is sensible, and
    a log range cannot hold 0)."""
    widened: Space = {}
    first: dict[str, Any] = {}
    notes = []
    for key, p in space.items():
        value = recipe_value(recipe, key)
        if p.kind == "choice" and value not in p.choices:
            p = Param("choice", choices=(value, *p.choices))
            notes.append(f"{key}: the recipe's {json.dumps(value)} added to the choices")
        elif p.kind in ("float", "int") and not (p.low <= value <= p.high):  # type: ignore[operator]
            nearer = p.low if value < p.low else p.high  # type: ignore[operator]
            notes.append(f"{key}: the recipe's {value:g} lies outside {p.describe()}, so the "
                         f"first trial takes {nearer:g}")
            value = nearer
        widened[key] = p
        if p.kind != "fixed":  # Optuna's values: a list choice travels as its JSON
            first[key] = json.dumps(value) if isinstance(value, list | dict) else value
    return widened, first, notes
