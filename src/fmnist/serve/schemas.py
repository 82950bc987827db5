"""The OpenAPI description of the API. Responses are built as plain dicts; these models and
dicts only describe them (at /openapi.json and on the /docs page)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from fmnist.serve.requests import FIELDS


class Top(BaseModel):
    label: str
    probability: float


class PredictionOut(BaseModel):
    name: str
    index: int
    label: str
    probability: float
    probabilities: dict[str, float]  # calibrated (the checkpoint's temperature)
    top: list[Top]
    # the classes that hold the true one with the server's coverage (90 % unless set), most
    # probable first; may be empty; null for a model without calibration
    set: list[str] | None
    # false: the image does not look like any class (the label is still the most probable);
    # null for a model without calibration
    recognised: bool | None
    ood_score: float  # higher is stranger (entropy of the probabilities)
    input: str  # data:image/png;base64 of the 28x28 image the model saw


class PredictResponse(BaseModel):
    model: str | None
    model_id: str  # content hash of the model files that answered
    count: int
    predictions: list[PredictionOut]  # only the ?fields= asked for, when given
    pass_images: int  # images in the forward pass this request shared
    latency_ms: dict[str, float]


class ErrorOut(BaseModel):
    error: str


PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            },
        },
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "images": {"type": "array", "items": {"type": "string"},
                               "description": "base64 image files (data: URLs accepted)"},
                    "arrays": {"type": "array", "description": "28x28 arrays of numbers 0-255, light object on dark",
                               "items": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}},
                },
            },
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}  # fmt: skip

FIELDS_PARAM = {
    "name": "fields", "in": "query", "required": False, "schema": {"type": "string"},
    "description": f"comma-separated prediction fields to return (default all): {', '.join(FIELDS)}",
}  # fmt: skip

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Malformed JSON or form"},
    413: {"model": ErrorOut, "description": "Body or batch too large"},
    415: {"model": ErrorOut, "description": "Unsupported content type"},
    408: {"model": ErrorOut, "description": "The body did not arrive in time"},
    422: {"model": ErrorOut, "description": "Not an image, corrupt, too many pixels, bad array"},
    # 499 is never received: it is what the log and /metrics count for a client that hung up
    500: {"model": ErrorOut, "description": "The server's own fault (a file it cannot read or write) or a bug"},
    503: {"model": ErrorOut, "description": "Load shed (queue full, too many uploads, no answer in time), "
                                            "shutting down, or a failed worker: retry after Retry-After"},
}
