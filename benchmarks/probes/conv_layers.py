"""How fast each conv of the default cnn trains alone (fp32, channels_last, batch 128):

    python benchmarks/probes/conv_layers.py

Per layer: forward+backward and forward-only milliseconds, and the GFLOP/s they reach (a
training step counted as 3x the forward's FLOPs). Near the CPU's peak, a cheaper run needs
fewer FLOPs, not faster kernels.
"""

from __future__ import annotations

import time

import torch
from torch import nn

# (in, out, input size, first layer: no gradient for its input)
LAYERS = [(1, 16, 28, True), (16, 32, 14, False), (32, 32, 14, False), (32, 96, 7, False),
          (96, 96, 7, False)]


def timed(fn, n: int = 20) -> float:
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main(batch: int = 128) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch}")
    for c_in, c_out, size, first in LAYERS:
        conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
        x = torch.randn(batch, c_in, size, size).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(not first)
        train = timed(lambda: conv(x).sum().backward())  # noqa: B023
        with torch.no_grad():
            forward = timed(lambda: conv(x))  # noqa: B023
        flops = 2 * c_in * c_out * 9 * size * size * batch
        print(f"{c_in:3d}->{c_out:3d} at {size:2d}x{size:<2d}: train {1000 * train:6.2f} ms "
              f"({3 * flops / train / 1e9:5.1f} GFLOP/s), forward {1000 * forward:5.2f} ms "
              f"({flops / forward / 1e9:5.1f} GFLOP/s)")


if __name__ == "__main__":
    main()
