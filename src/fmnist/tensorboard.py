"""TensorBoard logging: a `fit` callback writing event files into the run folder, so
`tensorboard --logdir runs` (or `fmnist tensorboard`) compares every run.

What it writes:
- at the start: a grid of training inputs (images/train_inputs);
- every `every` steps: the training loss and learning rate (train/loss, train/lr);
- every epoch: train/epoch_loss and train/images_per_s; test/loss, test/accuracy (holdout/...
  with a holdout) for the epochs the recipe evaluates (`eval_every`);
- at the end: the model's graph, the confusion matrix as a figure, per-class precision-recall
  curves on the test set (both from the final evaluation's logits: no second pass over it),
  and the recipe as hyper-parameters with the final metrics (the HParams tab).

Only rank 0 runs callbacks, and this one writes nothing without a run folder. TensorBoard is
an optional dependency (the `tensorboard` extra): `available()` says whether it is installed.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import warnings
from typing import Any

import numpy as np
import torch

from fmnist.train import Callback, RunState

# Sampling the loss every step would sync a GPU every step (`.item()`); every 25 steps, and
# written in batches of FLUSH_SAMPLES, the device runs ahead between reads.
EVERY = 25
FLUSH_SAMPLES = 8
INPUT_GRID = 64  # training images shown in images/train_inputs

# The tags a run gets (tests read them back; the README names them).
STEP_TAGS = ("train/loss", "train/lr")
EPOCH_TAGS = ("test/loss", "test/accuracy", "train/epoch_loss", "train/images_per_s")
HPARAM_METRICS = ("hparam/test_accuracy", "hparam/best_test_accuracy", "hparam/test_loss",
                  "hparam/train_seconds")


def available() -> bool:
    """Whether torch.utils.tensorboard can be used (it needs the tensorboard package)."""
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardLog(Callback):
    """Writes the run's TensorBoard events into its run folder (see the module docstring)."""

    end_seconds = 1.5  # the test-set figures and the graph: 1.5 s measured

    def __init__(self, every: int = EVERY, graph: bool = True) -> None:
        self.every = every
        self.graph = graph
        self.writer: Any = None
        self.pending: list[tuple[int, torch.Tensor, float]] = []

    def on_fit_start(self, state: RunState) -> None:
        if state.run_dir is None or not state.is_main or state.setup is None or state.parts is None:
            return
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run drops what its first try logged after the last saved epoch, so the
        # curves do not show those steps twice.
        start = len(state.rows) * state.steps_per_epoch
        self.writer = SummaryWriter(log_dir=str(state.run_dir), purge_step=start or None)
        if start == 0:
            self._inputs(state)

    def on_step(self, state: RunState, step: int, loss: torch.Tensor, batch: int) -> None:
        if self.writer is None or step % self.every:
            return
        assert state.parts is not None
        lr = state.parts.optimizer.param_groups[0]["lr"]  # a Python float: no device sync
        self.pending.append((state.global_step + step, loss.detach(), lr))
        if len(self.pending) >= FLUSH_SAMPLES:
            self._write_pending()

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        self._write_pending()
        step = state.epoch * state.steps_per_epoch
        w = self.writer
        if "test_accuracy" in row:  # not an epoch that --eval-every skips
            w.add_scalar("test/loss", row["test_loss"], step)
            w.add_scalar("test/accuracy", row["test_accuracy"], step)
        if "holdout_accuracy" in row:
            w.add_scalar("holdout/accuracy", row["holdout_accuracy"], step)
            w.add_scalar("holdout/loss", row["holdout_loss"], step)
        w.add_scalar("train/epoch_loss", row["train_loss"], step)
        w.add_scalar("train/images_per_s", row["images_per_s"], step)
        w.flush()  # an interrupted run keeps every finished epoch's events

    def on_fit_end(self, state: RunState) -> None:
        if self.writer is None:
            return
        assert state.setup is not None and state.parts is not None
        step = len(state.rows) * state.steps_per_epoch
        if self.graph:
            # At the end, not the start: tracing before the first training step (torch.jit)
            # slowed the default recipe's training by ~20 % in a fresh process (measured,
            # `python -m benchmarks --only tensorboard`); the graph is the same either way.
            self._graph(state)
        self._test_set_figures(state, step)
        self._hparams(state)
        self.writer.close()
        self.writer = None

    # ---- pieces ----------------------------------------------------------------------------

    def _write_pending(self) -> None:
        if not self.pending:
            return
        losses = torch.stack([loss for _, loss, _ in self.pending]).float().tolist()  # one sync
        for (step, _, lr), loss in zip(self.pending, losses, strict=True):
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
        self.pending.clear()

    def _inputs(self, state: RunState) -> None:
        assert state.setup is not None
        images = state.setup.data.train_images[:INPUT_GRID]  # uint8 (N, 28, 28)
        self.writer.add_images("images/train_inputs", images.unsqueeze(1), 0, dataformats="NCHW")

    def _graph(self, state: RunState) -> None:
        """The model's graph, traced on a CPU copy: the model being trained is left exactly as
        it is (its device, dtype, mode and BatchNorm statistics)."""
        from fmnist.inference import to_input
        from fmnist.models import unwrap

        assert state.setup is not None and state.parts is not None
        setup = state.setup
        model = copy.deepcopy(unwrap(state.parts.model)).cpu().float().eval()
        x = to_input(setup.data.train_images[:1], setup.mean, setup.std)  # (1, 1, 28, 28)
        try:
            with warnings.catch_warnings():  # add_graph traces with torch.jit, which this torch deprecates
                warnings.simplefilter("ignore", DeprecationWarning)
                self.writer.add_graph(model, x)
        except Exception as e:  # a model the tracer cannot follow costs the graph, not the run
            print(f"TensorBoard: no model graph ({type(e).__name__}: {e})")

    def _test_set_figures(self, state: RunState, step: int) -> None:
        """Confusion matrix and per-class precision-recall curves of the final model."""
        from fmnist.evaluate import metrics_from_logits
        from fmnist.inference import predict_logits
        from fmnist.plots import confusion_figure

        assert state.setup is not None and state.parts is not None
        setup, recipe = state.setup, state.recipe
        data = setup.data
        logits = state.test_logits  # the final evaluation's: no second pass over the test set
        if logits is None or len(logits) != len(data.test_images):  # none, or a rank's slice
            logits = predict_logits(state.parts.model, data.test_images, setup.mean, setup.std,
                                    batch_size=recipe.eval_batch_size, tta_flip=recipe.tta_flip)
        logits = logits.cpu()
        labels = data.test_labels.cpu()
        report = metrics_from_logits(logits, labels, data.classes, top_errors=0)
        self.writer.add_figure("test/confusion_matrix",
                               confusion_figure(np.asarray(report.confusion_matrix), data.classes), step)
        probs = torch.softmax(logits.double(), dim=1)
        for k, name in enumerate(data.classes):
            self.writer.add_pr_curve(f"pr/{name}", labels == k, probs[:, k], step)

    def _hparams(self, state: RunState) -> None:
        """The recipe and the final metrics, for the HParams tab (written into this run, not
        the sub-folder `SummaryWriter.add_hparams` would make)."""
        from torch.utils.tensorboard.summary import hparams

        from fmnist.recipes import to_dict

        rows = [r for r in state.rows if "test_accuracy" in r]
        if not rows:
            return
        params = {k: v if isinstance(v, int | float | str | bool) else json.dumps(v)
                  for k, v in to_dict(state.recipe).items()}
        metrics = dict(zip(HPARAM_METRICS, (
            rows[-1]["test_accuracy"], max(r["test_accuracy"] for r in rows),
            rows[-1]["test_loss"], rows[-1].get("train_seconds", 0.0)), strict=True))
        for summary in hparams(params, metrics):
            self.writer.file_writer.add_summary(summary)
        step = len(state.rows) * state.steps_per_epoch
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

