"""A prediction request, parsed: its images (`Item`s) from one of three shapes, and the fields
its answer should hold.

    multipart/form-data          every file part is an image
    application/json             {"images": [base64...]} and/or {"arrays": [28x28 numbers...]}
    image/* or octet-stream      the body is one image

Only the parsing happens here: encoded images are decoded later, off the event loop, by the
engine (fmnist.serve.engine).
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from fmnist.images import SIZE
from fmnist.serve.errors import ApiError

# The fields of a prediction a client can ask for with ?fields= (the page takes them all).
FIELDS = ("name", "label", "index", "probability", "top", "probabilities", "set", "recognised",
          "ood_score", "input")


@dataclass
class Item:
    """One image to classify: encoded bytes to decode, or a ready 28x28 uint8 array."""

    name: str
    data: bytes | np.ndarray


@dataclass
class Job:
    """One request on its way to its answer; `t0` is when the engine took it."""

    items: list[Item]
    fields: tuple[str, ...]
    t0: float = field(default_factory=time.perf_counter)
    images: np.ndarray | None = None  # (N, 28, 28) uint8 once decoded
    decode_s: float = 0.0
    # set when nobody waits for the answer any more (deadline, hang-up): decoding stops at the
    # next image
    cancelled: threading.Event = field(default_factory=threading.Event)


def parse_fields(text: str | None) -> tuple[str, ...]:
    """`?fields=label,top` -> ("label", "top"); None -> every field."""
    if text is None:
        return FIELDS
    fields = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in fields if f not in FIELDS]
    if unknown or not fields:
        problem = f"Unknown field {unknown[0]!r} in ?fields=" if unknown else "?fields= is empty"
        raise ApiError(422, f"{problem}; choose from {', '.join(FIELDS)}.")
    return fields


async def read_items(request: Request, max_batch: int) -> list[Item]:
    """The request's images, by its Content-Type; 415 for any other type."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return await items_from_multipart(request, max_batch)
    if ctype in ("application/json", "text/json") or ctype.endswith("+json"):
        # parsing up to max_upload_bytes of JSON and base64 must not block the loop either
        return await run_in_threadpool(items_from_json, await request.body(), max_batch)
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return [Item("body", await request.body())]
    raise ApiError(
        415,
        f"Unsupported Content-Type '{ctype or 'none'}': use multipart/form-data, "
        "application/json or an image/* body.",
    )


def check_count(n: int, max_batch: int) -> None:
    if n == 0:
        raise ApiError(
            422,
            "No images in the request: send multipart files (curl -F file=@shoe.png), "
            'JSON {"images": [base64...]} or {"arrays": [28x28...]}, or an image body.',
        )
    if n > max_batch:
        raise ApiError(
            413, f"Batch of {n} images is too large: at most {max_batch} per request."
        )


async def items_from_multipart(request: Request, max_batch: int) -> list[Item]:
    # max_files well above max_batch so that the count check below gives the 413 and its message
    form = await request.form(max_files=max_batch * 4 + 16, max_fields=1000)
    try:
        files = [(k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
        check_count(len(files), max_batch)
        return [Item(v.filename or k, await v.read()) for k, v in files]
    finally:
        await form.close()


def items_from_json(body: bytes, max_batch: int) -> list[Item]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise ApiError(400, f"Malformed JSON: {e}.") from None
    keys = ("images", "arrays", "image", "array")
    if not isinstance(doc, dict) or not any(k in doc for k in keys):
        raise ApiError(
            422,
            'Expected a JSON object with "images" (a list of base64 image files) or "arrays" '
            f"(a list of {SIZE}x{SIZE} arrays of numbers 0-255).",
        )
    images = doc.get("images", [])
    arrays = doc.get("arrays", [])
    if "image" in doc:
        images = [*images, doc["image"]] if isinstance(images, list) else images
    if "array" in doc:
        arrays = [*arrays, doc["array"]] if isinstance(arrays, list) else arrays
    if not isinstance(images, list):
        raise ApiError(422, '"images" must be a list of base64 strings.')
    if not isinstance(arrays, list):
        raise ApiError(422, f'"arrays" must be a list of {SIZE}x{SIZE} arrays.')
    if len(arrays) == SIZE and all(  # a single bare 28x28 array is accepted as one image
        isinstance(r, list) and all(isinstance(v, int | float) for v in r) for r in arrays
    ):
        arrays = [arrays]
    check_count(len(images) + len(arrays), max_batch)
    items = [Item(f"images[{i}]", decode_base64(s, f"images[{i}]")) for i, s in enumerate(images)]
    items += [Item(f"arrays[{i}]", to_array(a, f"arrays[{i}]")) for i, a in enumerate(arrays)]
    return items


def decode_base64(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise ApiError(422, f"{where} must be a base64 string, not {type(text).__name__}.")
    if text.startswith("data:"):  # a data URL, as canvas.toDataURL() gives
        _, _, text = text.partition(",")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"{where} is not valid base64.") from None


def to_array(value: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise ApiError(
            422, f"{where} must be {SIZE}x{SIZE} numbers 0-255 (a list of {SIZE} rows)."
        ) from None
    if arr.shape != (SIZE, SIZE):
        raise ApiError(
            422, f"{where} has shape {arr.shape}; expected {SIZE}x{SIZE} numbers 0-255."
        )
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255:
        raise ApiError(422, f"{where} must hold finite numbers from 0 to 255.")
    return np.rint(arr).astype(np.uint8)
