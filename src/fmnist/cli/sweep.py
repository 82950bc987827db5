"""`fmnist sweep`: an Optuna study over recipe fields; each trial a fit on a validation split of
the training images, the best settings trained on all of them and tested once."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from fmnist.cli.common import add_command, hidden_alias

# The sweep chooses these itself (a trial's length comes from the recipe or --trial-budget).
NOT_USED = ("holdout", "log")


def add_parser(sub: Any) -> None:
    from fmnist.cli.train import add_recipe_arguments

    p = add_command(sub, "sweep", "search a recipe's settings with Optuna on a validation split; "
                                  "train the best on all training images")
    add_recipe_arguments(p, skip=NOT_USED)
    p.add_argument("--space", metavar="TOML", help="space file (default: a space for the model)")
    p.add_argument("--trials", type=int, help="finished trials the study should have")
    # the name `fmnist train` uses for the same thing; --budget was this one's first name
    p.add_argument("--time-budget", dest="budget", metavar="DURATION",
                   help="wall clock for this command (e.g. 20m)")
    hidden_alias(p, "--budget", dest="budget")
    p.add_argument("--trial-budget", metavar="DURATION",
                   help="every trial (and the final run) planned to this time, e.g. 60s")
    p.add_argument("--objective", default="accuracy",
                   help="accuracy (default), or accuracy,latency or accuracy,params for a Pareto "
                        "front of faster or smaller models (nothing is pruned then)")
    p.add_argument("--validation", type=float, default=0.1,
                   help="training images held out to score trials: fraction or count (default 0.1)")
    p.add_argument("--name", default="sweep", help="study name (default sweep)")
    p.add_argument("--out", metavar="DIR", help="the sweep folder is DIR/NAME (default sweeps/NAME)")
    p.add_argument("--storage", metavar="URL",
                   help="shared study, e.g. postgresql://user:pw@host/db (default: SQLite in DIR)")
    p.add_argument("--pruner", default="median", help="median or none (default median)")
    p.add_argument("--prune-after", type=int, default=4, metavar="N",
                   help="finished trials before pruning starts (default 4)")
    p.add_argument("--sampler-seed", type=int, help="seed the sampler (give workers different ones)")
    p.add_argument("--heartbeat", type=int, default=30, metavar="SECONDS",
                   help="a trial with no heartbeat for twice this is marked failed and retried")
    p.add_argument("--final", action=argparse.BooleanOptionalAction, default=True,
                   help="train the best settings on all training images at the end (default on)")
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the dataset files")
    p.add_argument("--verbose", action="store_true", help="show each trial's epochs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fmnist.cli.train import recipe_from_args
    from fmnist.errors import ConfigError
    from fmnist.sweep import parse_space, read_space, sweep
    from fmnist.sweep.storage import default_url, hide_password

    recipe = recipe_from_args(args)
    if args.heartbeat < 1:
        raise ConfigError(f"--heartbeat must be at least 1 second, got {args.heartbeat}.")
    space = parse_space(read_space(args.space), recipe) if args.space else None
    # a signal ends it with SweepStopped, which says where and names this command to go on
    result = sweep(recipe, space, out=args.out, name=args.name, storage=args.storage,
                   trials=args.trials, budget=args.budget, trial_budget=args.trial_budget,
                   validation=args.validation, objective=args.objective,
                   pruner=args.pruner, prune_after=args.prune_after, seed=args.sampler_seed,
                   final=args.final, data_dir=args.data_dir, heartbeat=args.heartbeat,
                   verbose=args.verbose, again=shlex.join(["fmnist", *sys.argv[1:]]))
    pictures = "history.png, importances.png" + (", pareto.png" if "," in args.objective else "")
    print(f"Sweep folder: {result.sweep_dir} (trials.md, best.json, {pictures}; trial runs: "
          f"fmnist runs --dir {result.sweep_dir / 'trials'}; watch the study: optuna-dashboard "
          f"{hide_password(args.storage) if args.storage else default_url(result.sweep_dir)})")
    return 0
