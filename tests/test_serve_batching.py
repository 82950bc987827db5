"""Dynamic batching across requests, overload and slow clients, lean responses, and the
onnxruntime backend: the batcher on its own, then through the app. No timing assertions: passes
are counted, and forward passes are held open with events to make requests meet."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_serve import Spy, png, wait_ready

from fmnist.cli import main as cli_main
from fmnist.cli.serve import MAX_AUTO_WORKERS, workers_and_threads
from fmnist.errors import CheckpointError, ConfigError
from fmnist.images import open_image, preprocess
from fmnist.predict import Predictor
from fmnist.serve import create_app
from fmnist.serve.batching import Batcher, BatcherClosed, BatcherDied
from fmnist.serve.engine import Batching

# ---- the batcher on its own ------------------------------------------------------------------


class Forward:
    """A forward pass that returns each image's id (its first pixel) and can be held open."""

    def __init__(self) -> None:
        self.passes: list[list[int]] = []
        self.entered = threading.Event()
        self.hold: threading.Event | None = None
        self.fail_next = False

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.passes.append([int(i) for i in images[:, 0]])
        self.entered.set()
        if self.hold is not None:
            assert self.hold.wait(10), "test never released the pass"
            self.hold = None
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("simulated failure in the forward pass")
        return images[:, :1].astype(np.float32) * 10


class RaisesOnTheFirstError(logging.Filter):
    """A logging filter with a bug, as an operator might install: it raises on the first record
    that carries an exception (the batcher's log of a failed pass), and so in the batcher's
    loop itself, outside any pass."""

    def __init__(self) -> None:
        super().__init__()
        self.tripped = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not self.tripped:
            self.tripped = True
            raise RuntimeError("simulated bug in a logging filter")
        return True


def ids(*values: int) -> np.ndarray:
    return np.array([[v, 0] for v in values], dtype=np.int64)


@pytest.fixture
def forward() -> Forward:
    return Forward()


def test_requests_that_arrive_together_share_one_pass_and_get_their_own_rows(forward: Forward) -> None:
    # a long window that the batch size cuts short: the pass starts once 6 images wait
    batcher = Batcher(forward, max_images=6, window_s=60)
    try:
        futures = [batcher.submit(ids(1, 2)), batcher.submit(ids(3)), batcher.submit(ids(4, 5, 6))]
        rows = [f.result(timeout=10) for f in futures]
    finally:
        batcher.close()
    assert forward.passes == [[1, 2, 3, 4, 5, 6]]
    assert [r.rows[:, 0].tolist() for r in rows] == [[10, 20], [30], [40, 50, 60]]
    assert all(r.pass_images == 6 for r in rows)
    assert (batcher.passes, dict(batcher.batch_sizes)) == (1, {6: 1})


def test_a_lone_request_does_not_wait_for_company_past_the_window(forward: Forward) -> None:
    batcher = Batcher(forward, max_images=64, window_s=0)
    try:
        assert batcher.submit(ids(7)).result(timeout=10).rows[:, 0].tolist() == [70]
    finally:
        batcher.close()
    assert forward.passes == [[7]]


def test_requests_queued_during_a_pass_go_together_into_the_next(forward: Forward) -> None:
    forward.hold = threading.Event()
    batcher = Batcher(forward, max_images=64, window_s=0)
    try:
        first = batcher.submit(ids(1))
        assert forward.entered.wait(10)
        later = [batcher.submit(ids(v)) for v in (2, 3, 4)]
        forward.hold.set()
        assert [f.result(timeout=10).rows[0, 0] for f in [first, *later]] == [10, 20, 30, 40]
    finally:
        batcher.close()
    assert forward.passes == [[1], [2, 3, 4]]


def test_a_pass_never_splits_a_request_and_a_large_one_runs_alone(forward: Forward) -> None:
    forward.hold = threading.Event()
    batcher = Batcher(forward, max_images=4, window_s=0)
    try:
        blocker = batcher.submit(ids(0))
        assert forward.entered.wait(10)
        futures = [batcher.submit(ids(1, 2, 3)), batcher.submit(ids(4, 5)), batcher.submit(ids(6, 7, 8, 9, 10))]
        forward.hold.set()
        for f in [blocker, *futures]:
            f.result(timeout=10)
    finally:
        batcher.close()
    assert forward.passes == [[0], [1, 2, 3], [4, 5], [6, 7, 8, 9, 10]]


