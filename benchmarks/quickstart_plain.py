"""The floor for `fmnist train --recipe quickstart`: the same computation as a plain PyTorch
script on in-memory tensors, with nothing around it. The data as fmnist loads it (its cached
decoded arrays, `fmnist.datasets.load_arrays`), all of it turned into float tensors once; the
Quickstart's MLP with seed 0, batch 64 in order (no shuffle), SGD lr 1e-3, 5 epochs, a test
pass after each (the Quickstart's per-batch mean loss) and its log lines; then save the
weights, load them into a new model and predict one test image.

What it leaves out, and fmnist's command does: the run folder (checkpoint, metrics and status
saved after every epoch), curves.png, TensorBoard events, the CLI and its checks. The seed case
(`python -m benchmarks --only seed`) times it beside `fmnist train --recipe quickstart`:

    python benchmarks/quickstart_plain.py [WORKDIR]

$QUICKSTART_EPOCHS sets the epochs (the benchmark's --quick: 1).
"""

import os
import sys
import tempfile
import time

import torch
from torch import nn

from fmnist.datasets import load_arrays


def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_arrays("fashion-mnist", split)[:2]
    x = torch.from_numpy(images).float().div_(255).unsqueeze(1)  # (N, 1, 28, 28), ToTensor's /255
    return x, torch.from_numpy(labels).long()


def quickstart_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 512), nn.ReLU(),
                         nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))  # fmt: skip


def train(x: torch.Tensor, y: torch.Tensor, model: nn.Module, loss_fn: nn.Module,
          optimizer: torch.optim.Optimizer, batch_size: int) -> None:
    model.train()
    for batch, start in enumerate(range(0, len(x), batch_size)):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        loss = loss_fn(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if batch % 100 == 0:
            print(f"loss: {loss.item():>7f}  [{start + len(xb):>5d}/{len(x):>5d}]")


@torch.no_grad()
def test(x: torch.Tensor, y: torch.Tensor, model: nn.Module, loss_fn: nn.Module,
         batch_size: int) -> float:
    model.eval()
    losses, correct = [], 0
    for start in range(0, len(x), batch_size):
        pred = model(x[start : start + batch_size])
        losses.append(loss_fn(pred, y[start : start + batch_size]))
        correct += int((pred.argmax(1) == y[start : start + batch_size]).sum())
    loss, accuracy = torch.stack(losses).double().mean().item(), correct / len(x)
    print(f"Test Error: \n Accuracy: {100 * accuracy:>0.1f}%, Avg loss: {loss:>8f} \n")
    return accuracy


def main() -> None:
    workdir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="quickstart-plain-")
    epochs = int(os.environ.get("QUICKSTART_EPOCHS", "5"))
    batch_size = 64
    x_train, y_train = tensors("train")
    x_test, y_test = tensors("test")
    torch.manual_seed(0)
    model, loss_fn = quickstart_mlp(), nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    seconds = []  # each epoch's training, as fmnist's metrics.jsonl reports it
    for t in range(epochs):
        print(f"Epoch {t + 1}\n-------------------------------")
        t0 = time.perf_counter()
        train(x_train, y_train, model, loss_fn, optimizer, batch_size)
        seconds.append(time.perf_counter() - t0)
        test(x_test, y_test, model, loss_fn, batch_size)
    print("Done!")
    print("Training seconds per epoch:", " ".join(f"{s:.2f}" for s in seconds))
    path = os.path.join(workdir, "model.pth")
    torch.save(model.state_dict(), path)
    model = quickstart_mlp()
    model.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    with torch.no_grad():
        predicted = int(model(x_test[:1]).argmax(1))
    print(f"Predicted: {predicted}, Actual: {int(y_test[0])}")


if __name__ == "__main__":
    main()
