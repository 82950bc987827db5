"""Does bf16 autocast cost the whitened default accuracy? Emulated on a CPU without fast bf16.

A 2-core Xeon with AMX (bf16 autocast on, the product's `bf16 auto`) trained the default to
92.84 % (seed 0) where fp32 gives 93.02 %. AVX2 runs bf16 11x slower than fp32, so this probe
emulates autocast's numerics in fp32 instead: every conv and linear layer rounds its input, its
weight and its output to bf16 (and their gradients on the way back), as oneDNN's bf16 kernels
do (bf16 operands, fp32 accumulation). Variants:

    fp32   the product as it runs here
    bf16   every conv and linear layer emulated

    python benchmarks/probes/bf16_emulated.py bf16 --seeds 0,1,2 >> rows.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

import fmnist.train.setup as setup_module
from fmnist.hardware import cpu_class, cpu_model
from fmnist.recipes import get_recipe
from fmnist.train import fit


class RoundBF16(torch.autograd.Function):
    """x rounded to bf16 (kept as fp32); its gradient rounded the same way."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return x.bfloat16().float()

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return grad.bfloat16().float()


r = RoundBF16.apply


class Conv2dBF16(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return r(F.conv2d(r(x), r(self.weight), None if self.bias is None else r(self.bias),
                          self.stride, self.padding, self.dilation, self.groups))


class LinearBF16(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return r(F.linear(r(x), r(self.weight), None if self.bias is None else r(self.bias)))


def emulate(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if not isinstance(m, nn.Conv2d | nn.Linear):
            continue
        m.__class__ = Conv2dBF16 if isinstance(m, nn.Conv2d) else LinearBF16
    return model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("variant", choices=("fp32", "bf16"))
    p.add_argument("--seeds", default="0")
    args = p.parse_args()
    build_model = setup_module.build_model
    if args.variant != "fp32":
        setup_module.build_model = lambda *a, **k: emulate(  # type: ignore[assignment]
            build_model(*a, **k))
    for seed in map(int, args.seeds.split(",")):
        t0 = time.perf_counter()
        recipe = replace(get_recipe("default"), seed=seed, bf16="off")
        result = fit(recipe, save=False, display=False)
        print(json.dumps({"variant": args.variant, "seed": seed, "model_config": recipe.model_config,
                          "test_accuracy": result.rows[-1]["test_accuracy"],
                          "train_seconds": round(result.rows[-1]["train_seconds"], 1),
                          "wall_s": round(time.perf_counter() - t0, 1),
                          "cpu": f"{cpu_model()} ({cpu_class()})"}), flush=True)


if __name__ == "__main__":
    main()
