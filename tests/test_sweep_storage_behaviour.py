"""Where a sweep's study lives: by default a SQLite file in the sweep folder that several
processes can share, else the database URL given with --storage; a bad URL, a missing driver or
an unreachable server is one sentence that never shows the password. Workers that start together
on an empty database collide creating Optuna's tables, and try again.

SQLite throughout; PostgreSQL only as far as no server is needed (a refused connection, the
driver's name). Two real workers on a real PostgreSQL server: test_sweep."""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
import warnings
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="the sweep extra is not installed")

import sqlalchemy.exc  # noqa: E402

from fmnist.errors import ConfigError  # noqa: E402
from fmnist.sweep import storage  # noqa: E402
from fmnist.sweep.storage import (  # noqa: E402
    default_url,
    hide_password,
    open_storage,
    with_driver,
)

INSTALL = ("pip install optuna psycopg2-binary (in the fmnist folder: pip install -e '.[sweep]', "
           "or make setup-full)")


def test_optuna_is_quiet_and_its_experimental_warnings_are_not_shown(monkeypatch):
    optuna.logging.set_verbosity(logging.INFO)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert storage.optuna() is optuna
        assert optuna.logging.get_verbosity() == logging.ERROR  # the sweep prints its own lines
        warnings.warn("experimental", optuna.exceptions.ExperimentalWarning, stacklevel=1)
        warnings.warn("other", UserWarning, stacklevel=1)
    assert [str(w.message) for w in said] == ["other"]


def test_without_optuna_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now fails
    with pytest.raises(ConfigError) as e:
        storage.optuna()
    assert str(e.value) == f"fmnist sweep needs Optuna, which is not installed: {INSTALL}."
    with pytest.raises(ConfigError, match="^fmnist sweep needs Optuna"):
        open_storage("sqlite:///x.db", 30)


def test_a_password_in_a_url_is_never_shown():
    assert hide_password("postgresql://ann:s3cr:et@db.lan:5432/sweeps") == (
        "postgresql://ann:***@db.lan:5432/sweeps")
    assert hide_password("postgresql://ann:@db.lan/sweeps") == "postgresql://ann:***@db.lan/sweeps"
    # a URL that lacks its scheme (the error then says it is none) keeps its password too
    assert hide_password("ann:secret@db.lan/sweeps") == "ann:***@db.lan/sweeps"
    for shown in ("postgresql://ann@db.lan:5432/sweeps", "postgresql://db.lan:5432/sweeps",
                  "sqlite:////tmp/s:1/study.db", "mysql://@db.lan/x", "study.db"):
        assert hide_password(shown) == shown


def test_the_default_study_is_a_sqlite_file_in_the_sweep_folder_by_its_full_path(tmp_path,
                                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_url(Path("out/sweep")) == f"sqlite:///{tmp_path}/out/sweep/study.db"


def test_postgresql_urls_name_the_driver_that_is_installed(monkeypatch):
    installed: set[str] = set()
    find_spec = importlib.util.find_spec

    def only(name, *args):
        if name in ("psycopg", "psycopg2"):
            return find_spec("json") if name in installed else None
        return find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", only)
    url = "postgresql://ann:pw@db.lan/sweeps"
    assert with_driver(url) == url  # none: SQLAlchemy's own error says what is missing
    installed.add("psycopg2")
    assert with_driver(url) == "postgresql+psycopg2://ann:pw@db.lan/sweeps"
    installed.add("psycopg")  # psycopg 3 first: what SQLAlchemy 2.1 means by postgresql://
    assert with_driver(url) == "postgresql+psycopg://ann:pw@db.lan/sweeps"
    for other in ("postgresql+psycopg2://db.lan/s", "sqlite:///s.db", "mysql://db.lan/s"):
        assert with_driver(other) == other


def test_a_sqlite_study_beats_every_few_seconds_and_waits_for_a_busy_file(tmp_path):
    store = open_storage(f"sqlite:///{tmp_path / 'study.db'}", 7)
    assert (tmp_path / "study.db").exists()
    assert store.get_heartbeat_interval() == 7
    assert store.grace_period == 14  # stale after two missed beats
    with store.engine.connect() as connection:  # another process's write waits up to a minute
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60_000
    assert store.engine.pool._pre_ping  # a dropped connection is replaced, not an error


def test_a_trial_whose_worker_stopped_beating_is_retried_three_times(tmp_path):
    store = open_storage(f"sqlite:///{tmp_path / 'study.db'}", 30)
    study = optuna.create_study(storage=store, study_name="s")
    retry = store.get_heartbeat_stale_trial_callback()
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, value=None))
    for _ in range(4):  # each retry stale in turn
        retry(study, study.get_trials()[-1])
    assert len(study.get_trials()) == 4  # the trial and three retries, not a fourth
    assert [t.system_attrs["failed_trial"] for t in study.get_trials()[1:]] == [0, 0, 0]