def test_a_failing_pass_fails_its_requests_and_the_next_pass_works(
    forward: Forward, caplog: pytest.LogCaptureFixture
) -> None:
    forward.hold = threading.Event()
    forward.fail_next = True
    batcher = Batcher(forward, max_images=64, window_s=0)
    try:
        doomed = batcher.submit(ids(1))
        assert forward.entered.wait(10)
        forward.hold.set()
        with pytest.raises(RuntimeError, match="simulated failure"):
            doomed.result(timeout=10)
        forward.fail_next = True  # and once more
        with pytest.raises(RuntimeError, match="simulated failure"):
            batcher.submit(ids(2)).result(timeout=10)
        assert batcher.submit(ids(3)).result(timeout=10).rows[0, 0] == 30
    finally:
        batcher.close()
    assert batcher.failed_passes == 2 and batcher.alive
    # the operator's log: each failure, with its traceback
    failures = [r for r in caplog.records if r.name == "fmnist.serve"]
    assert [(r.levelname, r.getMessage()) for r in failures] == [
        ("ERROR", "A forward pass of 1 request(s) failed")] * 2  # fmt: skip
    assert all(r.exc_info and "simulated failure" in str(r.exc_info[1]) for r in failures)


def test_a_cancelled_request_is_left_out_of_the_pass(forward: Forward) -> None:
    forward.hold = threading.Event()
    batcher = Batcher(forward, max_images=64, window_s=0)
    try:
        blocker = batcher.submit(ids(1))
        assert forward.entered.wait(10)
        gone, kept = batcher.submit(ids(2)), batcher.submit(ids(3))
        assert gone.cancel()
        forward.hold.set()
        assert kept.result(timeout=10).rows[0, 0] == 30 and blocker.result(timeout=10)
        with pytest.raises(CancelledError):
            gone.result()
    finally:
        batcher.close()
    assert forward.passes == [[1], [3]]


def started_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """The threads alive now that were not in `before`."""
    return [t for t in threading.enumerate() if t not in before]


def test_close_answers_what_is_queued_then_refuses_and_stops(forward: Forward) -> None:
    before = set(threading.enumerate())
    batcher = Batcher(forward, max_images=64, window_s=3600)
    assert len(started_threads(before)) == 1  # the batcher's own thread
    queued = [batcher.submit(ids(1)), batcher.submit(ids(2))]  # waiting out a long window
    batcher.close()  # closing cuts the window short: they are answered, then the thread ends
    assert started_threads(before) == []
    assert [f.result(timeout=0).rows[0, 0] for f in queued] == [10, 20]
    assert forward.passes == [[1, 2]]
    with pytest.raises(BatcherClosed, match=r"^The server is shutting down\.$"):
        batcher.submit(ids(3))


def test_prepare_and_finish_run_per_request_and_fail_only_their_own(forward: Forward) -> None:
    def prepare(payload: str) -> np.ndarray:
        if payload == "bad":
            raise ValueError("cannot decode 'bad'")
        return ids(*(int(c) for c in payload))

    def finish(payload: str, shared: Any) -> str:
        if payload == "9":
            raise KeyError("cannot answer '9'")
        return f"{payload}:{shared.rows[:, 0].tolist()}:{shared.images[:, 0].tolist()}:{shared.pass_images}"

    batcher = Batcher(forward, prepare=prepare, finish=finish, max_images=9, window_s=60)
    try:
        futures = [batcher.submit(p, count=len(p)) for p in ("12", "bad", "3", "9", "45")]
        assert futures[0].result(timeout=10) == "12:[10.0, 20.0]:[1, 2]:6"
        assert futures[2].result(timeout=10) == "3:[30.0]:[3]:6"
        assert futures[4].result(timeout=10) == "45:[40.0, 50.0]:[4, 5]:6"
        with pytest.raises(ValueError, match="decode 'bad'"):
            futures[1].result(timeout=10)
        with pytest.raises(KeyError, match="answer '9'"):
            futures[3].result(timeout=10)
    finally:
        batcher.close()
    # all 9 counted images filled the window; the bad request was left out of the pass
    assert forward.passes == [[1, 2, 3, 9, 4, 5]]


