"""Where the server's forward passes run: eager PyTorch, or ONNX Runtime.

Measured on 2 cores (AMD EPYC, class avx512; `python -m benchmarks.serve_load`'s in-process
ceiling, decode + predict with flip TTA): onnxruntime 2.4-2.8x eager PyTorch one image at a
time, 0.8x at 32 images, about equal at 64. The server's passes are small, so it answered 723 vs
291 requests/s at 8 clients in that run (docs/serving.md has the current load table). Served
from a run folder with `--backend onnxruntime`, the checkpoint is exported in memory at
start-up; an exported `model.onnx` (`fmnist export --format onnx`) serves as is.

`Backend` is what the server needs of either: a `Predictor`'s methods, plus which runtime it is
and how many parameters its model has. `OnnxPredictor` is one; any other `Predictor` (eager
PyTorch) is served as a `TorchBackend`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from torch import nn

from fmnist.errors import CheckpointError, ConfigError
from fmnist.inference import to_input
from fmnist.predict import Prediction, Predictor
from fmnist.serve.pinning import content_id

BACKENDS = ("auto", "torch", "onnxruntime")


@runtime_checkable
class Backend(Protocol):
    """What the server needs of a model, whatever runs its forward passes."""

    @property
    def name(self) -> str: ...  # "torch" or "onnxruntime", as /v1/model and `fmnist serve` say

    @property
    def parameter_count(self) -> int | None: ...

    @property
    def meta(self) -> dict[str, Any]: ...

    @property
    def classes(self) -> list[str]: ...

    @property
    def tta(self) -> bool: ...

    @property
    def device(self) -> torch.device: ...

    def preprocess(self, image: Image.Image) -> np.ndarray: ...

    def predict_arrays(self, images: np.ndarray) -> np.ndarray: ...

    def prediction(self, probs: np.ndarray) -> Prediction: ...

    def warmup(self) -> None: ...


class TorchBackend:
    """A `Predictor`'s own PyTorch model. It wraps the predictor instead of being one, so that
    any predictor, however it was made, is served as it is."""

    name = "torch"

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.predictor.model.parameters())

    @property
    def meta(self) -> dict[str, Any]:
        return self.predictor.meta

    @property
    def classes(self) -> list[str]:
        return self.predictor.classes

    @property
    def tta(self) -> bool:
        return self.predictor.tta

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.predictor.preprocess(image)

    def predict_arrays(self, images: np.ndarray) -> np.ndarray:
        return self.predictor.predict_arrays(images)

    def prediction(self, probs: np.ndarray) -> Prediction:
        return self.predictor.prediction(probs)

    def warmup(self) -> None:
        self.predictor.warmup()


def as_backend(predictor: Predictor | Backend) -> Backend:
    """`predictor` itself when it says what it runs on (`OnnxPredictor`), else a `TorchBackend`."""
    return predictor if isinstance(predictor, Backend) else TorchBackend(predictor)


class OnnxModule(nn.Module):
    """An ONNX Runtime session of an fmnist ONNX file as a module: float32 (N, 1, 28, 28) images
    x/255 -> logits (N, C). The normalisation is inside the graph (see fmnist.export)."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(["logits"], {"image": x.numpy()})[0])

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxModule:
        # Predictor makes an inference copy of its model; a session cannot be copied, and it
        # is never changed after it is made, so the copy shares it
        return self


