"""Named training recipes as plain dataclasses: `quickstart`, `default`, `best`.

A recipe is everything `fit` needs to reproduce a run. Precedence: recipe defaults, then a
`--config` file (TOML or JSON, flat keys named like the fields), then command-line flags. The
effective recipe is written into the run folder as `config.json`, which `--config` also accepts.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fmnist.errors import ConfigError


@dataclass
class Recipe:
    name: str = "default"
    dataset: str = "fashion-mnist"
    model: str = "cnn"
    model_config: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    # Total optimiser steps, when set (> 0): the run ends after them, part-way through its last
    # epoch if need be, and the schedule spans them. --time-budget plans with it.
    steps: int = 0
    # At least this many optimiser steps (0: no minimum): on a small dataset the batch shrinks
    # (down to 32), then the epochs grow, until the run takes them. A few hundred images at
    # batch 128 for 6 epochs (the default's length then) are 12 steps, too few for any schedule
    # to learn from. Asking for epochs, steps or a batch size (a flag or a config key) turns it
    # off: they are kept.
    min_steps: int = 0
    batch_size: int = 256
    # optimisation
    optimizer: str = "sgd"  # sgd | adamw | muon (Muon for the conv filters: fmnist.train.muon)
    lr: float = 0.1
    # the conv filters' peak lr with optimizer muon (lr: the other parameters); at batch 128 and
    # 3 epochs of the default's network, 0.025 did best of 0.0125-0.4
    # (benchmarks/results/2026-12-07-amd-epyc-2c-default-3-epochs.jsonl)
    muon_lr: float = 0.025
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # constant | onecycle | cosine
    warmup: float = 0.2  # fraction of all steps spent warming up (onecycle, cosine)
    label_smoothing: float = 0.1
    # lr rule for the global batch under DDP: "linear" multiplies lr by the world size
    lr_scaling: str = "none"  # none | linear
    # data
    shuffle: bool = True
    normalize: bool = True  # standardise with the training set's mean/std (else just /255)
    shift: int = 2  # random translation, pixels
    flip: bool = True  # random horizontal flips
    # the first conv set from the training images' patch whitening and kept fixed
    # (fmnist/train/whitening.py); needs a first layer that is a conv of 2-18 channels
    whiten: bool = False
    # train images held out: an accuracy not measured on the test set, and what the end of the
    # run fits the checkpoint's temperature, prediction sets and not-recognised threshold on
    # (fmnist.trust); 0: none of these (the probabilities stay as the model gives them)
    holdout: int = 0
    # At most this share of the training images is held out (0: no limit), so that a recipe's
    # holdout leaves a small dataset most of its images. Asking for a holdout turns it off.
    holdout_max_share: float = 0.0
    # evaluation
    # the test set after every N epochs and after the last; 0: after the last only (each one
    # skipped is a forward pass over 10,000 images, ~1.5 s of the default's ~130 s on a 2-core avx2 EPYC)
    eval_every: int = 1
    tta_flip: bool = True  # average logits with the flipped image's at evaluation
    eval_batch_size: int = 1024
    eval_loss: str = "images"  # test loss: mean over images | mean of per-batch means (Quickstart)
    # speed
    bf16: str = "auto"  # auto | on | off: bf16 autocast (auto: CUDA, or CPUs with AMX/AVX512-BF16)
    channels_last: bool = True  # NHWC: the layout oneDNN's fast conv kernels want
    compile: bool = False
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    # reproducibility and output
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    log: str = "progress"  # progress | quickstart


# The minimum optimiser steps of the default and best recipes. 3 Fashion-MNIST classes x 100
# images (240 to train on) with the default recipe: 12 steps at batch 128 stayed at chance
# (33.33 %, the loss diverging to 15.6); batch 32 for 12 epochs (96 steps) reached 96.67 %.
MIN_STEPS = 100

# Training images the default and best recipes hold out to calibrate on (see Recipe.holdout).
HOLDOUT = 5000
HOLDOUT_SHARE = 1 / 12  # 5,000 of Fashion-MNIST's 60,000

# Recipe fields added after runs had written config.json files, with the value those runs
# trained with, so that `--config OLD_RUN/config.json` still repeats them.
ADDED_LATER: dict[str, Any] = {"whiten": False, "eval_every": 1, "holdout_max_share": 0.0}

CHOICES = {
    "optimizer": ("sgd", "adamw", "muon"),
    "schedule": ("constant", "onecycle", "cosine"),
    "lr_scaling": ("none", "linear"),
    "bf16": ("auto", "on", "off"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "log": ("progress", "quickstart"),
    "eval_loss": ("images", "batches"),
}

RECIPES: dict[str, Recipe] = {
    # The PyTorch Quickstart, exactly: its network, loss, optimiser, batch size, epochs, no
    # shuffling, no normalisation beyond ToTensor's /255, fp32, and its log lines.
    "quickstart": Recipe(
        name="quickstart", model="mlp", epochs=5, batch_size=64, optimizer="sgd", lr=1e-3,
        momentum=0.0, nesterov=False, weight_decay=0.0, schedule="constant", warmup=0.0,
        label_smoothing=0.0, shuffle=False, normalize=False, shift=0, flip=False,
        tta_flip=False, eval_batch_size=64, eval_loss="batches", bf16="off", channels_last=False,
        log="quickstart",
    ),
    # 93 % within twice the Quickstart program's time on 2 CPU cores, fp32 (AVX2 has no bf16).
    # The cnn 16,32,96 (the cheapest of 28 widths/epochs/lr candidates x 3 seeds to reach 93 %:
    # 6 epochs, 93.09 %; benchmarks/results/2026-11-27-recipe-frontier.md) with its first conv
    # whitened and fixed reaches it in 4: 93.14 % over 3 seeds (fp32 on a GPU; 93.02 % over 3 on
    # a 2-core avx2 EPYC), with 1.1-1.4x the images/s (no backward pass for that layer).
    # Screened beside it, 3 seeds each at 4 epochs unless said
    # (benchmarks/results/2026-11-27-default-screen.md): plain 92.73 %; whitened but trained
    # 92.90 %; residual 92.48 %; GELU 92.72 %; EMA 92.61 %; lr 0.2 92.74 %; batch 256 92.59 %;
    # progressive resizing (first epochs at 14x14) lost 0.1-0.5 points for its time; shift TTA
    # nothing. No random shifts at this length (shift 2 cost 0.8 points); flips and flip-TTA pay.
    # Then its 7x7 stage pooled to 3x3 (`pool_last_stage`: the last conv, half the FLOPs, on 9
    # pixels): 1.6x the images/s and 93.48 % over 3 seeds at the same 4 epochs (3.5: 93.30 %,
    # 3: 92.93 %; the screen's loop, avx2 EPYC, fp32); `fmnist train --seed 0/1/2` 93.29 %
    # (benchmarks/results/2026-11-28-amd-epyc-2c-default-seeds.jsonl). Its test set is evaluated
    # once, at the end: every second counts against the 2x.
    # 5,000 training images are held out to calibrate it (fmnist.trust): its probabilities,
    # prediction sets and not-recognised mark (benchmarks/results/*-calibration.json has what
    # that costs in accuracy: 3 seeds with and without).
    "default": Recipe(name="default", epochs=4,
                      model_config={"widths": [16, 32, 96], "pool_last_stage": True},
                      batch_size=128, lr=0.1, shift=0, whiten=True, min_steps=MIN_STEPS,
                      eval_every=0, holdout=HOLDOUT, holdout_max_share=HOLDOUT_SHARE),
    # Aim: 95 % within 10 minutes on CPU. The same cnn at twice the width (175 MFLOPs/img,
    # ~1,600 img/s here), long enough to want a little shift augmentation. Batch 128 won for the
    # default too. Measured (seed 0): 94.65 % in 542 s of training; batch 256, lr 0.1, shift 2
    # gave 94.13 % in 510 s. Short of the aim; on a GPU see configs/resnet-gpu.toml.
    "best": Recipe(
        name="best", model="cnn", model_config={"widths": [64, 128, 256]}, epochs=14,
        batch_size=128, lr=0.05, shift=1, min_steps=MIN_STEPS, holdout=HOLDOUT,
        holdout_max_share=HOLDOUT_SHARE,
    ),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"Unknown recipe '{name}'. Valid recipes: {', '.join(RECIPES)}.")
    return replace(RECIPES[name], model_config=dict(RECIPES[name].model_config))


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"Cannot read config file {path}: {e.strerror}.") from e
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"Config file {path} is not valid {path.suffix[1:].upper() or 'TOML'}: {e}.") from e
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a table of recipe fields.")
    if {"name", "model_config", "seed"} <= set(data):
        # a run's config.json (every run writes these keys) from before a field existed: that
        # run had the field's old behaviour, not what today's named recipe sets
        data = {**ADDED_LATER, **data}
    return data


def apply_overrides(recipe: Recipe, overrides: dict[str, Any]) -> Recipe:
    """A copy of `recipe` with `overrides` (field -> value) applied and checked."""
    defaults = asdict(Recipe())
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ConfigError(
            f"Unknown recipe field(s) {', '.join(unknown)}. Valid: {', '.join(defaults)}."
        )
    overrides = {k: _typed(k, v, defaults[k]) for k, v in overrides.items()}
    if overrides.get("model", recipe.model) != recipe.model:
        # the recipe's model_config and whitening were chosen for its model, not the one asked for
        overrides.setdefault("model_config", {})
        overrides.setdefault("whiten", False)
    if "epochs" in overrides and "steps" not in overrides:
        overrides["steps"] = 0  # an epoch count asked for replaces a planned step count
    if {"epochs", "batch_size", "steps"} & set(overrides) and "min_steps" not in overrides:
        overrides["min_steps"] = 0  # a length or batch asked for is kept as it is
    if "holdout" in overrides and "holdout_max_share" not in overrides:
        overrides["holdout_max_share"] = 0.0  # a holdout asked for is held out as asked
    recipe = replace(recipe, **overrides)
    validate(recipe)
    return recipe


def _typed(name: str, value: Any, default: Any) -> Any:
    """`value` as the type of the field's default (an int is a fine float), or ConfigError."""
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
             dict: "a table"}
    raise ConfigError(f"Recipe field {name} must be {names.get(kind, kind.__name__)}, got {value!r}.")


