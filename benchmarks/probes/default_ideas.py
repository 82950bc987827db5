"""Screening ideas for a cheaper default (issue 22), one seed each, fp32 on the CPU:

    python benchmarks/probes/default_ideas.py '{"epochs": 4, "small_epochs": 2, "ema": 0.999}'

The default recipe's cnn, optimiser, schedule and batches (fmnist's own pieces) in a bare loop,
plus two options fmnist lacks: `small_epochs` (the first epochs on 14x14 average-pooled images, a
quarter of the pixels: progressive resizing) and `ema` (an exponential moving average of the
weights and BatchNorm statistics, evaluated at the end). Fractional `epochs` stop part-way. Prints
one JSON line: test accuracy with flip TTA and without, seconds of training. Results of the runs
made: benchmarks/results/2026-11-27-amd-epyc-2c-default-ideas.jsonl.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from fmnist.inference import predict_logits  # noqa: E402
from fmnist.loader import Augment, Batches  # noqa: E402
from fmnist.models import CNN, CNNConfig  # noqa: E402
from fmnist.recipes import apply_overrides, get_recipe  # noqa: E402
from fmnist.train.data import load_data, pixel_stats  # noqa: E402
from fmnist.train.optim import make_optimizer, make_scheduler  # noqa: E402


def main(c: dict) -> dict:
    t_start = time.perf_counter()
    torch.manual_seed(c["seed"])
    recipe = apply_overrides(get_recipe("default"), {
        "batch_size": c["batch"], "lr": c["lr"], "warmup": c["warmup"],
        "label_smoothing": c["ls"], "weight_decay": c["wd"], "seed": c["seed"]})
    data = load_data(recipe)
    mean, std = pixel_stats(recipe, data)
    model = CNN(CNNConfig(tuple(c["widths"]))).to(memory_format=torch.channels_last)
    opt = make_optimizer(recipe, model, recipe.lr)
    batches = Batches(data.train_images, data.train_labels, recipe.batch_size, mean=mean, std=std,
                      shuffle=True, augment=Augment(0, True), seed=c["seed"], channels_last=True)
    total = int(c["epochs"] * len(batches))
    sched = make_scheduler(recipe, opt, total)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=c["ls"])
    ema = copy.deepcopy(model) if c["ema"] else None
    small_steps = int(c["small_epochs"] * len(batches))
    step, epoch, seconds = 0, 0, 0.0
    while step < total:
        epoch += 1
        batches.set_epoch(epoch)
        t0 = time.perf_counter()
        model.train()
        for x, y in batches:
            if step >= total:
                break
            if step < small_steps:
                x = F.avg_pool2d(x, 2)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                decay = min(c["ema"], (1 + step) / (10 + step))
                with torch.no_grad():
                    for e, m in zip(ema.parameters(), model.parameters(), strict=True):
                        e.lerp_(m, 1 - decay)
                    for e, m in zip(ema.buffers(), model.buffers(), strict=True):
                        e.lerp_(m, 1 - decay) if e.is_floating_point() else e.copy_(m)
            step += 1
        seconds += time.perf_counter() - t0

    def accuracy(m: nn.Module, tta: bool = True) -> float:
        logits = predict_logits(m, data.test_images, mean, std, tta_flip=tta)
        return round(100 * (logits.argmax(1) == data.test_labels).float().mean().item(), 2)

    res = {"cfg": c, "acc": accuracy(model), "acc_notta": accuracy(model, False),
           "train_s": round(seconds, 1)}
    if ema is not None:
        res["acc_ema"] = accuracy(ema)
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    return res


if __name__ == "__main__":
    config = {"widths": [16, 32, 96], "epochs": 6, "batch": 128, "lr": 0.1, "small_epochs": 0,
              "ema": 0.0, "seed": 0, "warmup": 0.2, "ls": 0.1, "wd": 5e-4}
    config.update(json.loads(sys.argv[1]))
    print(json.dumps(main(config)), flush=True)
