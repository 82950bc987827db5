"""`fmnist export RUN|CKPT --format pth|onnx [--out PATH]` (the formats: see fmnist.export).

Default output: beside the checkpoint (`model.pth` / `model.onnx`). The input checkpoint is
never overwritten.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fmnist.cli.common import add_command, add_model_arguments, load_checkpoint
from fmnist.errors import ConfigError

# fmnist.export.FORMATS (a test keeps them equal), not imported: fmnist.export imports torch, and
# every command builds this parser, `fmnist serve`'s supervising parent included
FORMATS = ("pth", "onnx")


def add_parser(sub: Any) -> None:
    p = add_command(sub, "export", "write a model as a Quickstart model.pth or an ONNX file")
    add_model_arguments(p)
    p.add_argument("--format", required=True, metavar="|".join(FORMATS),
                   help="pth (plain state dict) or onnx")
    p.add_argument("--out", metavar="PATH", help="output file (default: beside the checkpoint)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fmnist.checkpoint import normalization, resolve
    from fmnist.export import export_onnx, export_pth

    if args.format not in FORMATS:
        raise ConfigError(f"Unknown format '{args.format}'. Valid formats: {', '.join(FORMATS)}.")
    weights = resolve(args.checkpoint)
    out = Path(args.out) if args.out else weights.with_suffix(f".{args.format}")
    if out.is_dir():
        out = out / f"model.{args.format}"
    if out.resolve() == weights.resolve() or out.resolve() == weights.with_suffix(".json").resolve():
        raise ConfigError(f"Exporting to {out} would overwrite the input checkpoint: pass --out.")
    model, meta = load_checkpoint(args.checkpoint, args.model)
    if args.format == "pth":
        export_pth(model, out)
        print(f"Wrote {out} (plain state dict; load with "
              "model.load_state_dict(torch.load(path, weights_only=True)))")
        mean, std = normalization(meta)
        if (mean, std) != (0.0, 1.0):
            # A state dict cannot carry this; fmnist finds it in model.json beside the file.
            print(f"Note: this model expects inputs x/255 standardised as (x - {mean:.4f}) / "
                  f"{std:.4f}; keep {out.parent / 'model.json'} beside it for fmnist to know.")
    else:
        checked = export_onnx(model, meta, out)
        note = "checked against PyTorch with onnxruntime" if checked else "onnxruntime not installed"
        from fmnist.trust import Trust

        t = Trust.from_meta(meta).temperature
        print(f"Wrote {out} (input 'image' float32 [N,1,28,28] in [0,1]; outputs 'logits' and "
              f"'probabilities', calibrated with temperature {t:.4g}; {note})")
    return 0
