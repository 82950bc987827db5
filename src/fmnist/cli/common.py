"""Pieces shared by every sub-command module."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fmnist.errors import ConfigError

# The names `--help` lists, spelled out here because fmnist.models and fmnist.datasets import
# torch (2-3 s) and every command builds every parser; tests/test_cli_help.py keeps them equal to
# fmnist.models.MODELS, fmnist.datasets.SPECS and DEFAULT_DATASET.
MODEL_NAMES = ("mlp", "cnn", "resnet")
DATASET_NAMES = ("fashion-mnist", "mnist", "kmnist")
DEFAULT_DATASET = "fashion-mnist"
# Where `fmnist train` puts its runs and `fmnist runs` looks for them.
RUNS_DIR = "runs"

# `--debug` is accepted after any sub-command too (`fmnist train --debug`).
_debug = argparse.ArgumentParser(add_help=False)
_debug.add_argument(
    "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors"
)


def add_command(sub: Any, name: str, help: str, hidden_aliases: tuple[str, ...] = (),
                **kwargs: Any) -> argparse.ArgumentParser:
    """Add a sub-command parser that knows `--debug`. `hidden_aliases` are old names that still
    work but are not listed (argparse lists every alias it is given, so they are mapped by hand)."""
    parser = sub.add_parser(name, help=help, description=help, parents=[_debug], **kwargs)
    for alias in hidden_aliases:
        sub._name_parser_map[alias] = parser
    return parser


def hidden_alias(p: argparse.ArgumentParser, old: str, dest: str, **kwargs: Any) -> None:
    """An option's old name: still accepted, not shown in --help."""
    p.add_argument(old, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


def run_path(given: str, root: str = RUNS_DIR) -> str:
    """A run as `fmnist runs` names it (`2026-01-02-0304-default`, `latest`) is the folder of
    that name under runs/; anything that exists as given is taken as it is."""
    if given and not Path(given).exists() and (Path(root) / given).exists():
        return str(Path(root) / given)
    return given


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


DEVICES = ("auto", "cpu", "cuda", "mps")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="where the model runs (default auto: a CUDA GPU, then Apple's MPS, then "
                        "the CPU)")  # fmt: skip


def load_checkpoint(path: str, model: str | None, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """`checkpoint.load_model` on `device` (a --device choice), with an unknown --model name
    or a missing device reported before any file is read."""
    from fmnist.checkpoint import load_model
    from fmnist.hardware import resolve_device
    from fmnist.models import MODELS

    if model is not None and model not in MODELS:
        raise ConfigError(f"Unknown model '{model}'. Valid models: {', '.join(MODELS)}.")
    return load_model(path, model=model, device=resolve_device(device))


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
