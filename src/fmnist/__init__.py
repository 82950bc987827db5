"""fmnist: the PyTorch Quickstart made real.

    from fmnist import load_arrays, fit, get_recipe, load_model, Predictor

Names are imported lazily so `import fmnist` stays cheap (the CLI's startup time counts).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_arrays": "fmnist.datasets",
    "FashionMNIST": "fmnist.datasets",
    "ToTensor": "fmnist.datasets",
    "build_model": "fmnist.models",
    "get_recipe": "fmnist.recipes",
    "Recipe": "fmnist.recipes",
    "fit": "fmnist.train",
    "save_model": "fmnist.checkpoint",
    "load_model": "fmnist.checkpoint",
    "Predictor": "fmnist.predict",
}  # not `evaluate`: importing the fmnist.evaluate module would shadow such a name

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fmnist' has no attribute {name!r}")