def setting_when_prepared(event: threading.Event, first_id: int | None = None):
    """A `prepare` that passes payloads through and sets `event` once it has prepared one (the
    one whose first id is `first_id`, when given)."""

    def prepare(payload: np.ndarray) -> np.ndarray:
        if first_id is None or int(payload[0, 0]) == first_id:
            event.set()
        return payload

    return prepare


def test_requests_are_prepared_while_the_window_is_open(forward: Forward) -> None:
    prepared = threading.Event()
    prepare = setting_when_prepared(prepared)
    batcher = Batcher(forward, prepare=prepare, max_images=2, window_s=3600)
    try:
        first = batcher.submit(ids(1))
        # decoded now, an hour before its pass: the window is spent working, not only waiting
        assert prepared.wait(10) and forward.passes == []
        second = batcher.submit(ids(2))  # fills the pass: it runs at once
        assert [first.result(timeout=10).rows[0, 0], second.result(timeout=10).rows[0, 0]] == [10, 20]
    finally:
        batcher.close()


def test_a_pass_says_how_long_it_took_and_every_pass_is_counted_by_its_size(forward: Forward) -> None:
    batcher = Batcher(forward, max_images=64, window_s=0)
    try:
        t0 = time.perf_counter()
        first = batcher.submit(ids(1)).result(timeout=10)
        elapsed = time.perf_counter() - t0
        batcher.submit(ids(2)).result(timeout=10)
        batcher.submit(ids(3, 4)).result(timeout=10)
    finally:
        batcher.close()
    assert 0 <= first.forward_s <= elapsed  # the pass, within the wait for its answer
    assert (batcher.passes, dict(batcher.batch_sizes)) == (3, {1: 2, 2: 1})


def test_requests_cancelled_while_a_pass_runs_are_all_dropped_and_counted(forward: Forward) -> None:
    """Clients that hung up while the pass before theirs ran: none is computed, each is counted
    (/v1/stats' `dropped`), and a request queued behind them is still prepared while its window
    is open."""
    prepared = threading.Event()
    prepare = setting_when_prepared(prepared, first_id=4)
    forward.hold = threading.Event()
    batcher = Batcher(forward, prepare=prepare, max_images=4, window_s=3600)
    try:
        blocker = batcher.submit(ids(1, 9, 9, 9))  # a full pass: it runs at once, held
        assert forward.entered.wait(10)
        gone = [batcher.submit(ids(2)), batcher.submit(ids(3))]
        kept = batcher.submit(ids(4))
        assert all(f.cancel() for f in gone)
        forward.hold.set()
        assert blocker.result(timeout=10)
        # behind the two dropped ones, in a window of an hour: decoded now, not at its pass
        assert prepared.wait(10) and forward.passes == [[1, 9, 9, 9]]
        filler = batcher.submit(ids(5))  # the queue counts 4 images: the pass runs
        assert kept.result(timeout=10).rows[0, 0] == 40 and filler.result(timeout=10)
    finally:
        batcher.close()
    assert batcher.dropped == 2 and forward.passes == [[1, 9, 9, 9], [4, 5]]


def test_a_request_that_comes_within_a_window_of_under_a_second_shares_the_pass(forward: Forward) -> None:
    prepared = threading.Event()
    prepare = setting_when_prepared(prepared)
    batcher = Batcher(forward, prepare=prepare, max_images=64, window_s=0.9)
    try:
        first = batcher.submit(ids(1))
        assert prepared.wait(10)  # the first is in its window
        second = batcher.submit(ids(2))
        assert first.result(timeout=10) and second.result(timeout=10)
    finally:
        batcher.close()
    assert forward.passes == [[1, 2]]


def test_requests_queued_behind_a_pass_fill_the_next_ones_up_to_max_images(forward: Forward) -> None:
    forward.hold = threading.Event()
    batcher = Batcher(forward, max_images=3, window_s=0)
    try:
        blocker = batcher.submit(ids(1))
        assert forward.entered.wait(10)
        queued = [batcher.submit(ids(2, 2)), batcher.submit(ids(3)), batcher.submit(ids(4))]
        forward.hold.set()
        assert blocker.result(timeout=10) and all(f.result(timeout=10) for f in queued)
    finally:
        batcher.close()
    assert forward.passes == [[1], [2, 2, 3], [4]]


