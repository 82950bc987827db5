"""Pieces shared by every sub-command module."""

from __future__ import annotations

import argparse
from typing import Any

# `--debug` is accepted after any sub-command too (`fmnist train --debug`).
_debug = argparse.ArgumentParser(add_help=False)
_debug.add_argument(
    "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors"
)


def add_command(sub: Any, name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
    """Add a sub-command parser that knows `--debug`."""
    return sub.add_parser(name, help=help, description=help, parents=[_debug], **kwargs)