class OnnxPredictor(Predictor):
    """A `Predictor` whose forward pass is an ONNX Runtime session (`OnnxModule`)."""

    name = "onnxruntime"

    def __init__(
        self, onnx_model: bytes, meta: dict[str, Any], *, tta: bool | None = None,
        session: Any = None, coverage: float | None = None,
    ) -> None:  # fmt: skip
        session = session or _session(onnx_model, str(meta.get("model")))
        super().__init__(OnnxModule(session), meta, "cpu", tta=tta, coverage=coverage)
        self.onnx_model = onnx_model

    @property
    def parameter_count(self) -> int | None:
        # the session does not say: fmnist.export writes the count in the metadata
        return self.meta.get("parameters")

    @classmethod
    def from_file(cls, path: str | Path, *, tta: bool | None = None,
                  coverage: float | None = None) -> OnnxPredictor:  # fmt: skip
        """Load `fmnist export --format onnx`'s file: classes and the rest from its metadata."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CheckpointError(f"Cannot read {path}: {e.strerror}.") from None
        session = _session(data, str(path))
        props = session.get_modelmeta().custom_metadata_map
        if "classes" not in props:
            raise CheckpointError(
                f"{path} has no class names in its metadata: export it with "
                "`fmnist export RUN --format onnx`."
            )
        if "fmnist_meta" in props:  # the checkpoint's whole model.json
            meta = json.loads(props["fmnist_meta"])
        else:  # an export from before it was written: what the separate keys say
            meta = {
                "model": props.get("model"), "dataset": props.get("dataset") or None,
                "classes": json.loads(props["classes"]),
                "normalize": json.loads(props.get("normalize", "null")),
            }  # fmt: skip
        return cls(data, meta, tta=tta, session=session, coverage=coverage)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        x = to_input(images, 0.0, 1.0)  # x/255 only: the graph normalises
        if not self.tta:
            return self.model(x)
        # the image and its mirror in one run: one call's overhead instead of two
        both = self.model(torch.cat([x, x.flip(-1)]))
        return (both[: len(x)] + both[len(x) :]) / 2


def content_id_of(backend: Backend) -> str:
    """The id of a model made in Python rather than pinned from files: a hash of its weights
    (or its ONNX graph) and its metadata."""
    meta = json.dumps(backend.meta, sort_keys=True, default=str).encode()
    onnx = getattr(backend, "onnx_model", None)
    if isinstance(onnx, bytes):
        return content_id(onnx, meta)
    model = backend.predictor.model if isinstance(backend, TorchBackend) else None
    if model is None:
        return content_id(meta)
    state = model.state_dict()
    return content_id(*(k.encode() + state[k].detach().cpu().numpy().tobytes() for k in sorted(state)), meta)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _session(onnx_model: bytes, name: str) -> Any:
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as many as torch would use
    try:
        return ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a bad file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{name} is not a loadable ONNX model: {reason}") from None


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(
            "The onnxruntime backend needs the 'onnxruntime' package: pip install -e '.[onnx]'."
        ) from None
    return onnxruntime


def load_predictor(path: str | Path, model: str | None = None, backend: str = "auto",
                   coverage: float | None = None, device: str = "cpu") -> Predictor:  # fmt: skip
    """The predictor `fmnist serve` serves: a run folder or checkpoint on `backend`, or an
    exported .onnx file (always ONNX Runtime). The ONNX model of a checkpoint is made in
    memory; `OnnxPredictor.onnx_model` holds its bytes (worker processes load those). `auto`
    is onnxruntime when it and the exporter's packages are installed, else torch. `coverage`
    is the prediction sets' (fmnist.trust). On a `device` other than the CPU (a torch device
    name) the model runs on PyTorch: the onnxruntime backend here is the CPU's."""
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown backend '{backend}': choose from {', '.join(BACKENDS)}.")
    if device != "cpu":
        if str(path).endswith(".onnx") or backend == "onnxruntime":
            raise ConfigError(f"onnxruntime runs the model on the CPU here: drop --device {device} "
                              "or serve the run folder with --backend torch.")  # fmt: skip
        return Predictor.from_checkpoint(path, model=model, coverage=coverage, device=device)
    if str(path).endswith(".onnx"):
        if model is not None:
            raise ConfigError("--model does not apply to an .onnx file (it names its model).")
        if backend == "torch":
            raise ConfigError("An .onnx file runs on onnxruntime: drop --backend torch.")
        return OnnxPredictor.from_file(path, coverage=coverage)
    if backend == "auto":
        backend = "onnxruntime" if all(map(_installed, ("onnxruntime", "onnx", "onnxscript"))) else "torch"
    if backend == "torch":
        return Predictor.from_checkpoint(path, model=model, coverage=coverage)
    from fmnist.checkpoint import load_model
    from fmnist.export import onnx_bytes

    _onnxruntime()  # say what is missing before the export's own imports do
    net, meta = load_model(path, model=model)
    data, _ = onnx_bytes(net, meta)
    return OnnxPredictor(data, meta, coverage=coverage)
