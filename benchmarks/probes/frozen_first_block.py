"""The default with the BatchNorm after its whitened first conv frozen too (weight 1, bias 0):
then nothing before the second conv needs a gradient, and that conv skips its input gradient
(~4 % of a step's FLOPs). Does it keep 93 %, and what does it buy? Alternating with the default:

    python benchmarks/probes/frozen_first_block.py --seeds 0,1,2 >> rows.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace

import fmnist.train.setup as setup_module
from fmnist.hardware import cpu_class, cpu_model
from fmnist.recipes import get_recipe
from fmnist.train import fit, whitening

freeze_conv = whitening.freeze


def freeze_first_block(model) -> None:  # noqa: ANN001 - any cnn the recipe builds
    freeze_conv(model)
    bn = model.features[0][2]  # conv_pool_bn: conv, pool, BatchNorm, ReLU
    bn.weight.requires_grad_(False)
    bn.bias.requires_grad_(False)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="0")
    args = p.parse_args()
    for seed in map(int, args.seeds.split(",")):
        for variant in ("default", "bn1-frozen"):
            setup_module.whitening.freeze = freeze_first_block if variant == "bn1-frozen" else freeze_conv
            rows = fit(replace(get_recipe("default"), seed=seed), save=False, display=False).rows
            print(json.dumps({"variant": variant, "seed": seed,
                              "test_accuracy": rows[-1]["test_accuracy"],
                              "train_seconds": round(rows[-1]["train_seconds"], 1),
                              "images_per_s": round(statistics.median(r["images_per_s"] for r in rows)),
                              "cpu": f"{cpu_model()} ({cpu_class()})"}), flush=True)


if __name__ == "__main__":
    main()
