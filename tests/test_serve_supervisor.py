"""The supervisor against workers that fail after they listen: crashes are restarted with a
back-off and end in giving up; a worker whose event loop is stuck is replaced."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from child_env import child_env
from test_serve_deploy import until

TESTS = Path(__file__).parent

SUPERVISE = """
import sys, uvicorn
sys.path.insert(0, {tests!r})
from fmnist.cli.serve import bind_worker_socket
from fmnist.serve.server import Supervisor
sock = bind_worker_socket("127.0.0.1", 0)
print("port", sock.getsockname()[1], flush=True)
config = uvicorn.Config({app!r}, factory=True, host="127.0.0.1", port=0, log_level="info")
Supervisor.BACKOFF_FIRST_S = 0.1  # 1 s in fmnist serve: the doubling is what is tested
sys.exit(Supervisor(config, sock, 1, {app!r}, give_up=3, watchdog_s={watchdog}).run())
"""


class Supervised:
    def __init__(self, app: str, watchdog: float = 10.0) -> None:
        code = SUPERVISE.format(tests=str(TESTS), app=f"serve_faulty_apps:{app}", watchdog=watchdog)
        env = child_env()
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline().split()[1])
        self.lines: list[str] = []
        self.timed: list[tuple[float, str]] = []  # (when it was read, the line)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.timed.append((time.monotonic(), line))
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def test_a_worker_that_crashes_after_listening_is_restarted_with_a_back_off_then_given_up() -> None:
    supervised = Supervised("crash_after_listen")
    try:
        assert supervised.proc.wait(120) == 1, supervised.log
    finally:
        supervised.stop()
    log = supervised.log
    delays = [float(d) for d in re.findall(r"after it listened \(\d failed start\(s\) in a row\): starting another in (\S+) s", log)]
    assert delays == [0.1, 0.2, 0.4], log  # not at once, and longer each time
    assert "No worker starts (each failed 3 times in a row" in log
    assert log.count("Application startup complete") == 3  # three starts, then no more
    # and the back-off is real: each restart was launched that long after the crash before it
    crashes = [t for t, line in supervised.timed if "after it listened" in line]
    starts = [t for t, line in supervised.timed if "Started worker" in line]
    assert len(starts) == 3, log
    assert starts[1] - crashes[0] >= 0.09 and starts[2] - crashes[1] >= 0.19, (starts, crashes)


def test_a_worker_whose_event_loop_is_stuck_is_replaced() -> None:
    supervised = Supervised("stuck_loop", watchdog=1.0)
    url = f"http://127.0.0.1:{supervised.port}"
    try:
        until(lambda: _pid(url) is not None, "the worker answers", 120)
        first = _pid(url)
        with contextlib.suppress(httpx.TimeoutException):
            httpx.get(url + "/stick", timeout=0.5)
        until(lambda: "its event loop is stuck" in supervised.log, "the watchdog noticed", 30)
        until(lambda: _pid(url) not in (None, first), "a new worker answers", 120)
        assert supervised.proc.poll() is None
    finally:
        supervised.stop()


def _pid(url: str) -> int | None:
    try:
        r = httpx.get(url + "/pid", timeout=2)
    except httpx.TransportError:
        return None
    return int(r.text) if r.status_code == 200 else None