def test_a_request_whose_client_hangs_up_while_it_is_decoded_is_dropped_not_computed(forward: Forward) -> None:
    class Upload:
        def __init__(self) -> None:
            self.future: Any = None
            self.submitted = threading.Event()

    def prepare(upload: Upload) -> np.ndarray:  # the client hangs up in the middle
        assert upload.submitted.wait(10)
        upload.future.cancel()
        return ids(1)

    batcher = Batcher(forward, prepare=prepare, max_images=64, window_s=0)
    try:
        upload = Upload()
        upload.future = batcher.submit(upload, count=1)
        upload.submitted.set()
        with pytest.raises(CancelledError):
            upload.future.result(timeout=10)
    finally:
        batcher.close()
    assert batcher.dropped == 1 and forward.passes == []


def test_close_gives_up_waiting_for_a_pass_that_does_not_end(forward: Forward) -> None:
    """A server shutting down is not held for ever by a stuck forward pass: close() waits its
    timeout, then returns (the pass goes on, in its daemon thread)."""
    forward.hold = threading.Event()
    batcher = Batcher(forward, max_images=64, window_s=0)
    stuck = batcher.submit(ids(1))
    assert forward.entered.wait(10)
    closed = threading.Event()
    threading.Thread(target=lambda: (batcher.close(timeout=0.1), closed.set()), daemon=True).start()
    try:
        assert closed.wait(5), "close() waited for the stuck pass"
        assert not stuck.done()
    finally:
        forward.hold.set()
    assert stuck.result(timeout=10).rows[0, 0] == 10


def test_bad_settings_are_refused(forward: Forward) -> None:
    words = r"^max_images must be >= 1 and window_s >= 0$"
    with pytest.raises(ValueError, match=words):
        Batcher(forward, max_images=0)
    with pytest.raises(ValueError, match=words):
        Batcher(forward, window_s=-1)
    one = Batcher(forward, max_images=1, window_s=0)  # the least: a pass per image
    try:
        assert one.submit(ids(1)).result(timeout=10).rows[0, 0] == 10
    finally:
        one.close()


