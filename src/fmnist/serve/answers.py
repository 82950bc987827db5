"""The JSON of an answer: a prediction per image, in the one shape the CLI and the page share,
with only the fields the request asked for."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import numpy as np
from PIL import Image

from fmnist.serve.backends import Backend
from fmnist.serve.metrics import Metrics
from fmnist.serve.requests import Job


def png_data_url(image: np.ndarray) -> str:
    """uint8 (H, W) -> "data:image/png;base64,..." (what the page puts in an <img>)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def answer(
    backend: Backend, model_id: str, job: Job, images: np.ndarray, probs: np.ndarray,
    pass_images: int, decode_s: float, model_s: float, metrics: Metrics | None = None,
) -> dict[str, Any]:  # fmt: skip
    """`job`'s answer from the images the model saw and their probabilities (class order);
    each prediction is counted in `metrics`' drift counters."""
    predictions = []
    for item, image, p in zip(job.items, images, probs, strict=True):
        prediction = backend.prediction(p)
        if metrics is not None:
            metrics.observe(prediction.recognised, None if prediction.set is None else len(prediction.set),
                            prediction.probabilities[prediction.label])  # fmt: skip
        # the one prediction shape (fmnist.predict.Prediction.to_dict), plus what only we know
        full = {"name": item.name, **prediction.to_dict(3)}
        if "input" in job.fields:  # encoding the PNG is the costliest part of an answer
            full["input"] = png_data_url(image)
        predictions.append({f: full[f] for f in job.fields})
    return {
        "model": backend.meta.get("model"),
        "model_id": model_id,  # which files answered (fmnist.serve.pinning)
        "count": len(predictions),
        "predictions": predictions,
        # how many images shared this request's forward pass (its own included)
        "pass_images": pass_images,
        "latency_ms": {
            "decode": round(decode_s * 1e3, 3),
            "model": round(model_s * 1e3, 3),  # waiting for the pass, and the pass
            "total": round((time.perf_counter() - job.t0) * 1e3, 3),
        },
    }
