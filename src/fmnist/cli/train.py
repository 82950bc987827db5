"""`fmnist train`: options read like a recipe; every flag overrides one recipe field."""

from __future__ import annotations

import argparse
from typing import Any

from fmnist.cli.common import add_command
from fmnist.errors import ConfigError

# flag -> recipe field, for flags whose value is taken as given
FIELD_FLAGS = {
    "model": "model", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
    "optimizer": "optimizer", "seed": "seed", "device": "device", "dataset": "dataset",
    "schedule": "schedule", "weight_decay": "weight_decay", "label_smoothing": "label_smoothing",
    "momentum": "momentum", "warmup": "warmup", "holdout": "holdout", "threads": "threads",
    "shift": "shift", "bf16": "bf16", "lr_scaling": "lr_scaling",
}
# flag -> recipe field, for on/off switches (--compile / --no-compile)
BOOL_FLAGS = ("compile", "tta_flip", "flip", "nesterov", "channels_last", "shuffle")


def add_parser(sub: Any) -> None:
    from fmnist.models import MODELS
    from fmnist.recipes import CHOICES, RECIPES

    p = add_command(sub, "train", "train a model from a recipe; flags override recipe fields")
    p.add_argument("--recipe", default="default", help=f"one of: {', '.join(RECIPES)} (default: default)")
    p.add_argument("--config", metavar="FILE", help="TOML or JSON file of recipe fields (flags win)")
    p.add_argument("--model", help=f"one of: {', '.join(MODELS)}")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--optimizer", help="sgd or adamw")
    p.add_argument("--schedule", help=f"one of: {', '.join(CHOICES['schedule'])}")
    p.add_argument("--warmup", type=float, help="fraction of steps spent warming up")
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--shift", type=int, help="random translation in pixels (0: off)")
    p.add_argument("--holdout", type=int, help="train images held out for a second accuracy")
    p.add_argument("--lr-scaling", help="none or linear (lr x world size under torchrun)")
    p.add_argument("--bf16", help="auto, on or off")
    p.add_argument("--threads", type=int, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda or mps")
    p.add_argument("--dataset", help="fashion-mnist, mnist or kmnist")
    for name in BOOL_FLAGS:
        p.add_argument(f"--{name.replace('_', '-')}", action=argparse.BooleanOptionalAction,
                       default=None)
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the dataset files")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<time>-<recipe>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    p.set_defaults(func=run)


def recipe_from_args(args: argparse.Namespace) -> Any:
    """Recipe defaults, then --config, then flags."""
    from fmnist.recipes import apply_overrides, get_recipe, read_config_file

    recipe = get_recipe(args.recipe)
    if args.config:
        recipe = apply_overrides(recipe, read_config_file(args.config))
    flags = {field: getattr(args, flag) for flag, field in FIELD_FLAGS.items()}
    flags.update({name: getattr(args, name) for name in BOOL_FLAGS})
    return apply_overrides(recipe, {k: v for k, v in flags.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    from fmnist.train import fit

    if args.resume:
        given = [f for f in (*FIELD_FLAGS, *BOOL_FLAGS, "config", "out")
                 if getattr(args, f) is not None]
        if given or args.recipe != "default":
            raise ConfigError(
                "--resume continues a run with its saved config.json; drop "
                f"{', '.join('--' + g.replace('_', '-') for g in given) or '--recipe'}."
            )
        result = fit(resume=args.resume, data_dir=args.data_dir)
    else:
        result = fit(recipe_from_args(args), out=args.out, data_dir=args.data_dir)
    if result.run_dir is not None:
        print(f"Saved run to {result.run_dir} (model.safetensors, metrics.jsonl, curves.png)")
    return 0

