"""`fmnist sweep`: which settings are best for your data in the time you have, on Optuna.

    space    what is sampled: a default per model, or a TOML space file
    storage  where the study lives: SQLite in the sweep folder, or a shared database URL
    study    the trials (each a `fit` on a validation split), pruning, the final run
    report   the trials table, the best settings, Optuna's plots, progress lines

Optuna (and psycopg2 for PostgreSQL) is the optional extra `sweep`; nothing here imports it
until a sweep starts.
"""

from fmnist.sweep.space import Param, Space, default_space, parse_space, read_space
from fmnist.sweep.study import SweepResult, sweep, trial_data

__all__ = ["Param", "Space", "SweepResult", "default_space", "parse_space", "read_space", "sweep",
           "trial_data"]
