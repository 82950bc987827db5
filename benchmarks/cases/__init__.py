"""The benchmark cases. Each module has `run(args, tmp) -> dict` (the result saved in the JSON)
and `rows(result) -> [(case, metric, fmnist, reference, ratio)]` (its lines of the table), so
a case's result schema is written and read in one file."""

from __future__ import annotations

from types import ModuleType

from benchmarks.cases import (
    best,
    budget,
    data,
    data_csv,
    inference,
    seed,
    tensorboard,
    time_to_accuracy,
)

# --only name -> module, in the order they run; a case's result is saved under its module's name
CASES: dict[str, ModuleType] = {
    "seed": seed,
    "time-to-acc": time_to_accuracy,
    "best": best,
    "inference": inference,
    "data": data,
    "data-csv": data_csv,
    "tensorboard": tensorboard,
    "budget": budget,
}
# Keys of results saved before a case was renamed ("tta" meant time to accuracy, while
# everywhere else TTA is test-time augmentation) -> the key today
OLD_KEYS = {"tta": "time_to_accuracy"}


def key(module: ModuleType) -> str:
    return module.__name__.rpartition(".")[2]


BY_KEY = {key(m): m for m in CASES.values()}
