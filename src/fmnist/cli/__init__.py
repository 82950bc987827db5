"""The `fmnist` command: a thin layer over the Python API.

Each sub-command lives in its own module with `add_parser(subparsers)`; the module sets
`func(args) -> int` on its parser. User errors (`FmnistError`) become one line on stderr and
exit code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from fmnist.errors import FmnistError


def get_parser() -> argparse.ArgumentParser:
    from fmnist.cli import data, evaluate, export, lr_find, predict, run, runs, serve, sweep, train
    from fmnist.cli import tensorboard as tensorboard_cli

    parser = argparse.ArgumentParser(
        prog="fmnist",
        description="Fashion-MNIST: get the data, train, evaluate, predict, serve, compare runs.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (data, train, lr_find, sweep, evaluate, predict, export, serve, run, runs,
                   tensorboard_cli):
        module.add_parser(sub)
    return parser


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
    try:
        return int(args.func(args) or 0)
    except FmnistError as e:
        if getattr(args, "debug", False):
            raise
        # Under torchrun every rank parses the same flags: say a flag error once (rank 0).
        # Errors raised while training already name their rank and are always shown.
        if os.environ.get("RANK", "0") == "0" or e.rank is not None:
            print(f"fmnist: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `fmnist data info | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    except OSError as e:  # a folder where a file should go, a full disk, no permission...
        if getattr(args, "debug", False):
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"fmnist: error: {e.strerror or e}{where}.", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or a run stopped by a signal (it said where)
        signum = getattr(e, "signum", None)
        if signum is None:
            print("fmnist: interrupted", file=sys.stderr)
        return 128 + (signum or 2)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