def validate(recipe: Recipe) -> None:
    for name, allowed in CHOICES.items():
        value = getattr(recipe, name)
        if value not in allowed:
            raise ConfigError(f"Invalid {name} '{value}'. Only {', '.join(allowed)} are supported.")
    positive = {"epochs": recipe.epochs, "batch_size": recipe.batch_size,
                "eval_batch_size": recipe.eval_batch_size, "lr": recipe.lr, "muon_lr": recipe.muon_lr}
    for name, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}.")
    bounded = {"momentum": recipe.momentum, "warmup": recipe.warmup,
               "label_smoothing": recipe.label_smoothing,
               "holdout_max_share": recipe.holdout_max_share}
    for name, value in bounded.items():
        if not 0 <= value < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {value}.")
    if recipe.whiten and recipe.model == "mlp":
        raise ConfigError("whiten sets a first convolution; the mlp has none (drop --whiten).")
    for name in ("weight_decay", "shift", "holdout", "threads", "steps", "min_steps", "eval_every"):
        if getattr(recipe, name) < 0:
            raise ConfigError(f"{name} must not be negative, got {getattr(recipe, name)}.")


def holdout_for(recipe: Recipe, train_images: int) -> int:
    """The training images to hold out: the recipe's holdout, cut to its holdout_max_share."""
    if recipe.holdout_max_share > 0:
        return min(recipe.holdout, int(train_images * recipe.holdout_max_share))
    return recipe.holdout