def test_a_text_that_is_no_url_is_one_sentence():
    with pytest.raises(ConfigError) as e:
        open_storage("ann:secret@db.lan/sweeps", 30)
    assert str(e.value) == (
        "Storage 'ann:***@db.lan/sweeps' is not a database URL: use e.g. "
        "postgresql://user:password@host/db (or leave --storage out for a SQLite file in the "
        "sweep folder).")


def test_a_database_that_cannot_be_opened_is_one_sentence_without_the_password():
    with pytest.raises(ConfigError) as e:
        open_storage("nosuchdb://ann:secret@db.lan/x", 30)
    assert str(e.value) == ("Cannot open the study storage nosuchdb://ann:***@db.lan/x: Can't load "
                            "plugin: sqlalchemy.dialects:nosuchdb.")
    with pytest.raises(ConfigError) as e:  # nothing listens on port 1: refused at once
        open_storage("postgresql://ann:secret@127.0.0.1:1/sweeps", 30)
    said = str(e.value)
    assert said.startswith("Cannot open the study storage postgresql://ann:***@127.0.0.1:1/sweeps: "
                           "connection to server at \"127.0.0.1\", port 1 failed: ")
    assert said.endswith("Connection refused.") and "\n" not in said and "secret" not in said
    with pytest.raises(ConfigError) as e:
        open_storage("mysql://ann:secret@db.lan/sweeps", 30)  # its driver is not installed
    assert str(e.value) == ("No database driver for storage mysql://ann:***@db.lan/sweeps: for "
                            f"PostgreSQL, {INSTALL} installs psycopg2.")


class Server:
    """A database that answers as told: Optuna's RDBStorage, the call it is made with noted."""

    def __init__(self, monkeypatch, *answers: BaseException):
        self.answers = list(answers)
        self.calls: list[tuple] = []
        self.slept: list[float] = []
        monkeypatch.setattr(optuna.storages, "RDBStorage", self.storage)
        monkeypatch.setattr(time, "sleep", self.slept.append)

    def storage(self, url, **kwargs):
        self.calls.append((url, kwargs))
        if self.answers:
            raise self.answers.pop(0)
        return "the storage"


def collision(kind=sqlalchemy.exc.IntegrityError):
    return kind("CREATE TYPE", {}, Exception('duplicate key value violates "pg_type"'))


def test_workers_that_collide_creating_the_tables_try_again_four_times(monkeypatch):
    server = Server(monkeypatch, collision(), collision(sqlalchemy.exc.ProgrammingError))
    assert open_storage("sqlite:///s.db", 30) == "the storage"
    assert len(server.calls) == 3 and server.slept == pytest.approx([0.2, 0.4])
    server = Server(monkeypatch, *[collision() for _ in range(5)])
    with pytest.raises(ConfigError) as e:
        open_storage("postgresql://ann:secret@db.lan/sweeps", 30)
    assert str(e.value) == ("Cannot open the study storage postgresql://ann:***@db.lan/sweeps: "
                            'duplicate key value violates "pg_type".')
    assert len(server.calls) == 5 and server.slept == pytest.approx([0.2, 0.4, 0.6, 0.8])


def test_postgresql_gives_up_on_a_silent_server_after_10_s_and_beats_as_asked(monkeypatch):
    server = Server(monkeypatch)
    open_storage("postgresql://ann:secret@db.lan/sweeps", 20)
    ((url, kwargs),) = server.calls
    assert url.startswith("postgresql+psycopg") and url.endswith("://ann:secret@db.lan/sweeps")
    assert kwargs["engine_kwargs"] == {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    assert kwargs["heartbeat_interval"] == 20 and kwargs["grace_period"] == 40
    open_storage("mysql://db.lan/sweeps", 20)  # any other database: its driver's own timeouts
    assert server.calls[1][1]["engine_kwargs"] == {"pool_pre_ping": True}


def test_an_error_is_its_first_line_without_the_drivers_prefix_or_the_password(monkeypatch):
    Server(monkeypatch, RuntimeError("(psycopg2.OperationalError) postgresql://ann:secret@db.lan"
                                     "/sweeps: no route to host BOX.\nDETAIL: more"))
    with pytest.raises(ConfigError) as e:
        open_storage("postgresql://ann:secret@db.lan/sweeps", 30)
    assert str(e.value) == ("Cannot open the study storage postgresql://ann:***@db.lan/sweeps: "
                            "postgresql://ann:***@db.lan/sweeps: no route to host BOX.")
    Server(monkeypatch, RuntimeError("  "))
    with pytest.raises(ConfigError) as e:
        open_storage("sqlite:///s.db", 30)
    assert str(e.value) == "Cannot open the study storage sqlite:///s.db: RuntimeError."
