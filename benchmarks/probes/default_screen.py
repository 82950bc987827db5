"""Screening ideas for a cheaper default (issue 22): accuracy on a GPU, cost on this CPU.

    python benchmarks/probes/default_screen.py cost  '{"sizes": [[2, 14], [3, 28]]}'
    python benchmarks/probes/default_screen.py train '{"residual": true}' --device cuda
    python benchmarks/probes/default_screen.py screen CANDIDATES.json --device cuda \
        --parallel 12 --seeds 0,1,2 --out rows.jsonl

A candidate is a JSON object of overrides of the default recipe (cnn 16,32,96, 6 epochs at 28x28,
batch 128, one-cycle lr 0.1, label smoothing 0.1, flips, flip TTA) plus options fmnist lacks:

- `sizes`: the schedule as [[epochs, pixels], ...]: progressive resizing, images downscaled
  (bilinear, antialiased) for the first epochs; one one-cycle schedule spans them all;
- `residual`: skip connections around the 2nd conv of the 14x14 and of the 7x7 stage;
- `act`: relu | gelu | silu;
- `whiten`: the first conv (18 channels) set from the data's 3x3-patch covariance: its
  eigenvectors scaled by 1/sqrt(eigenvalue), and their negatives (airbench's patch whitening);
  `whiten_frozen` keeps it fixed;
- `ema`: decay of an exponential moving average of weights and BN statistics, evaluated at the end;
- `sep5`: the last conv (96->96 at 7x7, half the FLOPs) depthwise-separable;
- `pool4`: "floor" | "ceil": the 4th conv's output max-pooled (7x7 -> 3x3 or 4x4), so the last
  conv runs on 9 or 16 pixels instead of 49.

`train` reports test accuracy under several test-time augmentations: none, flip (fmnist's),
flip x {0, +-1 px in x} (6 views) and flip x {0, +-1 px in x, +-1 px in y} (10 views); on a CPU
the first two only.
`cost` estimates this CPU's training seconds: each size's images/s over 40 steps of the real
loop, times the images the schedule trains on. Accuracy does not depend on the device beyond
float noise (fp32; on CUDA run with NVIDIA_TF32_OVERRIDE=0), so a lent GPU answers "how accurate"
for many candidates and seeds at once while the CPU answers "how long".
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from fmnist import hardware  # noqa: E402
from fmnist.loader import Augment, Batches, to_input  # noqa: E402
from fmnist.recipes import apply_overrides, get_recipe  # noqa: E402
from fmnist.train.data import load_data, pixel_stats  # noqa: E402
from fmnist.train.optim import make_optimizer, make_scheduler  # noqa: E402

# the default recipe of the time (cnn 16,32,96, 6 epochs) and every option off
BASE: dict[str, Any] = json.loads((Path(__file__).parent / "screen_base.json").read_text())
ACTS = {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU, "silu": lambda: nn.SiLU(inplace=True)}


def block(c_in: int, c_out: int, act: str, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.BatchNorm2d(c_out), ACTS[act]())


class Net(nn.Module):
    """fmnist's cnn (conv-pool at 28, conv + conv-pool at 14, two convs at 7, global max-pool),
    with the screen's options."""

    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        w1, w2, w3 = c["widths"]
        if c["whiten"]:
            w1 = 2 * c["whiten_k"]
        self.residual = c["residual"]
        self.l1 = block(1, w1, c["act"], pool=True)
        self.l2 = block(w1, w2, c["act"], pool=False)
        self.l3 = block(w2, w2, c["act"], pool=True)
        self.l4 = block(w2, w3, c["act"], pool=False)
        if c.get("pool4"):
            self.l4.insert(1, nn.MaxPool2d(2, ceil_mode=c["pool4"] == "ceil"))
        self.l5 = block(w3, w3, c["act"], pool=False)
        if c.get("sep5"):  # depthwise 3x3 then pointwise 1x1: ~1/8 of the 3x3 conv's FLOPs
            self.l5 = nn.Sequential(nn.Conv2d(w3, w3, 3, padding=1, groups=w3, bias=False),
                                    nn.Conv2d(w3, w3, 1, bias=False), nn.BatchNorm2d(w3), ACTS[c["act"]]())
        self.head = nn.Linear(w3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.l2(self.l1(x))
        x = self.l3(x) + F.max_pool2d(x, 2) if self.residual else self.l3(x)
        x = self.l4(x)
        x = x + self.l5(x) if self.residual else self.l5(x)
        return self.head(torch.amax(x, dim=(2, 3)))


def whiten_first_conv(model: Net, images: torch.Tensor, mean: float, std: float, c: dict[str, Any]) -> None:
    x = to_input(images[:10000], mean, std)
    patches = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 9).double()
    cov = torch.cov(patches.T)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    k = c["whiten_k"]  # the k largest eigenvalues' (eigh sorts them ascending)
    eigenvalues, eigenvectors = eigenvalues[-k:], eigenvectors[:, -k:]
    w = (eigenvectors.T / (eigenvalues + c["whiten_eps"]).sqrt()[:, None]).reshape(k, 1, 3, 3).float()
    conv = model.l1[0]
    with torch.no_grad():
        conv.weight.copy_(torch.cat([w, -w]))
    conv.weight.requires_grad_(not c["whiten_frozen"])


