"""The `fmnist` command: a thin layer over the Python API.

Each sub-command lives in its own module with `add_parser(subparsers)`; the module sets
`func(args) -> int` on its parser. Building the parser imports no torch, so `fmnist --help` and
every sub-command's `--help` answer at once; a command imports what it needs when it runs.

User errors (`FmnistError`) become one line on stderr and the error's exit code (EXIT_CODES);
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from fmnist import __version__
from fmnist.errors import FmnistError

# What each exit status means, for scripts and process managers (docs/exit-codes.md shows it).
EXIT_CODES = {
    0: "success",
    1: "partly done: some inputs of `fmnist predict` could not be classified, or `fmnist "
       "lr-find` found no learning rate to suggest",
    2: "usage or user error: a bad flag or value, missing or corrupt data, a wrong checkpoint, "
       "an unreadable image, a file that could not be written (full disk, no permission)",
    3: "training diverged: the loss became NaN or stayed far above chance",
    130: "interrupted by Ctrl-C (SIGINT); a training run saved where it stopped",
    143: "stopped by SIGTERM; a training run saved where it stopped",
}

EXAMPLES = """\
examples:
  fmnist data info                        where the data is, counts, verified hashes
  fmnist train                            the default recipe (about 93 %) -> runs/latest
  fmnist train --recipe quickstart        the PyTorch Quickstart exactly
  fmnist train --time-budget 90s          the best run that fits 90 seconds here
  fmnist recipes default --epochs 8       a recipe's settings, and what flags would change
  fmnist evaluate runs/latest             accuracy, per-class metrics, pictures
  fmnist predict runs/latest shoe.jpg     classify image files
  fmnist serve runs/latest                web page and HTTP API on http://127.0.0.1:8000/
  fmnist runs                             every run: recipe, accuracy, speed, status
  fmnist demo                             train, save, reload, evaluate and predict in one go

`fmnist COMMAND --help` describes a command; a run that `fmnist runs` lists may be named by its
name wherever a run folder is expected. Exit status: 0 success, 1 partly done, 2 usage or user
error, 3 training diverged, 130/143 interrupted.
"""


def get_parser() -> argparse.ArgumentParser:
    from fmnist.cli import (
        card,
        data,
        demo,
        evaluate,
        export,
        lr_find,
        predict,
        recipes,
        runs,
        serve,
        sweep,
        train,
    )
    from fmnist.cli import tensorboard as tensorboard_cli

    parser = argparse.ArgumentParser(
        prog="fmnist",
        description="Fashion-MNIST: get the data, train, evaluate, predict, serve, compare runs.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fmnist {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (data, train, recipes, lr_find, sweep, evaluate, predict, export, card, serve,
                   demo, runs, tensorboard_cli):
        module.add_parser(sub)
    return parser


def name_runs(args: argparse.Namespace) -> None:
    """A run named as `fmnist runs` lists it works wherever a run folder is expected."""
    from fmnist.cli.common import run_path

    for where in ("checkpoint", "resume"):
        given = getattr(args, where, None)
        if isinstance(given, str):
            setattr(args, where, run_path(given))


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse stops filling a trailing list of files at the first option
        # (`fmnist predict CKPT --top-k 5 a.png`); files after options belong to it too.
        if hasattr(args, "inputs") and not any(e.startswith("-") for e in extra):
            args.inputs = [*args.inputs, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    name_runs(args)
    try:
        return int(args.func(args) or 0)
    except FmnistError as e:
        if getattr(args, "debug", False):
            raise
        # Under torchrun every rank parses the same flags: say a flag error once (rank 0).
        # Errors raised while training already name their rank and are always shown.
        if os.environ.get("RANK", "0") == "0" or e.rank is not None:
            print(f"fmnist: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `fmnist data info | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    except OSError as e:  # a folder where a file should go, a full disk, no permission...
        if getattr(args, "debug", False):
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"fmnist: error: {e.strerror or e}{where}.", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or a run or sweep stopped by a signal
        signum = getattr(e, "signum", None)
        if signum is None:
            print("fmnist: interrupted", file=sys.stderr)
        else:  # where it stopped (fmnist.train.Interrupted, SweepStopped), and how to go on
            folder = getattr(e, "resume_from", None)
            again = f" Continue with `fmnist train --resume {folder}`." if folder else ""
            print(f"\n{e}{again}", file=sys.stderr, flush=True)
        return 128 + (signum or 2)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
