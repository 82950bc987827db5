"""Batched prediction: a model plus what it needs to classify images.

    open_image / preprocess (fmnist.images)  ->  uint8 (28, 28)
    Predictor.predict(...)                   ->  one forward pass per batch -> [Prediction]

Probabilities are calibrated with the checkpoint's temperature, and every prediction carries
its set of likely classes and whether the input was recognised (fmnist.trust).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from fmnist.checkpoint import normalization
from fmnist.errors import ImageError
from fmnist.images import BOX_SIZE, DEFAULT_BOX, SIZE, preprocess
from fmnist.inference import predict_logits, prepare_for_inference
from fmnist.trust import Trust


@dataclass
class Prediction:
    """One image's result: the top class, the (calibrated) probability of every class (class
    order), the set of likely classes at the predictor's coverage (most probable first), and
    whether the input looks like the training images at all (`recognised`, from `ood_score`:
    higher is stranger). `set` and `recognised` are None for a checkpoint fitted without
    held-out images (see fmnist.trust)."""

    index: int
    label: str
    probabilities: dict[str, float] = field(default_factory=dict)
    set: list[str] | None = None
    recognised: bool | None = None
    ood_score: float | None = None

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The k most probable classes, most probable first."""
        ranked = sorted(self.probabilities.items(), key=lambda kv: kv[1], reverse=True)
        return ranked[: max(0, k)]

    def to_dict(self, k: int = 3) -> dict[str, Any]:
        """The one JSON shape of a prediction (CLI, API and page): callers add only what is
        theirs to say (the file name, the image the model saw, the true label)."""
        return {
            "label": self.label,
            "index": self.index,
            "probability": self.probabilities[self.label],
            "top": [{"label": c, "probability": p} for c, p in self.top(k)],
            "probabilities": self.probabilities,
            "set": self.set,
            "recognised": self.recognised,
            "ood_score": self.ood_score,
        }


def seed_line(predicted: str, actual: str) -> str:
    """The Quickstart's own prediction line."""
    return f'Predicted: "{predicted}", Actual: "{actual}"'


class Predictor:
    """A model plus what it needs to classify images: classes, normalisation, box size, TTA.

    It predicts with an inference copy of `model` (see `prepare_for_inference`): the caller's
    model is not moved, converted or put in eval mode. `tta=None` predicts the way the run was
    evaluated (flip TTA when it trained with `tta_flip`), so the accuracy a checkpoint reports
    is the accuracy it serves; True/False force it. `coverage` is the prediction sets' (default
    90 %, see fmnist.trust).

    Thread-safe for concurrent `predict*` calls (the model stays in eval mode under no_grad).
    """

    def __init__(
        self, model: nn.Module, meta: dict[str, Any], device: str | torch.device = "cpu",
        *, tta: bool | None = None, coverage: float | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = prepare_for_inference(model, self.device)
        self._set_meta(meta, tta, coverage)

    def _set_meta(self, meta: dict[str, Any], tta: bool | None, coverage: float | None) -> None:
        self.meta = meta
        # without a fitted one (an old checkpoint): temperature 1, no sets (`trust.calibrated`
        # False; the CLI says so once, with fmnist.trust.UNCALIBRATED)
        self.trust = Trust.from_meta(meta, coverage)
        self.classes: list[str] = list(meta["classes"])
        self.mean, self.std = normalization(meta)
        self.tta = bool(meta.get("tta_flip")) if tta is None else tta
        self.box = BOX_SIZE.get(str(meta.get("dataset", "")), DEFAULT_BOX)
        self.batch_size = 512

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, model: str | None = None, device: str | torch.device = "cpu",
        *, tta: bool | None = None, coverage: float | None = None,
    ) -> Predictor:
        """Load a run folder, `model.safetensors` or Quickstart `model.pth` (see checkpoint.py)."""
        from fmnist.checkpoint import load_model

        net, meta = load_model(path, model=model, device=device)
        return cls(net, meta, device, tta=tta, coverage=coverage)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return preprocess(image, box=self.box)

    def predict_arrays(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 (N, 28, 28) -> float32 calibrated probabilities (N, C): softmax(logits / T)."""
        x = torch.as_tensor(images)
        if x.dtype != torch.uint8 or x.ndim != 3 or tuple(x.shape[1:]) != (SIZE, SIZE):
            raise ImageError(
                f"Expected uint8 images of shape (N, {SIZE}, {SIZE}), got {x.dtype} "
                f"{tuple(x.shape)}."
            )
        if len(x) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        logits = self.logits(x) / self.trust.temperature
        return torch.softmax(logits, dim=1).cpu().numpy().astype(np.float32, copy=False)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """float32 logits (N, C) of checked uint8 images (N, 28, 28): the one place a backend
        (see fmnist.serve.backends) differs."""
        return predict_logits(self.model, images, self.mean, self.std, batch_size=self.batch_size,
                              tta_flip=self.tta)

    def predict(self, images: Sequence[Image.Image | np.ndarray]) -> list[Prediction]:
        """Classify PIL images (preprocessed) and/or uint8 28x28 arrays (used as is), batched."""
        arrays = [self._as_array(img) for img in images]
        if not arrays:
            return []
        probs = self.predict_arrays(np.stack(arrays))
        return [self.prediction(p) for p in probs]

    def _as_array(self, image: Image.Image | np.ndarray) -> np.ndarray:
        if isinstance(image, Image.Image):
            return self.preprocess(image)
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.shape != (SIZE, SIZE):
            raise ImageError(
                f"Expected a PIL image or a uint8 {SIZE}x{SIZE} array, got {arr.dtype} {arr.shape}."
            )
        return arr

    def prediction(self, probs: np.ndarray) -> Prediction:
        """A `Prediction` from one row of `predict_arrays`' probabilities."""
        index = int(np.argmax(probs))
        trust = self.trust.assess(np.asarray(probs)[None])[0]
        return Prediction(
            index=index,
            label=self.classes[index],
            probabilities={c: float(p) for c, p in zip(self.classes, probs, strict=True)},
            set=None if trust["set"] is None else [self.classes[i] for i in trust["set"]],
            recognised=trust["recognised"],
            ood_score=trust["ood_score"],
        )

    def warmup(self) -> None:
        """One forward pass, so the first real request does not pay for lazy initialisation."""
        self.predict_arrays(np.zeros((1, SIZE, SIZE), dtype=np.uint8))