def resize(x: torch.Tensor, pixels: int) -> torch.Tensor:
    if pixels == x.shape[-1]:
        return x
    if 28 % pixels == 0:  # exact: average pooling
        return F.avg_pool2d(x, 28 // pixels)
    return F.interpolate(x, size=(pixels, pixels), mode="bilinear", antialias=True, align_corners=False)


def shifted(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    padded = F.pad(x, (1, 1, 1, 1))
    return padded[..., 1 + dy : 29 + dy, 1 + dx : 29 + dx]


def setup(c: dict[str, Any], device: str):  # type: ignore[no-untyped-def]
    c = {**c, "seed": c["seed"] + c["seed_offset"]}
    torch.manual_seed(c["seed"])
    recipe = apply_overrides(get_recipe("default"), {
        "batch_size": c["batch"], "lr": c["lr"], "warmup": c["warmup"],
        "label_smoothing": c["ls"], "weight_decay": c["wd"], "seed": c["seed"]})
    data = load_data(recipe)
    mean, std = pixel_stats(recipe, data)
    model = Net(c).to(device).to(memory_format=torch.channels_last)
    if c["whiten"]:
        whiten_first_conv(model, data.train_images.to(device), mean, std, c)
    opt = make_optimizer(recipe, model, recipe.lr)
    batches = Batches(data.train_images.to(device), data.train_labels.to(device),
                      recipe.batch_size, mean=mean, std=std, shuffle=True,
                      augment=Augment(0, True), seed=c["seed"], channels_last=True)
    return recipe, data, mean, std, model, opt, batches


def train(c: dict[str, Any], device: str) -> dict[str, Any]:
    t_start = time.perf_counter()
    recipe, data, mean, std, model, opt, batches = setup(c, device)
    per_epoch = len(batches)
    plan = [(int(e * per_epoch), px) for e, px in c["sizes"]]  # steps at each size
    total = sum(n for n, _ in plan)
    sched = make_scheduler(recipe, opt, total)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=c["ls"])
    ema = copy.deepcopy(model) if c["ema"] else None
    step, epoch, seconds = 0, 0, 0.0
    bounds = [sum(n for n, _ in plan[: i + 1]) for i in range(len(plan))]
    while step < total:
        epoch += 1
        batches.set_epoch(epoch)
        t0 = time.perf_counter()
        for x, y in batches:
            if step >= total:
                break
            pixels = next(px for b, (_, px) in zip(bounds, plan, strict=True) if step < b)
            loss = loss_fn(model(resize(x, pixels)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                decay = min(c["ema"], (1 + step) / (10 + step))
                with torch.no_grad():
                    e_p = list(ema.parameters()) + [b for b in ema.buffers() if b.is_floating_point()]
                    m_p = list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]
                    torch._foreach_lerp_(e_p, m_p, 1 - decay)
            step += 1
        if device == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
    res: dict[str, Any] = {"cfg": c, "train_s": round(seconds, 1), **evaluate(model, data, mean, std)}
    if ema is not None:
        res["ema"] = evaluate(ema, data, mean, std)
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    return res


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, mean: float, std: float) -> dict[str, float]:
    model.eval()
    device = next(model.parameters()).device
    # the shifted views are 8 of the 10 passes: a GPU affords them, 2 CPU cores report no-TTA and flip only
    views = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)] if device.type == "cuda" else [(0, 0)]
    sums = {k: 0 for k in ("none", "flip", "flip_sx", "flip_sxy")}
    for start in range(0, len(data.test_images), 1000):
        x = to_input(data.test_images[start : start + 1000].to(device), mean, std)
        x = x.contiguous(memory_format=torch.channels_last)
        y = data.test_labels[start : start + 1000].to(device)
        logits = {}
        for dx, dy in views:
            v = shifted(x, dx, dy) if (dx, dy) != (0, 0) else x
            logits[(dx, dy, 0)] = model(v).float()
            logits[(dx, dy, 1)] = model(v.flip(-1)).float()
        sets = {"none": [(0, 0, 0)], "flip": [(0, 0, 0), (0, 0, 1)],
                "flip_sx": [(dx, 0, f) for dx in (0, 1, -1) for f in (0, 1)],
                "flip_sxy": [(dx, dy, f) for dx, dy in views for f in (0, 1)]}
        for k, keys in sets.items():
            if all(q in logits for q in keys):
                sums[k] += int((sum(logits[q] for q in keys).argmax(1) == y).sum())
    model.train()
    computed = ("none", "flip") if len(views) == 1 else tuple(sums)
    return {k: round(100 * sums[k] / len(data.test_images), 2) for k in computed}


