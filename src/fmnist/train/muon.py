"""Muon for the conv filters, SGD for the rest: the `muon` optimiser of a recipe.

Muon (Keller Jordan, 2024) replaces a filter bank's momentum update by the nearest matrix with
all singular values near one, its "orthogonalisation": every direction the gradient names moves
by about the same amount, instead of the few largest drowning out the rest. It cut the steps of
the fastest CIFAR-10 recipe (airbench) by about a fifth. Here each conv's filters, as a matrix
(out channels x in channels * kh * kw), are updated so; every other trained parameter (the
BatchNorm scales and shifts, the linear head) by SGD with Nesterov momentum, as the `sgd`
optimiser does. One optimiser holds both, so one lr schedule drives both and one state_dict
resumes both.

The orthogonalisation runs five Newton-Schulz iterations in float32 (torch.optim.Muon runs them
in bfloat16, 11x slower than float32 on an AVX2 CPU, and takes 2-D weights only). Each filter
bank's norm is held at sqrt(out channels) before its step: BatchNorm follows every conv, so the
scale carries nothing, and a fixed scale keeps the step's relative size what the lr says.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

# The quintic's coefficients: the largest slope at zero that still brings every singular value
# into roughly [0.7, 1.2] in five steps (Jordan's choice; exact orthogonality is not needed).
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
STEPS = 5


def orthogonalised(g: torch.Tensor, steps: int = STEPS) -> torch.Tensor:
    """About U V^T for the matrix g = U S V^T: the same singular vectors, singular values ~1."""
    a, b, c = NEWTON_SCHULZ
    x = g / (g.norm() + 1e-7)  # singular values <= 1, where the iteration converges
    wide = x.size(0) <= x.size(1)
    if not wide:  # iterate on the smaller Gram matrix
        x = x.T
    for _ in range(steps):  # x <- a x + (b G + c G^2) x, G = x x^T; addmm: no temporaries
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x if wide else x.T


class Muon(torch.optim.Optimizer):
    """Param groups with `muon=True` (conv filters) take Muon steps; the others SGD steps with
    (Nesterov) momentum and weight decay, as torch.optim.SGD takes them."""

    def __init__(self, groups: Iterable[dict[str, Any]], lr: float, momentum: float,
                 nesterov: bool = True) -> None:
        super().__init__(list(groups), {"lr": lr, "momentum": momentum, "nesterov": nesterov,
                                        "weight_decay": 0.0, "muon": False})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, momentum, nesterov = group["lr"], group["momentum"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"] and not group["muon"]:
                    g = g.add(p, alpha=group["weight_decay"])
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = g.clone()
                else:
                    buf.mul_(momentum).add_(g)
                g = g.add(buf, alpha=momentum) if nesterov else buf
                if group["muon"]:
                    p.mul_(len(p) ** 0.5 / p.norm().clamp(min=1e-12))
                    g = orthogonalised(g.reshape(len(g), -1)).view_as(p)
                p.add_(g, alpha=-lr)