def test_a_batcher_that_dies_fails_the_pass_under_way_and_everything_queued(
    forward: Forward, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in the loop itself (here a logging filter that raises while the batcher logs a
    failed pass): every request it holds gets BatcherDied, new ones are refused, the thread says
    why in the log, and `alive` turns False (the server's /readyz then says failed)."""
    forward.hold = threading.Event()
    broken = RaisesOnTheFirstError()
    logger = logging.getLogger("fmnist.serve")
    logger.addFilter(broken)
    batcher = Batcher(forward, max_images=1, window_s=0)
    try:
        running = batcher.submit(ids(1))
        assert forward.entered.wait(10)
        queued = [batcher.submit(ids(2)), batcher.submit(ids(3))]
        forward.fail_next = True
        forward.hold.set()
        for future in [running, *queued]:
            with pytest.raises(BatcherDied, match=r"^The batcher has stopped on an error\.$"):
                future.result(timeout=10)
        with pytest.raises(BatcherDied, match=r"^The batcher has stopped on an error\.$"):
            batcher.submit(ids(4))
    finally:
        logger.removeFilter(broken)
        batcher.close()
    assert broken.tripped and not batcher.alive and forward.passes == [[1]]
    died = [r for r in caplog.records if r.levelname == "CRITICAL"]
    assert [r.getMessage() for r in died] == ["The batcher's thread died: no prediction will be answered"]
    assert died[0].exc_info and "simulated bug in a logging filter" in str(died[0].exc_info[1])


def test_a_program_that_never_closes_its_batcher_still_exits(forward: Forward) -> None:
    before = set(threading.enumerate())
    here = Batcher(forward)  # in this process too: its thread, named for thread dumps
    try:
        assert [t.name for t in started_threads(before)] == ["fmnist-batcher"]
    finally:
        here.close()
    program = ("import threading\n"
               "from fmnist.serve.batching import Batcher\n"
               "Batcher(lambda images: images)\n"
               "print(sorted(t.name for t in threading.enumerate()))\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['MainThread', 'fmnist-batcher']"  # named for thread dumps


# ---- through the app -------------------------------------------------------------------------


@pytest.fixture
def predictor(make_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(make_checkpoint("mlp"))


def post_async(client: TestClient, results: dict[str, Any], key: str, data: bytes, path: str = "/v1/predict") -> threading.Thread:
    worker = threading.Thread(target=lambda: results.update(
        {key: client.post(path, content=data, headers={"Content-Type": "image/png"})}))  # fmt: skip
    worker.start()
    return worker


def until(condition, what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"never happened: {what}")


def test_concurrent_requests_share_a_forward_pass_each_with_its_own_answer(predictor: Predictor) -> None:
    spy = Spy(predictor)
    spy.release = threading.Event()
    app = create_app(spy, batching=Batching(window_ms=0))  # type: ignore[arg-type]
    images = {f"r{i}": png(30 + 4 * i, 50 - 3 * i, seed=i) for i in range(4)}
    results: dict[str, Any] = {}
    with TestClient(app) as client:
        wait_ready(client)
        spy.started.clear()
        spy.calls.clear()
        workers = [post_async(client, results, "r0", images["r0"])]
        assert spy.started.wait(10)  # r0's pass is running (held open)...
        workers += [post_async(client, results, k, images[k]) for k in ("r1", "r2", "r3")]
        until(lambda: app.state.engine.batcher.pending == 3, "three requests queued")
        spy.release.set()  # ... and the three that queued meanwhile share the next one
        for w in workers:
            w.join(10)
        stats = client.get("/v1/stats").json()
    assert spy.calls == [(1, 28, 28), (3, 28, 28)]
    assert stats["forward_passes"] == 2 and stats["pass_sizes"] == {"1": 1, "3": 1}
    for key, data in images.items():
        body = results[key].json()
        assert results[key].status_code == 200 and body["pass_images"] == (1 if key == "r0" else 3)
        want = predictor.predict_arrays(preprocess(open_image(data))[None])[0]
        got = body["predictions"][0]["probabilities"]
        assert [got[c] for c in predictor.classes] == pytest.approx(want, abs=1e-5), key


def test_a_bad_image_fails_only_its_own_request(predictor: Predictor) -> None:
    spy = Spy(predictor)
    spy.release = threading.Event()
    app = create_app(spy, batching=Batching(window_ms=0))  # type: ignore[arg-type]
    results: dict[str, Any] = {}
    with TestClient(app) as client:
        wait_ready(client)
        spy.started.clear()
        spy.calls.clear()
        workers = [post_async(client, results, "first", png(seed=1))]
        assert spy.started.wait(10)
        workers += [post_async(client, results, k, data) for k, data in
                    (("good1", png(seed=2)), ("bad", png(seed=4)[:60]), ("good2", png(seed=3)))]  # fmt: skip
        # the bad one (a small PNG, cut short) queues with the others: the batcher's thread
        # decodes it (and fails it) with the pass it would have joined
        until(lambda: app.state.engine.batcher.pending == 3, "three requests queued")
        spy.release.set()
        for w in workers:
            w.join(10)
    assert results["bad"].status_code == 422 and "truncated" in results["bad"].json()["error"]
    assert [results[k].status_code for k in ("first", "good1", "good2")] == [200, 200, 200]
    assert spy.calls == [(1, 28, 28), (2, 28, 28)]
    assert results["good2"].json()["pass_images"] == 2


def test_without_batching_every_request_is_its_own_pass(predictor: Predictor) -> None:
    spy = Spy(predictor)
    app = create_app(spy, batching=Batching(enabled=False))  # type: ignore[arg-type]
    with TestClient(app) as client:
        wait_ready(client)
        spy.calls.clear()
        for seed in range(3):
            r = client.post("/v1/predict", content=png(seed=seed), headers={"Content-Type": "image/png"})
            assert r.status_code == 200 and r.json()["pass_images"] == 1
        stats = client.get("/v1/stats").json()
    assert spy.calls == [(1, 28, 28)] * 3 and stats["batching"] is False
    assert app.state.engine.batcher is None


def test_past_the_queue_bound_a_request_gets_503_with_retry_after(predictor: Predictor) -> None:
    spy = Spy(predictor)
    spy.release = threading.Event()
    app = create_app(spy, max_queue=2)  # type: ignore[arg-type]
    results: dict[str, Any] = {}
    with TestClient(app) as client:
        wait_ready(client)
        spy.started.clear()
        workers = [post_async(client, results, "a", png(seed=1))]
        assert spy.started.wait(10)
        workers.append(post_async(client, results, "b", png(seed=2)))
        until(lambda: app.state.engine.in_flight == 2, "two requests in flight")
        refused = client.post("/v1/predict", content=png(seed=3), headers={"Content-Type": "image/png"})
        assert client.get("/healthz").status_code == 200  # the rest of the server answers
        spy.release.set()
        for w in workers:
            w.join(10)
        after = client.post("/v1/predict", content=png(seed=3), headers={"Content-Type": "image/png"})
        stats = client.get("/v1/stats").json()
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.headers["connection"] == "close"  # a client that retries at once reconnects
    assert "busy" in refused.json()["error"]
    assert results["a"].status_code == results["b"].status_code == after.status_code == 200
    assert stats["refused"] == 1 and stats["in_flight"] == 0


def test_a_slow_upload_gets_408_instead_of_holding_its_slot(predictor: Predictor) -> None:
    app = create_app(predictor, request_timeout_s=0.2)
    sent: list[dict] = []
    stalled = asyncio.Event()

    async def receive() -> dict:
        if not stalled.is_set():
            stalled.set()
            return {"type": "http.request", "body": b"\x89PNG", "more_body": True}
        await asyncio.sleep(3600)  # the rest of the body never comes
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/predict", "raw_path": b"/v1/predict", "root_path": "",
        "query_string": b"", "headers": [(b"content-type", b"image/png")],
        "client": ("127.0.0.1", 1234), "server": ("testserver", 80),
    }  # fmt: skip
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))  # without the timeout: hangs
    assert next(m["status"] for m in sent if m["type"] == "http.response.start") == 408
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert b"did not arrive within 0.2 s" in body
    assert app.state.engine.in_flight == 0  # the slot is free again


def test_fields_return_only_what_was_asked(predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> None:
    import fmnist.serve.answers

    with TestClient(create_app(predictor)) as client:
        wait_ready(client)
        full = client.post("/v1/predict", content=png(), headers={"Content-Type": "image/png"}).json()

        def no_png(image: np.ndarray) -> str:
            raise AssertionError("the PNG was encoded though nobody asked for it")

        monkeypatch.setattr(fmnist.serve.answers, "png_data_url", no_png)
        lean = client.post("/v1/predict?fields=label,top", content=png(), headers={"Content-Type": "image/png"})
        unknown = client.post("/v1/predict?fields=label,colour", content=png(), headers={"Content-Type": "image/png"})
        empty = client.post("/v1/predict?fields=", content=png(), headers={"Content-Type": "image/png"})
    assert set(full["predictions"][0]) == {"name", "label", "index", "probability", "top", "probabilities",
                                           "set", "recognised", "ood_score", "input"}
    assert lean.status_code == 200 and lean.json()["predictions"] == [
        {"label": full["predictions"][0]["label"], "top": full["predictions"][0]["top"]}
    ]
    assert unknown.status_code == 422 and "Unknown field 'colour'" in unknown.json()["error"]
    assert empty.status_code == 422 and "choose from" in empty.json()["error"]


def test_shutting_the_app_down_stops_the_batcher(predictor: Predictor) -> None:
    before = set(threading.enumerate())
    app = create_app(predictor)
    with TestClient(app) as client:
        wait_ready(client)
        assert client.post("/v1/predict", content=png(), headers={"Content-Type": "image/png"}).status_code == 200
        assert started_threads(before)  # the batcher's (and the test client's)
    # nothing the app started is left running (threads end a moment after they are told to)
    until(lambda: started_threads(before) == [], "every thread the app started has ended")


@pytest.mark.parametrize(("cpus", "want"), [(1, (1, 1)), (2, (2, 1)), (16, (MAX_AUTO_WORKERS, 16 // MAX_AUTO_WORKERS))])
def test_auto_workers_take_one_core_each(cpus: int, want: tuple[int, int]) -> None:
    assert workers_and_threads("auto", cpus) == want
    assert workers_and_threads("1", cpus) == (1, cpus)
    with pytest.raises(ConfigError):
        workers_and_threads("0", cpus)


# ---- the onnxruntime backend -------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cnn checkpoint and its ONNX export (the export takes seconds: once per module)."""
    import torch

    from fmnist.checkpoint import FASHION_CLASSES, save_model
    from fmnist.export import export_onnx
    from fmnist.models import build_model

    folder = tmp_path_factory.mktemp("onnx") / "run"
    torch.manual_seed(0)
    net = build_model("cnn", {"widths": [4, 8, 8]})
    meta = {"classes": FASHION_CLASSES, "normalize": {"mean": 0.286, "std": 0.353},
            "dataset": "fashion-mnist", "metrics": {"test_accuracy": 0.5}, "tta_flip": True}  # fmt: skip
    save_model(folder, net, meta)
    from fmnist.checkpoint import load_model

    net, meta = load_model(folder)
    export_onnx(net, meta, folder / "model.onnx")
    return folder


def test_the_onnx_backend_predicts_what_torch_does(onnx_run: Path) -> None:
    from fmnist.serve.backends import OnnxPredictor, load_predictor

    torch_predictor = load_predictor(onnx_run, backend="torch")
    from_file = load_predictor(onnx_run / "model.onnx")
    assert isinstance(from_file, OnnxPredictor) and not isinstance(torch_predictor, OnnxPredictor)
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    want = torch_predictor.predict_arrays(images)
    assert from_file.predict_arrays(images) == pytest.approx(want, abs=1e-5)
    # the export carries the checkpoint's metadata, TTA included: served as it was evaluated
    assert from_file.tta is True and from_file.meta["metrics"] == {"test_accuracy": 0.5}
    assert from_file.classes == torch_predictor.classes
    from_file.tta = False
    assert not np.allclose(from_file.predict_arrays(images), want, atol=1e-5)
    with TestClient(create_app(load_predictor(onnx_run / "model.onnx"))) as client:
        wait_ready(client)
        info = client.get("/v1/model").json()
        r = client.post("/v1/predict", content=png(), headers={"Content-Type": "image/png"})
    assert info["backend"] == "onnxruntime" and info["parameters"] == sum(
        p.numel() for p in torch_predictor.model.parameters())  # fmt: skip
    assert r.status_code == 200


def test_a_checkpoint_is_exported_in_memory_for_the_onnx_backend(onnx_run: Path) -> None:
    from fmnist.serve.backends import OnnxPredictor, load_predictor

    predictor = load_predictor(onnx_run, backend="onnxruntime")
    assert isinstance(predictor, OnnxPredictor) and predictor.meta["metrics"] == {"test_accuracy": 0.5}
    images = np.random.default_rng(1).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    want = load_predictor(onnx_run, backend="torch").predict_arrays(images)
    assert predictor.predict_arrays(images) == pytest.approx(want, abs=1e-5)


@pytest.fixture
def torch_threads_put_back() -> Any:
    """`fmnist serve` sets torch's thread count for its whole process: put it back, so that no
    later test runs a pool it did not ask for (nor a process forked from this one, as mutmut's
    are: one forked from a process with a 2-thread OpenMP pool hangs at its first torch op)."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("torch_threads_put_back")
@pytest.mark.parametrize(
    ("target", "extra", "words"),
    [
        ("garbage.onnx", [], "is not a loadable ONNX model"),
        ("model.onnx", ["--model", "mlp"], "--model does not apply"),
        ("model.onnx", ["--backend", "torch"], "runs on onnxruntime"),
    ],
)
def test_onnx_serving_errors_are_one_line(onnx_run: Path, tmp_path: Path, capsys, target: str, extra: list[str], words: str) -> None:
    (tmp_path / "garbage.onnx").write_bytes(b"not onnx")
    path = tmp_path / target if target == "garbage.onnx" else onnx_run / target
    assert cli_main(["serve", str(path), "--workers", "1", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fmnist: error: ") and words in err and err.count("\n") == 1, err


def test_onnx_file_without_metadata_is_refused(tmp_path: Path, onnx_run: Path) -> None:
    import onnx

    from fmnist.serve.backends import OnnxPredictor

    model = onnx.load(str(onnx_run / "model.onnx"))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(CheckpointError, match="no class names"):
        OnnxPredictor.from_file(bare)


def test_a_request_during_shutdown_gets_503_not_500(predictor: Predictor) -> None:
    app = create_app(predictor)
    with TestClient(app) as client:
        wait_ready(client)
        app.state.engine.batcher.close()  # as when the lifespan ends with a request still coming
        r = client.post("/v1/predict", content=png(), headers={"Content-Type": "image/png"})
    assert r.status_code == 503 and "shutting down" in r.json()["error"] and r.headers["retry-after"] == "1"


def test_every_worker_listens_on_a_socket_of_its_own_with_nagle_off(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """One socket shared by the workers sent clients that connected together to one worker;
    each worker re-creates the parent's socket as its own (SO_REUSEPORT). Nagle's algorithm
    stays off: with it on, keep-alive clients waited ~40 ms an answer."""
    import socket
    from multiprocessing.reduction import ForkingPickler

    import fmnist.serve.server
    from fmnist.cli.serve import WorkerSocket, run_workers

    seen: dict[str, Any] = {}

    class FakeSupervisor:
        def __init__(self, config: Any, sock: socket.socket, workers: int, make_app: Any, **kw: Any) -> None:
            seen.update(config=config, sockets=[sock])
            # what a worker process gets: the socket, pickled as multiprocessing's spawn does
            seen["worker_sockets"] = [ForkingPickler.loads(ForkingPickler.dumps(sock)) for _ in range(2)]

        def run(self) -> int:
            seen["ran"] = True
            return 0

    monkeypatch.setattr(fmnist.serve.server, "Supervisor", FakeSupervisor)
    run_workers(3, {"host": "127.0.0.1", "port": 0, "log_level": "info"})
    assert seen["ran"] and seen["config"].workers == 3 and seen["config"].factory
    assert seen["config"].app == "fmnist.serve.app:app_from_env"
    parent = seen["sockets"][0]
    assert isinstance(parent, WorkerSocket) and parent.fileno() == -1  # closed once served
    a, b = seen["worker_sockets"]
    try:
        assert a.fileno() != b.fileno() and a.getsockname() == b.getsockname()
        assert a.getsockname()[1] != 0  # --port 0: the port picked once, in the parent
        # the line uvicorn logs when it binds itself, with that port (scripts wait for it)
        assert f"Uvicorn running on http://127.0.0.1:{a.getsockname()[1]} " in capfd.readouterr().err
        for sock in (a, b):
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            sock.listen()  # both listen on the one address
        with socket.create_connection(a.getsockname(), timeout=5):
            pass
    finally:
        a.close()
        b.close()


def test_without_so_reuseport_the_workers_share_uvicorns_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import fmnist.serve.server
    from fmnist.cli.serve import WorkerSocket, run_workers

    seen: list[socket.socket] = []
    monkeypatch.delattr(socket, "SO_REUSEPORT")  # as on Windows
    monkeypatch.setattr(fmnist.serve.server, "Supervisor",
                        lambda config, sock, *a, **kw: seen.append(sock) or type("S", (), {"run": lambda self: 0})())  # fmt: skip
    run_workers(2, {"host": "127.0.0.1", "port": 0, "log_level": "warning"})
    assert len(seen) == 1 and type(seen[0]) is socket.socket and not isinstance(seen[0], WorkerSocket)


def test_a_busy_port_is_one_sentence_even_for_another_fmnist_serve() -> None:
    import socket
    from multiprocessing.reduction import ForkingPickler

    from fmnist.cli.serve import bind_worker_socket

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(ConfigError, match=f"Cannot listen on 127.0.0.1:{port}"):
            bind_worker_socket("127.0.0.1", port)
    # a running multi-worker fmnist serve: its workers' sockets allow SO_REUSEPORT, so only the
    # plain bind first keeps a second server from quietly sharing the port
    first = bind_worker_socket("127.0.0.1", 0)
    worker = ForkingPickler.loads(ForkingPickler.dumps(first))
    try:
        worker.listen()
        with pytest.raises(ConfigError, match="Cannot listen on"):
            bind_worker_socket("127.0.0.1", first.getsockname()[1])
    finally:
        worker.close()
        first.close()
