"""`fmnist sweep`: which settings are best for your data in the time you have, on Optuna.

    space    what is sampled: a default per model, or a TOML space file
    storage  where the study lives: SQLite in the sweep folder, or a shared database URL
    measures what is maximised: accuracy, or a Pareto front with latency or parameters
    trial    one trial: a `fit` on a validation split, scored at matched points, continued
             after a stop
    final    the final run, claimed in the study so that one worker trains it
    study    the loop: starting trials, stopping on a signal or the budget
    report   the trials table, the best settings, Optuna's plots, progress lines

Optuna (and psycopg2 for PostgreSQL) is the optional extra `sweep`; nothing here imports it
until a sweep starts.
"""

from fmnist.sweep.space import Param, Space, default_space, parse_space, read_space
from fmnist.sweep.study import SweepResult, SweepStopped, sweep, trial_data

__all__ = ["Param", "Space", "SweepResult", "SweepStopped", "default_space", "parse_space",
           "read_space", "sweep", "trial_data"]