def cost(c: dict[str, Any]) -> dict[str, Any]:
    """Estimated training seconds on this CPU: images/s of the real step at each size x images."""
    recipe, data, mean, std, model, opt, batches = setup(c, "cpu")
    loss_fn = nn.CrossEntropyLoss(label_smoothing=c["ls"])
    batches.set_epoch(1)
    it = iter(batches)
    rates, seconds = {}, 0.0
    for epochs, pixels in c["sizes"]:
        if pixels not in rates:
            for i in range(48):
                if i == 8:
                    t0 = time.perf_counter()
                x, y = next(it)
                loss = loss_fn(model(resize(x, pixels)), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            rates[pixels] = 40 * c["batch"] / (time.perf_counter() - t0)
        seconds += epochs * len(data.train_images) / rates[pixels]
    return {"cfg": c, "cpu": hardware.describe(), "img_per_s": {k: round(v) for k, v in rates.items()},
            "train_s_est": round(seconds, 1)}


def screen(args: argparse.Namespace) -> None:
    candidates: dict[str, dict[str, Any]] = json.loads(Path(args.candidates).read_text())
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(name, seed) for seed in seeds for name in candidates]  # whole seeds first
    out = Path(args.out)

    def run(job: tuple[str, int]) -> None:
        name, seed = job
        cfg = {**candidates[name], "seed": seed}
        env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.device == "cuda" else None
        proc = subprocess.run([sys.executable, __file__, "train", json.dumps(cfg), "--device", args.device],
                              capture_output=True, text=True, env=env)
        row = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {
            "cfg": cfg, "error": proc.stderr[-800:]}
        row["name"] = name
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(name, seed, row.get("flip", row.get("error", "")[-200:]), flush=True)

    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(run, jobs))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["train", "cost", "screen"])
    p.add_argument("what", help="a candidate as JSON (train, cost) or a file of named candidates (screen)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="screen.jsonl")
    args = p.parse_args()
    if args.mode == "screen":
        args.candidates = args.what
        screen(args)
        return
    c = {**BASE, **json.loads(args.what)}
    if args.device == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    print(json.dumps(train(c, args.device) if args.mode == "train" else cost(c)), flush=True)


if __name__ == "__main__":
    main()
