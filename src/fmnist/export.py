"""Writing a model in other formats: the Quickstart's plain `model.pth` state dict, and ONNX.

- `pth`: exactly what the Quickstart's `torch.save(model.state_dict(), ...)` writes; for an `mlp`
  it loads into the Quickstart's `NeuralNetwork` with
  `load_state_dict(torch.load(path, weights_only=True))`. It holds weights only: feed it what the
  model was trained on (x / 255, then normalised with the checkpoint's mean and std).
- `onnx`: one self-contained file (no separate .data), dynamic batch size. Input `image`:
  float32 (N, 1, 28, 28) in [0, 1] (like torchvision's ToTensor); the checkpoint's normalisation
  is inside the graph. Outputs `logits` (N, C), as the model gives them, and `probabilities`
  (N, C): softmax(logits / T) with the checkpoint's fitted temperature T (1 when it has none),
  the calibrated probabilities `fmnist predict --no-tta` gives. A model evaluated with flip TTA
  (the default recipe's) predicts from the mean of the logits of the image and its mirror: run
  both in one batch, average their `logits`, divide by `temperature` (in the metadata) and take
  the softmax, as `fmnist predict` does. Class names, normalisation, temperature and model name
  are in the model's metadata_props, and the whole model.json as `fmnist_meta`. Checked against
  PyTorch with onnxruntime when it is installed.

Writes are atomic.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmnist.atomic import write_bytes
from fmnist.checkpoint import normalization
from fmnist.errors import ConfigError
from fmnist.models import clean_state_dict, unwrap
from fmnist.trust import Trust

FORMATS = ("pth", "onnx")


def export_pth(model: nn.Module, path: str | Path) -> Path:
    """The plain state dict (CPU tensors, no wrapper prefixes), written atomically."""
    path = Path(path)
    state = {k: v.detach().cpu().clone() for k, v in clean_state_dict(unwrap(model).state_dict()).items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    return write_bytes(path, buf.getvalue(), "exported model")


class _Normalized(nn.Module):
    """Puts the checkpoint's normalisation inside the exported graph (input x in [0, 1]), and
    its temperature after it: (logits, calibrated probabilities)."""

    def __init__(self, model: nn.Module, mean: float, std: float, temperature: float) -> None:
        super().__init__()
        self.model, self.mean, self.std, self.temperature = model, mean, std, temperature

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model((image - self.mean) / self.std)
        return logits, torch.softmax(logits / self.temperature, dim=1)


def export_onnx(model: nn.Module, meta: dict[str, Any], path: str | Path) -> bool:
    """Write a single-file ONNX model with a dynamic batch size; returns True when verified
    with onnxruntime (raises if the outputs disagree), False when onnxruntime is missing."""
    data, verified = onnx_bytes(model, meta)  # verified before writing: a wrong export never
    write_bytes(Path(path), data, "exported model")  # replaces a file
    return verified


def onnx_bytes(model: nn.Module, meta: dict[str, Any]) -> tuple[bytes, bool]:
    """The ONNX file's bytes, and whether onnxruntime checked them against PyTorch."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"ONNX export needs the '{e.name}' package: pip install onnx onnxscript onnxruntime."
        ) from None

    temperature = Trust.from_meta(meta).temperature
    wrapper = _Normalized(unwrap(model).cpu().eval(), *normalization(meta), temperature).eval()
    example = torch.rand(2, 1, 28, 28)
    exporter_log = logging.getLogger("torch.onnx")
    old_level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # "torchvision is not installed" notices are noise here
    try:
        # the exporter prints its progress; keep the command's output to one line
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, (example,), dynamo=True, input_names=["image"],
                output_names=["logits", "probabilities"],
                dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False,
            )
    finally:
        exporter_log.setLevel(old_level)
    assert program is not None  # dynamo=True always returns a program
    proto = program.model_proto
    extra = {
        "classes": json.dumps(list(meta["classes"])),
        "normalize": json.dumps({"mean": wrapper.mean, "std": wrapper.std}),
        "temperature": json.dumps(temperature),
        "model": str(meta.get("model", "")),
        "dataset": str(meta.get("dataset", "")),
        # everything model.json says (metrics, recipe, data hash), for `fmnist serve model.onnx`
        "fmnist_meta": json.dumps(
            {**meta, "parameters": sum(p.numel() for p in wrapper.parameters())}, default=str
        ),
        "input": "image: float32 [N,1,28,28], pixel/255 (light object on black)",
    }
    for key, value in extra.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()  # the whole model in one file: external_data=False above
    return data, _verify(wrapper, data)


def _verify(wrapper: nn.Module, onnx_model: bytes) -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    session = ort.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    got = session.run(["logits", "probabilities"], {"image": x.numpy()})
    with torch.no_grad():
        want = wrapper(x)
    for name, g, w in zip(("logits", "probabilities"), got, want, strict=True):
        if not torch.allclose(torch.from_numpy(g), w, atol=1e-4, rtol=1e-4):
            raise RuntimeError(  # a bug in the exporter, not something the user did
                f"ONNX export's {name} differ from PyTorch by "
                f"{float((torch.from_numpy(g) - w).abs().max()):.3g}"
            )
    return True
