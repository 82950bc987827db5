"""Where a study lives: a SQLite file in the sweep folder (no server: one machine, one or more
processes), or any database URL Optuna's RDB storage takes (`postgresql://user@host/db`: several
machines share one study; Optuna hands out the trial numbers, nothing of ours coordinates).

Both are Optuna's RDB storage with heartbeats: a trial whose process stops beating (killed,
machine lost) is marked failed by the next worker to start a trial, and a copy of it, with the
same settings, is queued to take its place.
"""

from __future__ import annotations

import importlib.util
import re
import time
import warnings
from pathlib import Path
from typing import Any

from fmnist.errors import ConfigError

INSTALL = "pip install optuna psycopg2-binary (in the fmnist folder: pip install -e '.[sweep]', or make setup-full)"
DB_FILE = "study.db"


def optuna() -> Any:
    """The optuna module, or one sentence saying how to install it."""
    try:
        import optuna as module
    except ImportError as e:
        raise ConfigError(f"fmnist sweep needs Optuna, which is not installed: {INSTALL}.") from e
    module.logging.set_verbosity(module.logging.ERROR)  # we print our own progress and failures
    warnings.filterwarnings("ignore", category=module.exceptions.ExperimentalWarning)
    return module


def hide_password(url: str) -> str:
    """`url` with its password as ***; also in `user:password@host/db`, a URL without its scheme."""
    return re.sub(r"((?:^|://)[^:/@]*):[^@/]*@", r"\1:***@", url)


def default_url(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / DB_FILE).resolve()}"


def with_driver(url: str) -> str:
    """`postgresql://` with the driver that is installed: SQLAlchemy 2.1 takes it to mean
    psycopg 3, 2.0 psycopg2; the `sweep` extra installs psycopg2."""
    if not url.startswith("postgresql://"):
        return url
    for module, scheme in (("psycopg", "postgresql+psycopg://"), ("psycopg2", "postgresql+psycopg2://")):
        if importlib.util.find_spec(module) is not None:
            return scheme + url.removeprefix("postgresql://")
    return url


def open_storage(url: str, heartbeat: int) -> Any:
    """Optuna's RDB storage at `url` with heartbeats every `heartbeat` seconds (stale after
    two missed); ConfigError for a URL that is malformed, unknown or unreachable."""
    op = optuna()
    shown = hide_password(url)
    if "://" not in url:
        raise ConfigError(f"Storage {shown!r} is not a database URL: use e.g. "
                          "postgresql://user:password@host/db (or leave --storage out for a "
                          "SQLite file in the sweep folder).")
    url = with_driver(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}  # several processes may share the file
    elif url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 10}
    import sqlalchemy.exc

    try:
        for attempt in range(5):
            try:
                return op.storages.RDBStorage(
                    url, engine_kwargs=kwargs, heartbeat_interval=heartbeat,
                    grace_period=2 * heartbeat,
                    heartbeat_stale_trial_callback=op.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=3),
                )
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                # Workers started together on an empty database all create Optuna's tables;
                # all but one collide (seen on PostgreSQL: duplicate pg_type). Then they exist.
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")
    except ImportError as e:
        raise ConfigError(f"No database driver for storage {shown}: for PostgreSQL, "
                          f"{INSTALL} installs psycopg2.") from e
    except Exception as e:  # sqlalchemy's: unknown scheme, refused connection, bad password ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        reason = re.sub(r"^\(.*?\)\s*", "", reason).rstrip(".")
        raise ConfigError(f"Cannot open the study storage {shown}: {hide_password(reason)}.") from e