def sized_for(recipe: Recipe, train_images: int) -> Recipe:
    """`recipe` with a smaller batch (and the lr scaled with it) and more epochs when
    `train_images` (per process) give fewer than `min_steps` steps; unchanged otherwise, or
    when the recipe sets its steps."""
    if not recipe.min_steps or recipe.steps:
        return recipe
    batch = recipe.batch_size

    def total(b: int) -> int:
        return recipe.epochs * -(-train_images // b)

    while total(batch) < recipe.min_steps and batch > 32:
        batch = max(32, batch // 2)
    per_epoch = -(-train_images // batch)
    epochs = max(recipe.epochs, -(-recipe.min_steps // per_epoch))
    # the same lr per image: a quarter of the batch at the full lr diverged on synthetic data
    lr = recipe.lr * batch / recipe.batch_size
    return replace(recipe, batch_size=batch, epochs=epochs, lr=lr)


def traits(recipe: Recipe) -> list[str]:
    """What sets the recipe's network apart beyond its name, in words ("first conv whitened")."""
    return [text for text, on in (("first conv whitened", recipe.whiten),
                                  ("last stage pooled", recipe.model_config.get("pool_last_stage")))
            if on]


def to_dict(recipe: Recipe) -> dict[str, Any]:
    return asdict(recipe)
