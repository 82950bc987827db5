"""`fmnist recipes [NAME] [--config FILE] [flags]`: the recipes' settings side by side, or one
recipe's effective settings with what a config file and flags change: a dry run of
`fmnist train` (nothing is loaded or trained)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from fmnist.cli.common import add_command


def add_parser(sub: Any) -> None:
    from fmnist.cli.train import add_recipe_arguments

    p = add_command(sub, "recipes", "show every recipe's settings, or what `fmnist train` would "
                                    "use with a recipe, --config and flags (a dry run)")
    p.add_argument("name", nargs="?", metavar="NAME",
                   help="one recipe (default: every recipe side by side; `default` when "
                        "--config or flags are given)")
    add_recipe_arguments(p, recipe_option=False)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return json.dumps(value, separators=(", ", ": ")) if isinstance(value, dict | list) else str(value)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _flag(field: str) -> str:
    return "--config" if field == "model_config" else f"--{field.replace('_', '-')}"


def run(args: argparse.Namespace) -> int:
    from fmnist.cli.train import recipe_flags, recipe_from_args
    from fmnist.recipes import RECIPES, get_recipe

    given = [f.name for f in recipe_flags() if getattr(args, f.name, None) is not None]
    if args.name is None and not given and not args.config:
        every = {name: asdict(get_recipe(name)) for name in RECIPES}
        if args.json:
            print(json.dumps(every, indent=2))
            return 0
        fields = [k for k in next(iter(every.values())) if k != "name"]
        print(_table([("field", *every, "flag"),
                      *((k, *(_cell(r[k]) for r in every.values()), _flag(k)) for k in fields)]))
        print("\nfmnist recipes NAME [--config FILE] [flags]: one recipe, and what a config file or flags change.")
        return 0

    args.recipe = args.name or "default"
    base = asdict(get_recipe(args.recipe))  # ConfigError naming the recipes for a wrong name
    effective = asdict(recipe_from_args(args))  # the same checks `fmnist train` makes
    changes = {k: {"recipe": base[k], "effective": v} for k, v in effective.items() if v != base[k]}
    if args.json:
        print(json.dumps({"recipe": args.recipe, "settings": effective, "changes": changes},
                         indent=2))
        return 0
    rows: list[tuple[str, ...]] = [("field", "value", "", "flag")]
    for k, v in effective.items():
        if k != "name":
            was = f"(recipe: {_cell(base[k])})" if k in changes else ""
            rows.append((k, _cell(v), was, _flag(k)))
    sources = " and ".join([*([args.config] if args.config else []), *(["flags"] if given else [])])
    print(f"Recipe '{args.recipe}'" + (f" with {sources}" if sources else "") + ":")
    print(_table(rows))
    if sources:
        print(f"\n{len(changes)} setting(s) differ from the recipe: "
              f"{', '.join(changes) or 'none'}. Nothing was trained.")
    return 0
