"""The server's life as an operator sees it: `fmnist serve`, stopped with SIGTERM as a process
manager does, still answers a connection it had accepted whose request came just after (its
default grace is not zero), and a supervisor whose worker came back after a failed start
forgets that failure, so crashes days apart never add up to giving up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from child_env import TESTS, child_env
from test_serve_deploy import ServeProcess, refused, until


@pytest.mark.slow
def test_fmnist_serve_by_default_answers_a_request_sent_just_after_sigterm(make_checkpoint):
    server = ServeProcess(make_checkpoint("mlp"), "--workers", "1")  # every default kept
    try:
        server.wait_ready()
        quiet = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        try:
            # answered on a later connection: the quiet one was accepted before it
            assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
            server.proc.send_signal(signal.SIGTERM)
            until(lambda: refused(server.port), "the port closed")
            quiet.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b"".join(iter(lambda: quiet.recv(65536), b""))  # to its Connection: close
        finally:
            quiet.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert server.proc.wait(60) == 0, server.log
    finally:
        server.stop()


SUPERVISE = textwrap.dedent("""
    import socket, sys
    import uvicorn
    from fmnist.serve.server import Supervisor
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config("serve_flaky_worker:app", factory=True, log_level="warning")
    Supervisor.STABLE_S = 0.5  # a worker serving this long has proved itself (a minute, in real life)
    Supervisor.BACKOFF_FIRST_S = 0.1  # 1 s in fmnist serve
    sys.exit(Supervisor(config, sock, 1, "serve_flaky_worker:app", give_up=3).run())
""")


@pytest.mark.slow
def test_a_worker_that_came_back_after_a_failed_start_has_its_failure_forgotten(tmp_path):
    plan = tmp_path / "plan"
    # a crash and a failed start, twice: three in a row if the serving between did not count
    plan.write_text("ok\nfail\nok\nfail\nok\n")
    env = child_env(TESTS, FLAKY_PLAN=str(plan))
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISE], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert proc.stdout is not None
        url = f"http://127.0.0.1:{int(proc.stdout.readline())}/"
        seen: list[int] = []

        def a_new_worker_answers() -> bool:
            assert proc.poll() is None, f"the supervisor gave up (exit {proc.returncode})"
            try:
                pid = int(httpx.get(url, timeout=5).text)
            except httpx.TransportError:
                return False
            if pid in seen:
                return False
            seen.append(pid)
            return True

        for _ in range(2):  # serving, then killed; its replacement fails once, then serves
            until(a_new_worker_answers, "a new worker answers", 60)
            time.sleep(1.0)  # serving longer than STABLE_S, as the supervisor sees it (0.2 s rounds)
            os.kill(seen[-1], signal.SIGKILL)
        until(a_new_worker_answers, "a new worker answers after the second failed start", 60)
        assert len(seen) == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
