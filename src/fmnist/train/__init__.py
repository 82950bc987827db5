"""Training: `fit(recipe)` and what hangs off it.

    data         the arrays a run trains on, the holdout, pixel statistics
    optim        optimiser and lr schedule
    setup        device, process group and data (set_up); model, optimiser, batches (build);
                 the training step
    evaluation   per-epoch test and holdout accuracy and loss (DDP-aware)
    callbacks    the hooks and the built-in display, metrics, curves and status writers
    calibration  the end-of-fit step: temperature, sets and not-recognised threshold fitted on
                 the held-out images
    throughput   what --time-budget plans with (planning itself: fmnist.budget)
    guard        the divergence guard: whether a run still learns
    stops        signals and timed checkpoints: where a run may stop, and how
    ending       why a run ended early: its status.json and its sentence
    loop         fit: the loop, saving each epoch, recording why a run stopped
"""

from fmnist.train.callbacks import Callback, RunState
from fmnist.train.data import Data, load_data
from fmnist.train.loop import FitResult, fit
from fmnist.train.stops import EndRun, Interrupted

__all__ = ["Callback", "Data", "EndRun", "FitResult", "Interrupted", "RunState", "fit",
           "load_data"]
