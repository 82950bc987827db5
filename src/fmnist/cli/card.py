"""`fmnist card RUN`: write the run's model card (model-card.md in the run folder) from what is
measured on its model: see fmnist.card."""

from __future__ import annotations

import argparse
from typing import Any

from fmnist.cli.common import add_command


def add_parser(sub: Any) -> None:
    p = add_command(sub, "card", "write a run's model card (Markdown) from what is measured")
    p.add_argument("run", metavar="RUN_DIR", help="a run folder written by fmnist train")
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the dataset files")
    p.add_argument("--print", action="store_true", help="also print the card")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fmnist.card import CARD, write_card
    from fmnist.checkpoint import resolve
    from fmnist.errors import ConfigError

    folder = Path(args.run)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a run folder: pass the folder fmnist train wrote "
                          "(e.g. runs/latest).")
    resolve(folder)  # one sentence when it holds no checkpoint
    path = write_card(folder, data_dir=args.data_dir)
    if args.print:
        print(path.read_text(encoding="utf-8"))
    print(f"Wrote {path}" if path.name == CARD else path)
    return 0
