"""Real test images with their true labels, for the page's strip (GET /v1/samples)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from fmnist.errors import FmnistError
from fmnist.serve.answers import png_data_url

log = logging.getLogger("fmnist.serve")

MAX_SAMPLES = 48


class Samples:
    """The test split of the model's dataset (`meta["dataset"]`), loaded on first use from data
    already on disk."""

    def __init__(self, meta: dict[str, Any], classes: list[str]) -> None:
        self.meta = meta
        self.classes = classes
        self._loaded: tuple[np.ndarray, np.ndarray] | None = None
        self._lock = threading.Lock()

    def _load(self) -> tuple[tuple[np.ndarray, np.ndarray] | None, str | None]:
        """The test split and None, or None and why not.

        Only data already on disk: a GET must not start a download. A failure is not kept, so
        data installed while the server runs shows up on the next request. The lock only
        guards publishing: two requests loading at once do the same work twice, harmlessly,
        while holding it across the load would queue every request behind a slow disk.
        """
        with self._lock:
            if self._loaded is not None:
                return self._loaded, None
        try:
            from fmnist import datasets

            name = str(self.meta.get("dataset") or "fashion-mnist")
            loaded = datasets.load_arrays(name, "test", download=False)
        except (FmnistError, OSError, ImportError) as e:
            # the page then shows no strip; everything else keeps working
            error = f"No test images to show: {e}"
            log.info("%s", error)
            return None, error
        with self._lock:
            if self._loaded is None:
                self._loaded = loaded
            return self._loaded, None

    def pick(self, n: int, seed: int) -> dict[str, Any]:
        """`n` images chosen by `seed` (the same seed, the same images), or an empty list and
        why."""
        loaded, error = self._load()
        if loaded is None:
            return {"samples": [], "error": error}
        images, labels = loaded
        classes = self.classes
        idx = np.random.default_rng(seed).choice(len(images), size=min(n, len(images)), replace=False)
        return {
            "dataset": self.meta.get("dataset"),
            "samples": [
                {
                    "index": int(i),
                    "label_index": int(labels[i]),
                    "label": classes[int(labels[i])] if int(labels[i]) < len(classes) else str(labels[i]),
                    "image": png_data_url(images[i]),
                    "pixels": images[i].tolist(),
                }
                for i in idx
            ],
        }
