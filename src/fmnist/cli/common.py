"""Pieces shared by every sub-command module."""

from __future__ import annotations

import argparse
from typing import Any

from fmnist.errors import ConfigError

# `--debug` is accepted after any sub-command too (`fmnist train --debug`).
_debug = argparse.ArgumentParser(add_help=False)
_debug.add_argument(
    "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors"
)


def add_command(sub: Any, name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
    """Add a sub-command parser that knows `--debug`."""
    return sub.add_parser(name, help=help, description=help, parents=[_debug], **kwargs)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The checkpoint arguments shared by predict, evaluate and export."""
    p.add_argument(
        "checkpoint", metavar="RUN_DIR|CHECKPOINT",
        help="run folder, model.safetensors, or a Quickstart model.pth",
    )
    p.add_argument(
        "--model", metavar="NAME", default=None,
        help="architecture: must match an fmnist checkpoint; picks it for a .pth (default mlp)",
    )


def load_checkpoint(path: str, model: str | None) -> tuple[Any, dict[str, Any]]:
    """`checkpoint.load_model`, with an unknown --model name reported before any file is read."""
    from fmnist.checkpoint import load_model
    from fmnist.models import MODELS

    if model is not None and model not in MODELS:
        raise ConfigError(f"Unknown model '{model}'. Valid models: {', '.join(MODELS)}.")
    return load_model(path, model=model)


def dataset_for(meta: dict[str, Any], requested: str | None) -> str:
    """The dataset to draw images from: --dataset, else the one the checkpoint was trained on,
    checked to have the model's classes (a folder's classes are sorted by name: the same count
    in another order would score a good model as a bad one)."""
    from fmnist.datasets import class_names

    name = requested or meta.get("dataset") or "fashion-mnist"
    classes = class_names(name)  # ConfigError listing the valid names
    if len(classes) != len(meta["classes"]):
        raise ConfigError(
            f"Dataset '{name}' has {len(classes)} classes but the model predicts "
            f"{len(meta['classes'])}: pass the --dataset it was trained on."
        )
    if list(classes) != list(meta["classes"]):
        differ = next(i for i, (a, b) in enumerate(zip(classes, meta["classes"], strict=True))
                      if a != b)
        raise ConfigError(
            f"Dataset '{name}' has other classes than the model (label {differ} is "
            f"'{classes[differ]}' there, '{meta['classes'][differ]}' for the model): pass the "
            "--dataset it was trained on."
        )
    return name
