"""Saving and loading models, and the resume state of a run.

A saved model is two files: `model.safetensors` (weights, no pickle) and `model.json` (model name
and config, class names, normalisation, dataset and its hash, metrics, epoch, versions). Loading
needs only these two files. The Quickstart's plain `model.pth` state dict loads too (as `mlp`,
with `weights_only=True`). All writes are atomic.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from fmnist.atomic import write_bytes
from fmnist.datasets import SPECS
from fmnist.errors import CheckpointError, ConfigError
from fmnist.models import build_model, clean_state_dict, model_config, model_name, unwrap
from fmnist.rundir import META, RESUME, WEIGHTS

# What a Quickstart `model.pth` was trained on: Fashion-MNIST through ToTensor() alone.
FASHION_CLASSES = list(SPECS["fashion-mnist"].classes)


def versions() -> dict[str, str]:
    from fmnist import __version__

    return {"fmnist": __version__, "torch": torch.__version__}


def normalization(meta: dict[str, Any]) -> tuple[float, float]:
    """(mean, std) the model's inputs were standardised with; (0, 1) means just /255."""
    norm = meta.get("normalize") or {}
    return float(norm.get("mean", 0.0)), float(norm.get("std", 1.0))


def model_meta(model: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's metadata: `meta` plus the model's name and config and library versions."""
    model = unwrap(model)
    return {**meta, "model": model_name(model), "model_config": model_config(model),
            "versions": versions()}


def model_files(model: nn.Module, meta: dict[str, Any]) -> dict[str, bytes]:
    """`model.safetensors` and `model.json`, as bytes. `meta` should hold at least `classes`
    and `normalize` ({"mean", "std"}); the rest of `model_meta` is added here. The weights file
    carries the same metadata inside, so it alone is a whole checkpoint."""
    model = unwrap(model)
    full = model_meta(model, meta)
    state = {k: v.detach().cpu().contiguous() for k, v in clean_state_dict(model.state_dict()).items()}
    return {WEIGHTS: safetensors_bytes(state, {"fmnist": json.dumps(full)}),
            META: (json.dumps(full, indent=2) + "\n").encode()}


def save_model(directory: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write `model.safetensors` + `model.json` into `directory`; returns the weights path."""
    files = model_files(model, meta)
    weights = write_bytes(Path(directory) / WEIGHTS, files[WEIGHTS], "checkpoint")
    write_bytes(Path(directory) / META, files[META], "checkpoint metadata")
    return weights


def resolve(path: str | Path) -> Path:
    """The weights file a user means: a run folder, a `.safetensors`/`.json` file, or a `.pth`."""
    p = Path(path)
    if p.is_dir():
        if (p / WEIGHTS).is_file():
            return p / WEIGHTS
        raise CheckpointError(
            f"No checkpoint in folder {p}: expected {WEIGHTS} there "
            "(train one with `fmnist train`, or pass a .safetensors or Quickstart .pth file)."
        )
    if p.suffix == ".json" and p.with_suffix(".safetensors").is_file():
        return p.with_suffix(".safetensors")
    if p.is_file():
        return p
    raise CheckpointError(
        f"Checkpoint {p} does not exist: pass a run folder (e.g. runs/latest), "
        "a model.safetensors file or a Quickstart model.pth."
    )


def load_model(
    path: str | Path, model: str | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved at `path` and return it (in eval mode) with its metadata.

    `model` names the architecture the caller expects: it must match a safetensors checkpoint,
    and it picks the architecture for a `.pth` state dict. A `.pth` exported from a run sits
    beside that run's model.json, whose classes and normalisation it then uses; a lone `.pth`
    is taken as the Quickstart's (`mlp` by default, Fashion-MNIST classes, inputs just /255).
    """
    weights = resolve(path)
    if weights.suffix in (".pth", ".pt"):
        state = _load_pth(weights)
        sidecar = weights.parent / META
        meta = _read_meta(sidecar) if sidecar.is_file() else {}
        if not meta or (model is not None and model != meta.get("model")):
            meta = {
                "model": model or "mlp",
                "model_config": {},
                "classes": FASHION_CLASSES,
                "normalize": {"mean": 0.0, "std": 1.0},
                "dataset": "fashion-mnist",
            }
        meta = {**meta, "source": "pth"}
    else:
        state, meta = _load_safetensors(weights)
        if model is not None and model != meta["model"]:
            raise CheckpointError(
                f"Checkpoint {weights} holds a '{meta['model']}' model, not '{model}': "
                f"drop --model or pass --model {meta['model']}."
            )
    net = _build_checked(weights, meta)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise CheckpointError(
            f"Checkpoint {weights} does not fit model '{meta['model']}' ({first[:200]}): "
            "pass the --model it was trained with."
        ) from e
    return net.to(device).eval(), meta


def _build_checked(weights: Path, meta: dict[str, Any]) -> nn.Module:
    """The model `meta` describes, after checking the fields every caller relies on."""
    config, classes = meta.get("model_config", {}), meta.get("classes")
    if not isinstance(config, dict) or not isinstance(classes, list) or not all(
        isinstance(c, str) for c in classes
    ):
        raise CheckpointError(
            f"Metadata of {weights} is damaged: model_config must be a table and classes a list "
            "of names."
        )
    try:
        net = build_model(str(meta["model"]), {**config, "num_classes": len(classes)})
    except ConfigError as e:
        raise CheckpointError(f"Metadata of {weights} does not describe a model we can build: {e}") from e
    return net


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"Cannot read checkpoint metadata {path}: it is not valid JSON.") from e
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"Metadata {path} does not name a model: it was not written by fmnist.")
    return meta


def _load_pth(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors, refused globals: all mean "not a state dict"
        raise CheckpointError(
            f"Cannot read {path} as a PyTorch state dict ({type(e).__name__}): "
            "expected the Quickstart's torch.save(model.state_dict(), ...) file."
        ) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors.")
    return clean_state_dict(state)


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"Cannot read {path} as a safetensors file: {e}.") from e
    meta_path = path.with_suffix(".json")
    if meta_path.is_file():
        return state, _read_meta(meta_path)
    # A lone weights file still carries the metadata in its header.
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        header = (f.metadata() or {}).get("fmnist")
    try:
        meta = json.loads(header) if header else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(
            f"Checkpoint {path} has no fmnist metadata ({meta_path.name} missing, none in the "
            "file): it was not written by fmnist."
        )
    return state, meta


# ---- resume state: everything needed to continue a run exactly --------------------------------


def rng_state() -> dict[str, Any]:
    np_state: Any = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class ResumeState:
    """Everything needed to continue a run exactly, saved as `resume.pt` with every epoch (and
    part-way through one when the run is stopped by a signal or saves on a timer).

    `rng_ranks` holds every rank's RNG states under torchrun (`rng` is this process's); `mean`,
    `std` and `fingerprint` say which data the run was trained on, so a resume on other data is
    refused instead of silently mixing the two.
    """

    epoch: int
    rows: list[dict[str, Any]]
    recipe: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    rng_ranks: list[dict[str, Any]] | None = None
    world_size: int | None = None  # None: written before the process count was saved
    mean: float | None = None  # None: written before these were saved
    std: float | None = None
    fingerprint: str | None = None
    # Saved part-way through epoch `epoch + 1` (a signal, --checkpoint-every): the steps done
    # in it, and its running totals (loss_sum, images, seconds) so its row comes out the same.
    step: int = 0
    partial: dict[str, float] | None = None

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save({f.name: getattr(self, f.name) for f in fields(self)}, buf)
        return buf.getvalue()

    @classmethod
    def load(cls, directory: str | Path) -> ResumeState:
        path = Path(directory) / RESUME
        if not path.is_file():
            raise CheckpointError(
                f"Cannot resume from {directory}: it has no {RESUME} (is it an fmnist run folder?)."
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle, zip and refused-global errors all mean "not ours"
            raise CheckpointError(f"Cannot read resume state {path} ({type(e).__name__}).") from e
        known = {f.name for f in fields(cls)}
        needed = {f.name for f in fields(cls) if f.default is MISSING}
        missing = needed - set(state) if isinstance(state, dict) else needed
        if missing:
            raise CheckpointError(
                f"{path} is not an fmnist resume state (no {', '.join(sorted(missing))})."
            )
        return cls(**{k: v for k, v in state.items() if k in known})
