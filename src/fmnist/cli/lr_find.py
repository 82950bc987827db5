"""`fmnist lr-find`: the learning-rate range test on a fresh model of a recipe; prints the
suggested lr (usable as `fmnist train --lr`) and plots loss against lr."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fmnist.cli.common import add_command, hidden_alias

# Fields the range test does not use: it sets the lr itself and runs its own number of steps.
NOT_USED = ("lr", "epochs", "steps", "schedule", "warmup", "lr_scaling", "log")


def add_parser(sub: Any) -> None:
    from fmnist.cli.train import add_recipe_arguments
    from fmnist.lr_find import END, START, STEPS

    p = add_command(sub, "lr-find", "learning-rate range test: suggest an lr for a recipe")
    add_recipe_arguments(p, skip=NOT_USED)
    p.add_argument("--start", type=float, default=START, help=f"first lr (default {START:g})")
    p.add_argument("--end", type=float, default=END, help=f"last lr (default {END:g})")
    # --test-steps, not --steps: `fmnist train --steps` is a recipe's length, this the test's
    p.add_argument("--test-steps", dest="test_steps", type=int, default=STEPS, metavar="N",
                   help=f"steps from --start to --end (default {STEPS}); stops early on divergence")
    hidden_alias(p, "--steps", dest="test_steps", type=int)
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the dataset files")
    p.add_argument("--plot", metavar="PNG", help="default: lr-find-<recipe>.png here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fmnist.cli.train import recipe_from_args
    from fmnist.lr_find import lr_find
    from fmnist.plots import save_lr_finder

    recipe = recipe_from_args(args)
    result = lr_find(recipe, data_dir=args.data_dir, start=args.start, end=args.end,
                     steps=args.test_steps)
    plot = Path(args.plot or f"lr-find-{recipe.name}.png")
    save_lr_finder(result.lrs, result.losses, result.smoothed, result.suggestion, plot,
                   title=recipe.name)
    ended = (f"the loss diverged at lr {result.lrs[-1]:.3g}, step {len(result.lrs)}"
             if result.diverged else f"the loss did not diverge up to lr {result.lrs[-1]:.3g}")
    print(f"Range test on recipe {recipe.name}: {len(result.lrs)} steps, {ended}.")
    print(f"Plot: {plot}")
    if result.suggestion is None or result.minimum_lr is None:
        print("No suggestion: the loss never fell. Start lower (--start) or check the recipe.")
        return 1
    rule = ("a tenth of it, for a constant lr" if recipe.schedule == "constant" else
            f"as the peak of its {recipe.schedule} schedule")
    print(f"Lowest smoothed loss at lr {result.minimum_lr:.3g}; suggested {rule} (the recipe "
          f"has {recipe.lr:g}).")
    print(f"Suggested lr: {result.suggestion:.3g}")
    print(f"  fmnist train --recipe {args.recipe} --lr {result.suggestion:.3g}")
    return 0
