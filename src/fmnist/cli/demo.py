"""`fmnist demo` (`fmnist run` before; still accepted): the main job, end to end — train a
recipe on the real data, save it, load it back from disk, evaluate it, and predict test image 0
the way the Quickstart does."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from fmnist.cli.common import add_command

if TYPE_CHECKING:
    from fmnist.recipes import Recipe


def add_parser(sub: Any) -> None:
    # `run` was one letter from `runs`: it stays as a hidden alias (`make run` and old scripts)
    p = add_command(sub, "demo", "train, save, reload, evaluate and predict: the whole workflow",
                    hidden_aliases=("run",))
    p.add_argument("--recipe", default="default", help="recipe to train (default: default)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--data-dir", metavar="DIR")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<time>-<recipe>)")
    p.set_defaults(func=run)


def recipe_line(recipe: Recipe) -> str:
    """What `fmnist demo` is about to train, in one line."""
    from fmnist.recipes import traits

    words = traits(recipe)
    shown = f" ({', '.join(words)})" if words else ""
    # Muon steps the conv filters at muon_lr and everything else at lr (SGD's step)
    lrs = f"lr {recipe.lr}, filters' lr {recipe.muon_lr}" if recipe.optimizer == "muon" else f"lr {recipe.lr}"
    return (f"Training recipe '{recipe.name}': {recipe.model}{shown}, {recipe.epochs} epochs, "
            f"batch {recipe.batch_size}, {recipe.optimizer} {lrs}")


def run(args: argparse.Namespace) -> int:
    from fmnist.checkpoint import load_model
    from fmnist.datasets import load_arrays
    from fmnist.evaluate import evaluate, save_report_pictures
    from fmnist.predict import Predictor, seed_line
    from fmnist.recipes import apply_overrides, get_recipe
    from fmnist.train import fit

    recipe = get_recipe(args.recipe)
    if args.epochs is not None:
        recipe = apply_overrides(recipe, {"epochs": args.epochs})
    print(recipe_line(recipe))
    run_dir = fit(recipe, out=args.out, data_dir=args.data_dir).run_dir
    assert run_dir is not None  # fit saves by default

    # Evaluate what is on disk, not what is in memory: this is the round trip a user relies on.
    model, meta = load_model(run_dir)
    images, labels = load_arrays(meta["dataset"], "test", args.data_dir)
    report = evaluate(model, images, labels, meta)  # with flip TTA when the run trained with it
    pictures = save_report_pictures(report, images, run_dir)
    print()
    print(report.to_text())

    predictor = Predictor(model, meta)
    predicted = predictor.predict([images[0]])[0].label
    print(seed_line(predicted, meta["classes"][labels[0]]))
    print(f"\nRun folder: {run_dir}")
    for path in [run_dir / "curves.png", *pictures]:
        print(f"  picture: {path}")
    print(f"Next: fmnist evaluate {run_dir} | fmnist predict {run_dir} IMAGE... | "
          f"fmnist serve {run_dir}")
    return 0
