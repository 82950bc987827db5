"""Placeholder until this command lands."""

from typing import Any


def add_parser(sub: Any) -> None:
    pass
