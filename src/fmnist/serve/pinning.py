"""The model `fmnist serve` serves, pinned: the path it was given is resolved once, the files it
names are copied into the server's own folder, and the copy is what every worker loads, at its
first start and at every restart. A new `fmnist train` that moves `runs/latest`, a run folder
deleted or saved again: none of it changes what is served, until the operator asks for a reload
(SIGHUP), which pins the path again (fmnist.serve.prepare does the pinning).

The model id is a content hash of the pinned files (the weights and the metadata beside them,
which hold the calibration), so that a client can tell which model answered: /v1/model, every
prediction and the `fmnist_model_info` metric carry it.

With several workers, the supervisor keeps the model to serve in one small JSON file (`current`)
that a worker reads as it starts and on SIGHUP: the pinned model and, if the last reload
failed, why. This module needs no torch: the supervisor reads and writes that file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from fmnist.atomic import write_bytes
from fmnist.errors import CheckpointError


@dataclass(frozen=True)
class Pinned:
    """What a worker loads (`load_predictor(path, model, backend)`) and the model's id."""

    path: str
    model: str | None
    backend: str
    model_id: str
    source: str  # the file the user's path named when it was pinned


def content_id(*parts: bytes) -> str:
    """A model id: the first 16 hex digits of a sha256 over `parts`."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


def write_current(path: Path, pinned: Pinned, error: str | None = None) -> None:
    write_bytes(path, json.dumps({"pinned": asdict(pinned), "error": error}).encode(), "model pin")


def read_current(path: Path) -> tuple[Pinned, str | None]:
    """(the model to serve, why the last reload failed or None)."""
    try:
        doc = json.loads(path.read_text())
        return Pinned(**doc["pinned"]), doc.get("error")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"Cannot read the server's model pin {path}: {e}.") from None
