"""Pinning a checkpoint for `fmnist serve` (see fmnist.serve.pinning): resolve the path once,
copy its files into the server's folder, load and warm the copy, and export it for onnxruntime
once. At start the server does this itself; on a reload under the supervisor, which holds no
torch, it runs in a process of its own (`python -m fmnist.serve.prepare`).

    prepare(path, model, backend, into)  ->  (Pinned, the loaded predictor)
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fmnist.checkpoint import resolve
from fmnist.errors import CheckpointError
from fmnist.rundir import META
from fmnist.serve.backends import OnnxPredictor, load_predictor
from fmnist.serve.pinning import Pinned, content_id


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"Cannot read {path}: {e.strerror or e}.") from None


def pin(path: str | Path, into: Path) -> tuple[Path, str, Path]:
    """Copy the checkpoint `path` names into the folder `into`: (the copy to load, its id, the
    file it came from). The weights and their metadata are read twice over to make sure they
    belong together (a save in between is read again)."""
    if str(path).endswith(".onnx"):
        source = Path(path).resolve()
        if not source.is_file():
            raise CheckpointError(f"ONNX file {path} does not exist.")
        sidecar = None
    else:
        source = resolve(path).resolve()  # through runs/latest and other links, once
        sidecar = source.with_suffix(".json") if source.suffix == ".safetensors" else source.parent / META
    for _ in range(3):
        meta = _read(sidecar) if sidecar is not None and sidecar.is_file() else None
        weights = _read(source)
        again = _read(sidecar) if sidecar is not None and sidecar.is_file() else None
        if meta == again:
            break
    else:
        raise CheckpointError(f"{source.parent} changed while it was being read: try again.")
    into.mkdir(parents=True, exist_ok=True)
    copy = into / source.name
    copy.write_bytes(weights)
    if meta is not None and sidecar is not None:
        (into / sidecar.name).write_bytes(meta)
    return copy, content_id(weights, meta or b""), source


def prepare(path: str | Path, model: str | None, backend: str, into: Path,
            coverage: float | None = None, device: str = "cpu") -> tuple[Pinned, Any]:  # fmt: skip
    """Pin `path` into `into`, load it on `backend` (the server's choice: auto picks), warm it,
    and, for onnxruntime from a checkpoint, write the ONNX file workers load: (the pinned
    model, the loaded predictor). Any problem is a CheckpointError or ConfigError, before any
    worker sees the new files."""
    copy, model_id, source = pin(path, into)
    predictor = load_predictor(copy, model, backend, coverage, device)
    predictor.warmup()
    load_path, load_model = str(copy), model
    if isinstance(predictor, OnnxPredictor) and copy.suffix != ".onnx":
        onnx = into / "model.onnx"  # exported once here, not once per worker
        onnx.write_bytes(predictor.onnx_model)
        load_path, load_model = str(onnx), None
    name = "onnxruntime" if isinstance(predictor, OnnxPredictor) else "torch"
    return Pinned(load_path, load_model, name, model_id, str(source)), predictor


def main(argv: list[str]) -> int:
    """`python -m fmnist.serve.prepare PATH MODEL BACKEND INTO`: `prepare` in a process of its
    own (the lean supervisor's reload: it holds no torch), the pinned model as JSON on stdout,
    or one line on stderr and status 2."""
    from fmnist.errors import FmnistError

    path, model, backend, into = argv
    try:
        import torch

        torch.set_num_threads(1)
        pinned, _ = prepare(path, model or None, backend, Path(into))
    except FmnistError as e:
        print(str(e), file=sys.stderr)
        return 2
    print(json.dumps(asdict(pinned)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
