"""Stopping a run gracefully: SIGTERM (Slurm, Kubernetes, `docker stop`, systemd, spot VMs),
SIGINT (Ctrl-C) and SIGHUP become a request that the loop answers after its current step, by
saving the state of that step and ending as an interrupted run; one that comes after the last
step lets the run finish its bookkeeping, then ends it the same way. A second Ctrl-C does not
wait.

The same check saves the state every `checkpoint_every` seconds without stopping, so even a
kill -9 loses at most that much.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """The run stopped on a signal; `signum` says which. `finished`: the signal came after the
    run's last step, so the run finished its bookkeeping (its folder says finished) first;
    otherwise the state of its last step is saved and the run can be continued. The message is
    the sentence that says where it stopped; the caller adds how to go on."""

    def __init__(self, signum: int, where: str = "", finished: bool = False,
                 resume_from: Path | None = None) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"Stopped by {name}" + (f": {where}" if where else ""))
        self.signum, self.finished = signum, finished
        self.resume_from = resume_from  # the folder to continue, where one was saved


class EndRun(Exception):
    """Raised by a callback to end the run on purpose (a sweep's pruner): status.json then says
    `status` (e.g. "pruned") with the reason, rather than failed."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Stops:
    """While entered (in the main thread), the signals above set `signum` instead of ending the
    process; `due()` says whether the loop should save now."""

    def __init__(self, checkpoint_every: float | None = None, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.checkpoint_every = checkpoint_every
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.clock = clock
        self.signum: int | None = None
        self.last_save = clock()
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> Stops:
        if self.enabled:
            for s in SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, at the last saved epoch
        self.signum = signum

    def due(self) -> bool:
        """A stop was asked for, or a timed checkpoint is due."""
        if self.signum is not None:
            return True
        every = self.checkpoint_every
        return every is not None and self.clock() - self.last_save >= every

    def restart_timer(self) -> None:
        """A save was made: the next timed one is `checkpoint_every` from now."""
        self.last_save = self.clock()

    def raise_if_asked(self) -> None:
        """Raise Interrupted if a signal came (the loop's caller adds where the run stopped)."""
        if self.signum is not None:
            raise Interrupted(self.signum)
