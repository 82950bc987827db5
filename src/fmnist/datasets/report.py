"""What the data layer tells the user: warnings said once per run, and `data info`'s summary.

A training run loads the data several times (train, test, fingerprint): the same warning each
time (a skipped copy, skipped images) would bury the one line that matters.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger("fmnist.datasets")

_said: set[str] = set()


def warn_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.warning("%s", message)


def summary(
    name: str,
    title: str,
    source: str,
    classes: tuple[str, ...] | list[str],
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    files: dict[str, dict[str, Any]],
    notes: list[str],
    fingerprint: str,
) -> dict[str, Any]:
    """`describe`'s dict, the same for every format."""
    info: dict[str, Any] = {
        "dataset": name,
        "title": title,
        "source": source,
        "classes": list(classes),
        "files": files,
        "notes": notes,
        "fingerprint": fingerprint,
        "splits": {},
    }
    for split, (images, labels) in splits.items():
        counts = np.bincount(labels, minlength=len(classes))
        info["splits"][split] = {
            "count": int(len(labels)),
            "shape": list(images.shape),
            "class_counts": {c: int(n) for c, n in zip(classes, counts, strict=True)},
            "label0": classes[int(labels[0])] if len(labels) else None,
        }
    return info
