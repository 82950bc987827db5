"""A first convolution set from the training images and kept fixed: patch whitening.

airbench's trick, for grey 28x28 images: the first conv's filters are the eigenvectors of the
covariance of the images' 3x3 patches, each scaled by 1/sqrt(eigenvalue + eps), with their
negatives beside them (the ReLU after the layer keeps each sign's half). Such a layer passes on
every leading direction of pixel variation, the fine detail as well as the brightness, which
the rest of the net then learns from at once instead of first learning its own first layer.
(In fmnist's models BatchNorm follows the conv, so each filter's scale, and with it EPS, is
normalised away: what counts is the directions.) On Fashion-MNIST with the cnn 16,32,96 (its
last stage unpooled, the default of the time) it is worth about two epochs at this length: 4
epochs reach 93.14 % (3 seeds, fp32 on a GPU) and 93.02 % (3 seeds on a CPU), which took 6
before (benchmarks/results/2026-11-27-default-screen.md). Kept fixed, the layer also costs no
backward pass: 1.1-1.4x the training images/s on a 2-core avx2 EPYC.

A conv of 2k channels is whitened in k directions (a 3x3 grey patch has 9, so 2 to 18 channels);
a wider one is refused rather than half-whitened with frozen random filters beside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fmnist.errors import ConfigError
from fmnist.loader import to_input

# Added to each eigenvalue, so that the flattest directions (pixel noise) are not amplified
# without bound where nothing normalises the conv's output; Fashion-MNIST's smallest is ~0.02.
EPS = 1e-2
SAMPLE = 2_000  # images the covariance is estimated from (1.6 M patches), spread evenly over the set


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The model's first layer, which must be a convolution."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)), None)
    if not isinstance(first, nn.Conv2d):
        raise ConfigError(f"whiten needs a model whose first layer is a convolution; "
                          f"{type(model).__name__.lower()} has none (use --no-whiten).")
    return first


def patch_whitening(images: torch.Tensor, mean: float, std: float, conv: nn.Conv2d) -> torch.Tensor:
    """Filters (2k, C, kh, kw) for `conv`: the k leading whitening directions of the patches
    `conv` sees in uint8 `images` (N, 28, 28), then their negatives; k = out_channels // 2 (an
    odd last channel keeps its random initialisation)."""
    kh, kw = conv.kernel_size
    if isinstance(conv.padding, str):  # "same"/"valid": not a layout the models here use
        raise ConfigError(f"whiten needs a first conv with numeric padding, not '{conv.padding}'.")
    dim = conv.in_channels * kh * kw
    if not 2 <= conv.out_channels <= 2 * dim:
        raise ConfigError(f"whiten sets a first conv of 2 to {2 * dim} channels ({dim} directions x 2 "
                          f"signs); this model's has {conv.out_channels} (use --no-whiten).")
    k = conv.out_channels // 2
    step = max(1, len(images) // SAMPLE)
    gram = torch.zeros(dim, dim, dtype=torch.float64)
    total = torch.zeros(dim, dtype=torch.float64)
    n = 0
    for chunk in images[::step].split(2000):  # ~56 MB of patches at a time
        x = to_input(chunk, mean, std)
        patches = F.unfold(x, (kh, kw), dilation=conv.dilation, padding=conv.padding)  # (B, dim, L)
        patches = patches.transpose(0, 1).reshape(dim, -1)  # (dim, B * L)
        # float32 products (a 9x9 result from ~1.6 M patches), summed in float64 across chunks
        gram += (patches @ patches.T).double()
        total += patches.sum(1, dtype=torch.float64)
        n += patches.shape[1]
    mu = total / n
    cov = (gram - n * torch.outer(mu, mu)) / (n - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    eigenvalues, eigenvectors = eigenvalues[-k:], eigenvectors[:, -k:]
    filters = (eigenvectors.T / (eigenvalues.clamp(min=0) + EPS).sqrt()[:, None]).float()
    filters = filters.reshape(k, conv.in_channels, kh, kw)
    return torch.cat([filters, -filters])


def whiten(model: nn.Module, images: torch.Tensor, mean: float, std: float) -> None:
    """Set the first conv's filters to the patch whitening of `images`."""
    conv = first_conv(model)
    filters = patch_whitening(images, mean, std, conv)
    with torch.no_grad():
        conv.weight[: len(filters)] = filters.to(conv.weight.device, conv.weight.dtype)


def freeze(model: nn.Module) -> None:
    """Keep the first conv fixed while training (the optimiser leaves it out)."""
    first_conv(model).requires_grad_(False)
