"""`fmnist runs [--dir DIR]`: the runs under runs/ as a table (or JSON); `fmnist runs compare A B`:
two runs' recipe differences and results side by side, and their curves in one picture.

The folder is `--dir` in both (a lone positional DIR, its first form, is still accepted)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fmnist.cli.common import RUNS_DIR, add_command
from fmnist.errors import ConfigError


def add_parser(sub: Any) -> None:
    from fmnist.runs import SORT_KEYS

    p = add_command(sub, "runs", "list the runs under runs/ (or --dir); `runs compare A B` puts "
                                 "two side by side",
                    usage="fmnist runs [--dir DIR] [--sort KEY] [--reverse] [--json]\n"
                          "       fmnist runs compare A B [--dir DIR] [--plot PNG] [--json]")
    p.add_argument("words", nargs="*", metavar="compare A B",
                   help="`compare` and two runs (folders, or names under --dir)")
    p.add_argument("--dir", default=None, metavar="DIR",
                   help=f"the folder holding the run folders (default {RUNS_DIR})")
    p.add_argument("--sort", default="date", choices=tuple(SORT_KEYS),
                   help="column to sort by (default date, oldest first)")
    p.add_argument("--reverse", action="store_true", help="sort the other way")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", metavar="PNG",
                   help="compare: where the curves go (default compare-A-B.png here)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.words[:1] == ["compare"]:
        if len(args.words) != 3:
            raise ConfigError("`fmnist runs compare` takes two runs: fmnist runs compare A B.")
        return compare(args, *args.words[1:])
    if len(args.words) > 1 or (args.words and args.dir):
        raise ConfigError("`fmnist runs` takes one folder, --dir DIR (or `compare A B`), got "
                          f"{' '.join(args.words)}.")
    from fmnist.runs import format_table, list_runs

    root = args.dir or (args.words[0] if args.words else RUNS_DIR)
    runs = list_runs(root, sort=args.sort, reverse=args.reverse)
    if args.json:
        print(json.dumps([r.to_dict() for r in runs], indent=2))
    elif not runs:
        print(f"No runs in {root}.")
    else:
        print(format_table(runs))
    return 0


def compare(args: argparse.Namespace, first: str, second: str) -> int:
    from fmnist.plots import save_curves
    from fmnist.runs import find_run, format_comparison, recipe_differences

    root = args.dir or RUNS_DIR
    a, b = find_run(first, root), find_run(second, root)
    names = (a.name, b.name) if a.name != b.name else (a.path, b.path)
    plot = Path(args.plot or f"compare-{a.name}-{b.name}.png")
    save_curves(dict(zip(names, (a.rows, b.rows), strict=True)), plot)
    if args.json:
        print(json.dumps({"a": a.to_dict(), "b": b.to_dict(), "plot": str(plot),
                          "recipe_differences": [{"field": k, "a": x, "b": y}
                                                 for k, x, y in recipe_differences(a, b)]},
                         indent=2))
    else:
        print(format_comparison(a, b))
        print(f"\nCurves of both: {plot}")
    return 0
