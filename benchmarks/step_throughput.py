"""Training-step throughput of one cnn shape, for probing recipes on a CPU class (not a test).

    python benchmarks/step_throughput.py WIDTHS BATCH BF16 CHANNELS_LAST [STEPS]
    python benchmarks/step_throughput.py 16,64,128 128 0 1

Prints images/s and the CPU class (fmnist.hardware). Cap the kernels to imitate a lesser class:
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2.
"""

from __future__ import annotations

import sys
import time

import torch

from fmnist import hardware
from fmnist.models import build_model


def main(argv: list[str]) -> None:
    widths = [int(w) for w in argv[0].split(",")]
    batch, bf16, channels_last = int(argv[1]), argv[2] == "1", argv[3] == "1"
    steps = int(argv[4]) if len(argv) > 4 else 30
    torch.manual_seed(0)
    model = build_model("cnn", {"widths": widths})
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(5):  # lazy initialisation, allocator warm-up
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    rate = steps * batch / (time.perf_counter() - t0)
    print(f"{hardware.describe()}: cnn {argv[0]} batch {batch} bf16={int(bf16)} "
          f"channels_last={int(channels_last)}: {rate:,.0f} img/s")


if __name__ == "__main__":
    main(sys.argv[1:])
