"""Tweaks of the cnn's BatchNorm and initialisation, at 3 epochs of the default's network trained
with Muon at batch 256 (the best 3-epoch recipe measured): do they buy the accuracy that would
let 3 epochs reach the default's 93 %? Each tweak is applied to the model the real `fit` builds:

    python benchmarks/probes/model_tweaks.py --variants base,bn-no-scale --seeds 0,1,2 >> rows.jsonl

Rows as `benchmarks.recipe_sweep` writes them (the docs' `candidates` tables read both).

- bn-no-scale: every BatchNorm's weight fixed at 1 (its bias still learnt), as airbench does
- bn-momentum: BatchNorm's running statistics follow the batches faster (momentum 0.4, not 0.1)
- identity-init: each conv after the whitened first one starts as the identity on its first
  c_in filters (`nn.init.dirac_`), the rest as usual, as airbench does
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

import fmnist.train.setup as setup_module
from benchmarks.common import machine_info
from fmnist.recipes import apply_overrides, get_recipe
from fmnist.train import fit

build_model = setup_module.build_model
MUON_3_EPOCHS = {"epochs": 3, "optimizer": "muon", "muon_lr": 0.05, "batch_size": 256, "lr": 0.2}


def bn_no_scale(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.requires_grad_(False)


def bn_momentum(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.4


def identity_init(model: nn.Module) -> None:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)][1:]  # the first is whitened
    with torch.no_grad():
        for conv in convs:
            n = min(conv.in_channels, conv.out_channels)
            nn.init.dirac_(conv.weight[:n])


TWEAKS: dict[str, list[Callable[[nn.Module], None]]] = {
    "base": [],
    "bn-no-scale": [bn_no_scale],
    "bn-momentum": [bn_momentum],
    "identity-init": [identity_init],
    "identity-init-bn-no-scale": [identity_init, bn_no_scale],
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variants", default=",".join(TWEAKS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    recipe = apply_overrides(get_recipe("default"), {**MUON_3_EPOCHS, "threads": args.threads})
    for seed in map(int, args.seeds.split(",")):
        for variant in args.variants.split(","):
            tweaks = TWEAKS[variant]

            def tweaked(name, config, tweaks=tweaks):  # noqa: ANN001, ANN202 - build_model's
                model = build_model(name, config)
                for tweak in tweaks:
                    tweak(model)
                return model

            setup_module.build_model = tweaked
            rows = fit(replace(recipe, seed=seed), save=False, display=False).rows
            print(json.dumps({"candidate": f"muon-b256-e3 {variant}",
                              "overrides": {**MUON_3_EPOCHS, "tweak": variant}, "seed": seed,
                              "test_accuracy": rows[-1]["test_accuracy"],
                              "train_seconds": round(rows[-1]["train_seconds"], 1),
                              "images_per_s": round(statistics.median(r["images_per_s"] for r in rows)),
                              "command": f"python benchmarks/probes/model_tweaks.py --seeds S "
                                         f"--threads {args.threads} (fit in-process)",
                              "machine": machine_info()}), flush=True)


if __name__ == "__main__":
    main()
