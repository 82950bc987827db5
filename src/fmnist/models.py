"""Model registry: `mlp` (the Quickstart's network, exactly), `cnn` (the fast default), `resnet`.

Every model is built from a small config dataclass; the config's fields go into every checkpoint
so a model can be rebuilt from the checkpoint alone. Inputs are normalised float images
(B, 1, 28, 28); outputs are logits (B, num_classes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from fmnist.errors import ConfigError


class Model(nn.Module):
    """Base of the registered models: `print(model)` shows the layers, then the parameter
    count and FLOPs per image."""

    def __repr__(self) -> str:
        return describe(self)


@dataclass
class MLPConfig:
    hidden: int = 512
    num_classes: int = 10


class MLP(Model):
    """The Quickstart's `NeuralNetwork`. Attribute names are kept so its `model.pth` loads as is."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28 * 28, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_relu_stack(self.flatten(x))


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    # bias=False: BatchNorm's shift makes a conv bias redundant.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


@dataclass
class CNNConfig:
    widths: tuple[int, int, int] = (32, 64, 128)
    # Max-pool the 7x7 stage's first conv to 3x3, so its last conv (96->96 in the default, half
    # the net's FLOPs at 7x7) runs on 9 pixels. Off for checkpoints from before it existed.
    pool_last_stage: bool = False
    num_classes: int = 10


def conv_pool_bn(c_in: int, c_out: int) -> nn.Sequential:
    # Pool straight after the conv, before BatchNorm and ReLU (as airbench does): BN and ReLU
    # then run on a quarter of the pixels, which is most of the memory traffic at 28x28 on a
    # CPU. Not quite the same function as conv-BN-ReLU-pool (BN's scale may be negative), but it
    # trains as well.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class CNN(Model):
    """Small VGG-style net: five 3x3 conv-BN-ReLU layers; only the first runs at 28x28.

    The first conv (one input channel, so cheap) is max-pooled at once, so every layer with many
    channels runs at 14x14 or 7x7, about half the FLOPs at each: 44 MFLOPs per image at the
    default widths, half the earlier two-convs-at-28x28 design, and 3x its bf16 training
    throughput here. A global max-pool and one linear layer form the head. `pool_last_stage`
    pools the 7x7 stage's first conv too: the default recipe's 16,32,96 then costs 9.8 instead
    of 16.5 MFLOPs and reaches higher accuracy in the same 4 epochs
    (benchmarks/results/2026-11-27-default-screen.md, the fifth round).
    """

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        w1, w2, w3 = config.widths
        self.features = nn.Sequential(
            conv_pool_bn(1, w1),  # (B, w1, 14, 14)
            conv_bn(w1, w2),
            conv_pool_bn(w2, w2),  # (B, w2, 7, 7)
            conv_pool_bn(w2, w3) if config.pool_last_stage else conv_bn(w2, w3),  # 3x3 or 7x7
            conv_bn(w3, w3),
            nn.AdaptiveMaxPool2d(1),  # (B, w3, 1, 1)
            nn.Flatten(),
        )
        self.head = nn.Linear(w3, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


@dataclass
class ResNetConfig:
    widths: tuple[int, int, int] = (64, 128, 256)
    blocks: tuple[int, int, int] = (2, 2, 2)
    num_classes: int = 10


class ResNet(Model):
    """A ResNet for 28x28 inputs: three stages at 28, 14 and 7 pixels, average-pool head."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        self.stem = conv_bn(1, config.widths[0])
        layers: list[nn.Module] = []
        c_in = config.widths[0]
        for stage, (width, n_blocks) in enumerate(zip(config.widths, config.blocks, strict=True)):
            for i in range(n_blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(c_in, width, stride))
                c_in = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.layers(self.stem(x))))


@dataclass(frozen=True)
class ModelEntry:
    config_cls: type
    model_cls: type[nn.Module]
    summary: str = field(default="")


MODELS: dict[str, ModelEntry] = {
    "mlp": ModelEntry(MLPConfig, MLP, "the Quickstart's 3-layer perceptron"),
    "cnn": ModelEntry(CNNConfig, CNN, "small fast conv net (default recipe)"),
    "resnet": ModelEntry(ResNetConfig, ResNet, "residual net for the best accuracy"),
}


def make_config(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """The config dataclass for `name`, with `overrides` applied (lists become tuples)."""
    if name not in MODELS:
        raise ConfigError(f"Unknown model '{name}'. Valid models: {', '.join(MODELS)}.")
    config_cls = MODELS[name].config_cls
    valid = {f.name for f in fields(config_cls)}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(
            f"Unknown option(s) {', '.join(unknown)} for model '{name}'. "
            f"Valid: {', '.join(sorted(valid))}."
        )
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return config_cls(**fixed)


def build_model(name: str, config: dict[str, Any] | None = None) -> nn.Module:
    """Build a registered model from its name and (partial) config dict."""
    config_obj = make_config(name, config)  # raises ConfigError for unknown names
    try:
        return MODELS[name].model_cls(config_obj)
    except (TypeError, ValueError) as e:  # e.g. widths = "wide" from a config file
        raise ConfigError(f"Bad model_config for '{name}': {e}.") from e


def model_name(model: nn.Module) -> str:
    for name, entry in MODELS.items():
        if type(model) is entry.model_cls:
            return name
    raise ValueError(f"{type(model).__name__} is not a registered model")


def model_config(model: nn.Module) -> dict[str, Any]:
    """The config as a JSON-ready dict (tuples become lists)."""
    config: Any = model.config  # every registered model keeps its config dataclass here
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model: nn.Module) -> int:
    """Forward FLOPs for one 1x28x28 image, counted by torch's FLOP counter (2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    param = next(model.parameters())
    x = torch.zeros(1, 1, 28, 28, device=param.device, dtype=param.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def describe(model: nn.Module) -> str:
    """Layers, parameter count and FLOPs per image, for printing."""
    flops = flops_per_image(model)
    return (
        f"{nn.Module.__repr__(model)}\n"
        f"{model_name(model)}: {count_parameters(model):,} parameters, "
        f"{flops / 1e6:,.1f} MFLOPs per image"
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the `module.` (DDP) and `_orig_mod.` (compile) prefixes from state-dict keys."""
    out = {}
    for key, value in state.items():
        while key.startswith(("module.", "_orig_mod.")):
            key = key.split(".", 1)[1]
        out[key] = value
    return out
