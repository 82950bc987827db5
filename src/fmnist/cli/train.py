"""`fmnist train`: options read like a recipe; every flag overrides one recipe field."""

from __future__ import annotations

import argparse
from dataclasses import Field, fields
from typing import TYPE_CHECKING, Any

from fmnist.cli.common import add_command
from fmnist.errors import ConfigError

if TYPE_CHECKING:
    from fmnist.train import FitResult

# Every recipe field is a flag of the same name, but these: the recipe's name (--recipe picks
# it) and the model's own settings (a table: --config).
NOT_FLAGS = ("name", "model_config")
HELP = {
    "batch_size": "per process",
    "lr": "peak learning rate",
    "muon_lr": "peak learning rate of the conv filters with --optimizer muon",
    "warmup": "fraction of steps spent warming up",
    "shift": "random translation in pixels (0: off)",
    "holdout": "train images held out: a second accuracy, and the calibration fitted on them "
               "(temperature, prediction sets, not-recognised threshold)",
    "holdout_max_share": "the most of a small training set held out unless --holdout is given",
    "lr_scaling": "none or linear (lr x world size under torchrun)",
    "threads": "torch intra-op threads (0: torch's default)",
    "tta_flip": "average with the mirrored image at evaluation and prediction",
    "whiten": "set the first conv from the training images' patch whitening and keep it fixed",
    "eval_every": "evaluate the test set after every N epochs and the last (0: the last only)",
    "normalize": "standardise inputs with the training set's mean and std (else just /255)",
    "eval_loss": "test loss as the mean over images, or of per-batch means (the Quickstart's)",
    "min_steps": "on small data, shrink the batch (to 32) and add epochs until the run takes "
                 "this many steps (0: off)",
    "steps": "total optimiser steps (0: epochs x steps per epoch; else the last epoch may stop "
             "part-way)",
}


def recipe_flags() -> list[Field]:
    from fmnist.recipes import Recipe

    return [f for f in fields(Recipe) if f.name not in NOT_FLAGS]


def add_parser(sub: Any) -> None:
    p = add_command(sub, "train", "train a model from a recipe; flags override recipe fields")
    add_recipe_arguments(p)
    p.add_argument("--time-budget", metavar="DURATION",
                   help="e.g. 90s or 5m: measure this machine, then fit the epochs (and if need "
                        "be the width) so the schedule ends when the budget does")
    p.add_argument("--checkpoint-every", metavar="DURATION",
                   help="e.g. 10m: also save the state part-way through an epoch this often, so "
                        "a kill -9 loses at most that much (SIGTERM/SIGINT/SIGHUP always save)")
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the dataset files")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<time>-<recipe>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="write TensorBoard events into the run folder (on when tensorboard is "
                        "installed; --no-tensorboard skips them)")
    p.set_defaults(func=run)


def add_recipe_arguments(p: argparse.ArgumentParser, skip: tuple[str, ...] = (),
                         recipe_option: bool = True) -> None:
    """--recipe, --config and a flag per recipe field but those in `skip` (`fmnist lr-find`,
    `sweep` and `recipes` take them too). Each flag's help ends with the default recipe's value:
    `fmnist recipes NAME` shows another recipe's."""
    from fmnist.cli.common import DATASET_NAMES, MODEL_NAMES
    from fmnist.recipes import CHOICES, RECIPES

    choices = {**CHOICES, "model": MODEL_NAMES, "dataset": DATASET_NAMES}
    default = RECIPES["default"]
    if recipe_option:
        p.add_argument("--recipe", default="default",
                       help=f"one of: {', '.join(RECIPES)} (default: default)")
    p.add_argument("--config", metavar="FILE", help="TOML or JSON file of recipe fields (flags win)")
    for f in recipe_flags():
        if f.name in skip:
            continue
        flag = f"--{f.name.replace('_', '-')}"
        text = HELP.get(f.name) or (f"one of: {', '.join(choices[f.name])}" if f.name in choices else None)
        if f.name == "dataset":
            text = f"{text}; or csv:PATH (Kaggle's CSV), folder:DIR (images per class)"
        value = getattr(default, f.name)
        shown = ("on" if value else "off") if isinstance(value, bool) else value
        text = f"{text + ' ' if text else ''}[default recipe: {shown}]".replace("%", "%%")
        if f.type in (bool, "bool"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type), f.type)
            p.add_argument(flag, type=kind, help=text)  # type: ignore[arg-type]


def recipe_from_args(args: argparse.Namespace) -> Any:
    """Recipe defaults, then --config, then flags."""
    from fmnist.recipes import apply_overrides, get_recipe, read_config_file

    recipe = get_recipe(args.recipe)
    if args.config:
        recipe = apply_overrides(recipe, read_config_file(args.config))
    flags = {f.name: getattr(args, f.name, None) for f in recipe_flags()}
    return apply_overrides(recipe, {k: v for k, v in flags.items() if v is not None})


def tensorboard_callbacks(wanted: bool) -> list[Any]:
    """The TensorBoard writer, when wanted and installed (it is an optional dependency)."""
    from fmnist import tensorboard

    return [tensorboard.TensorBoardLog()] if wanted and tensorboard.available() else []


# What the process's exit takes after the run: Python unloading torch, TensorBoard and
# matplotlib (1.5-1.8 s measured on a 2-core avx2 EPYC).
EXIT_SECONDS = 1.5


def left_of_budget(text: str | None) -> float | None:
    """--time-budget is what the user waits for the whole command: what is left of it now,
    the process's start-up (imports, parsing) and its exit taken off."""
    if text is None:
        return None
    import time

    from fmnist import budget

    left = budget.parse_duration(text) - (time.monotonic() - budget.process_started())
    if left - EXIT_SECONDS <= 0:
        raise ConfigError(f"--time-budget {text} was used up by start-up alone: give more time.")
    return left - EXIT_SECONDS


def run(args: argparse.Namespace) -> int:
    callbacks = tensorboard_callbacks(args.tensorboard)
    events = ", TensorBoard events" if callbacks else ""
    from fmnist.card import ModelCard

    callbacks.append(ModelCard())  # model-card.md, measured when a calibrated run ends

    result = train(args, callbacks)  # a signal: Interrupted, which fmnist.cli reports
    if result.run_dir is not None:
        print(f"Saved run to {result.run_dir} (model.safetensors, metrics.jsonl, curves.png"
              f"{events}{', model-card.md' if (result.run_dir / 'model-card.md').is_file() else ''})")
    return 0


def train(args: argparse.Namespace, callbacks: list[Any]) -> FitResult:
    """`fit` as the flags say: a new run, or --resume."""
    from fmnist.train import fit

    if args.resume:
        given = [f for f in (*(f.name for f in recipe_flags()), "config", "out", "time_budget")
                 if getattr(args, f) is not None]
        if given or args.recipe != "default":
            raise ConfigError(
                "--resume continues a run with its saved config.json; drop "
                f"{', '.join('--' + g.replace('_', '-') for g in given) or '--recipe'}."
            )
        return fit(resume=args.resume, data_dir=args.data_dir, callbacks=callbacks,
                     checkpoint_every=args.checkpoint_every)
    else:
        if args.time_budget is not None and (args.epochs is not None or args.steps is not None):
            raise ConfigError("--time-budget chooses the length of the run: drop --epochs and "
                              "--steps.")
        return fit(recipe_from_args(args), out=args.out, data_dir=args.data_dir,
                     time_budget=left_of_budget(args.time_budget), callbacks=callbacks,
                     checkpoint_every=args.checkpoint_every)

