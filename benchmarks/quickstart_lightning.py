"""The Quickstart's computation under PyTorch Lightning, as lean as Lightning goes: no progress
bar, checkpoint, logger or model summary; the data as tensors in memory (TensorDataset, no
per-image transform); the same MLP, SGD lr 1e-3, batch 64, 5 epochs, a test pass after every
epoch. A reference for `fmnist train --recipe quickstart` (issue 9: at least 2x faster).

Lightning is not a dependency of fmnist: run it from an environment that has it, e.g.

    python -m venv /tmp/lvenv && /tmp/lvenv/bin/pip install lightning
    /tmp/lvenv/bin/python benchmarks/quickstart_lightning.py

It prints the wall time from process start and the final accuracy, one JSON line.
"""

import json
import os
import time

T0 = time.perf_counter()  # before the imports: the wall time counts them, as the others' does

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from fmnist.datasets import load_arrays  # noqa: E402


def tensors(split: str) -> TensorDataset:
    images, labels = load_arrays("fashion-mnist", split, download=False)[:2]
    x = torch.from_numpy(images).float().div_(255).unsqueeze(1)  # ToTensor's scaling
    return TensorDataset(x, torch.from_numpy(labels).long())


class Quickstart(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 512), nn.ReLU(),
                                   nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))  # fmt: skip
        self.loss_fn = nn.CrossEntropyLoss()
        self.correct = self.seen = 0

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201 - Lightning's hooks
        x, y = batch
        return self.loss_fn(self.model(x), y)

    def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        self.correct += int((self.model(x).argmax(1) == y).sum())
        self.seen += len(y)

    def on_validation_epoch_start(self) -> None:
        self.correct = self.seen = 0

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def main() -> None:
    torch.manual_seed(0)
    epochs = int(os.environ.get("QUICKSTART_EPOCHS", "5"))
    module = Quickstart()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, DataLoader(tensors("train"), batch_size=64),
                DataLoader(tensors("test"), batch_size=64))
    print(json.dumps({"wall_s": time.perf_counter() - T0, "accuracy": module.correct / module.seen}))


if __name__ == "__main__":
    main()
