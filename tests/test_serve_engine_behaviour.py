"""The server's model side as the routes use it (fmnist.serve.engine): what a request gets back,
what an operator reads in /v1/stats, /v1/model, /readyz and /metrics, and what happens when a
request is refused, too late, abandoned, or meets a model being replaced. The engine is driven
through its public methods, with a small real model; forward passes and decodes are held open
with events to make things meet, never timed."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from fmnist.predict import Predictor
from fmnist.serve.app import swap_in
from fmnist.serve.backends import TorchBackend, content_id_of
from fmnist.serve.batching import BatcherClosed, BatcherDied
from fmnist.serve.engine import (
    DECODE_THREADS,
    INLINE_BYTES,
    INLINE_PIXELS,
    Abandoned,
    Batching,
    Engine,
)
from fmnist.serve.errors import ApiError
from fmnist.serve.limits import Limits
from fmnist.serve.requests import Item
from fmnist.trust import Trust


def picture(width: int = 40, height: int = 56, *, first: int = 0, fmt: str = "PNG", noise: bool = False) -> bytes:
    """An encoded image: a light blob on a dark background (or on noise), `first` at (0, 0)."""
    rng = np.random.default_rng(width * height)
    img = rng.integers(0, 256, (height, width), dtype=np.uint8) if noise else np.zeros((height, width), np.uint8)
    img[height // 5 : -height // 5, width // 4 : -width // 4] = 200
    img[0, 0] = first
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


def hidden_size(width: int = 40, height: int = 56) -> bytes:
    """A JPEG whose size is not read from fixed offsets: 70 comments come before its frame
    header, more than the server looks through."""
    data = picture(width, height, fmt="JPEG")
    return data[:2] + b"\xff\xfe\x00\x03x" * 70 + data[2:]


def padded(data: bytes, size: int) -> bytes:
    """A PNG made exactly `size` bytes long by a text chunk (which the decoder skips unread)."""
    text = b"comment\0" + b"a" * (size - len(data) - 12 - 8)
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
    out = data[:33] + chunk + data[33:]  # after the IHDR chunk
    assert len(out) == size
    return out


def array(value: int = 0) -> np.ndarray:
    a = np.zeros((28, 28), np.uint8)
    a[4:20, 2:9] = 220
    a[0, 0] = value
    return a


class Model(TorchBackend):
    """A small real model whose forward passes and decodes the test can watch, hold or fail."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__(predictor)
        self.passes: list[int] = []  # images in each forward pass
        self.pass_started = threading.Event()
        self.hold_pass: threading.Event | None = None
        self.fail_pass = False
        self.decoded = 0  # images decoded and preprocessed
        self.threads: dict[tuple[int, int], str] = {}  # image size -> the thread that decoded it
        self.held_width: int | None = None  # the decoding of an image this wide waits for `release`
        self.decoding_held = threading.Event()
        self.held = 0  # decodes waiting for `release` now
        self.release = threading.Event()
        self.counting = threading.Lock()  # decodes run on several threads at once

    def preprocess(self, image: Image.Image) -> np.ndarray:
        self.threads[image.size] = threading.current_thread().name
        if image.size[0] == self.held_width:
            with self.counting:
                self.held += 1
            self.decoding_held.set()
            assert self.release.wait(10), "test never released the decode"
            with self.counting:
                self.held -= 1
        with self.counting:
            self.decoded += 1
        return super().preprocess(image)

    def predict_arrays(self, images: np.ndarray) -> np.ndarray:
        self.passes.append(len(images))
        self.pass_started.set()
        if self.hold_pass is not None:
            assert self.hold_pass.wait(10), "test never released the pass"
        if self.fail_pass:
            self.fail_pass = False
            raise RuntimeError("simulated fault in the forward pass")
        return super().predict_arrays(images)


@pytest.fixture
def predictor(make_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(make_checkpoint("mlp"))


@pytest.fixture
def model(predictor: Predictor) -> Iterator[Model]:
    m = Model(predictor)
    yield m
    m.release.set()  # nothing stays held past its test
    if m.hold_pass is not None:
        m.hold_pass.set()


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    made: list[Engine] = []
    yield made
    for e in made:
        e.close(timeout=5)


@pytest.fixture
def make(engines: list[Engine]):
    def make(backend: Any, batching: Batching | None = None, model_id: str | None = None, **limits: Any) -> Engine:
        e = Engine(backend, Limits(**limits), batching, model_id)
        engines.append(e)
        return e

    return make


def run(engine: Engine, items: list[Item], **kwargs: Any) -> dict[str, Any]:
    return asyncio.run(engine.run(items, **kwargs))


def metric(engine: Engine, name: str, **labels: str) -> float | None:
    """A sample's value in the engine's /metrics text, or None if it has no such series."""
    for family in text_string_to_metric_families(engine.metrics.exposition().decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def answered(engine: Engine) -> float:
    """Images answered, as the drift counters in /metrics count them (every series)."""
    return sum(s.value for family in text_string_to_metric_families(engine.metrics.exposition().decode())
               for s in family.samples if s.name == "fmnist_predictions_total")  # fmt: skip


def refusal(call: Any) -> ApiError:
    with pytest.raises(ApiError) as e:
        call()
    return e.value


# ---- what a new engine reports ---------------------------------------------------------------


def test_a_new_engine_reports_its_settings_and_empty_counters_and_is_ready_once_warm(make, model: Model) -> None:
    engine = make(model, Batching(window_ms=5.0, max_images=3), max_queue=5, max_uploads=7)
    assert engine.state() == ("starting", "The model is still warming up.")
    assert engine.stats() == {
        "pid": os.getpid(), "batching": True, "window_ms": 5.0, "max_pass_images": 3,
        "forward_passes": 0, "pass_sizes": {}, "in_flight": 0, "max_queue": 5, "uploading": 0,
        "max_uploads": 7, "refused": 0, "rejected": {}, "dropped": 0, "failed_passes": 0,
        "state": "starting",
    }  # fmt: skip
    assert engine.model_info()["ready"] is False
    engine.warmup()
    assert engine.state() == ("ready", None) and engine.stats()["state"] == "ready"
    assert engine.model_info()["ready"] is True
    # its id is a hash of the weights and metadata unless the files' id is given
    assert engine.model_id == content_id_of(model) == engine.model_info()["model_id"]
    assert make(model, model_id="pinned-id").model_id == "pinned-id"
    labels = {"model": "mlp", "backend": "torch", "tta": "false", "model_id": engine.model_id}
    assert metric(engine, "fmnist_model_info", **labels) == 1


def test_without_batching_stats_say_so_and_each_request_is_one_pass(make, model: Model, predictor: Predictor) -> None:
    engine = make(model, Batching(enabled=False))
    stats = engine.stats()
    assert stats["batching"] is False
    assert [stats[k] for k in ("window_ms", "max_pass_images", "forward_passes", "pass_sizes", "dropped",
                               "failed_passes")] == [None] * 6  # fmt: skip
    arrays = [array(v) for v in (1, 2, 3)]
    got = run(engine, [Item(f"a{i}", a) for i, a in enumerate(arrays)])
    assert model.passes == [3]
    assert (got["count"], got["pass_images"], got["model_id"], got["model"]) == (3, 3, engine.model_id, "mlp")
    want = predictor.predict_arrays(np.stack(arrays))
    for p, w in zip(got["predictions"], want, strict=True):
        assert [p["probabilities"][c] for c in predictor.classes] == pytest.approx(w, abs=1e-5)
    assert answered(engine) == 3
    latency = got["latency_ms"]
    assert latency["decode"] >= 0 and latency["model"] >= 0
    assert latency["decode"] + latency["model"] <= latency["total"] + 0.002  # parts of the whole
    # a fault in the model is that fault (a logged 500), not a shutdown
    model.fail_pass = True
    with pytest.raises(RuntimeError, match="simulated fault"):
        run(engine, [Item("a", array())])
    # once closed, a request is told the server is shutting down (503), not a 500
    engine.close()
    with pytest.raises(BatcherClosed, match="^The server is shutting down.$"):
        run(engine, [Item("a", array())])


def test_a_batched_answer_has_its_own_rows_the_fields_asked_for_and_its_pass_counted(
    make, model: Model, predictor: Predictor
) -> None:
    engine = make(model)
    items = [Item("shoe.png", picture(first=9)), Item("arr", array(5))]
    began = time.perf_counter()
    got = run(engine, items, fields=("name", "label"))
    assert [sorted(p) for p in got["predictions"]] == [["label", "name"]] * 2
    assert [p["name"] for p in got["predictions"]] == ["shoe.png", "arr"]
    full = run(engine, items)
    took = time.perf_counter() - began
    seen = engine.decode(items)
    want = predictor.predict_arrays(seen)
    for p, w in zip(full["predictions"], want, strict=True):
        assert [p["probabilities"][c] for c in predictor.classes] == pytest.approx(w, abs=1e-5)
    assert (full["count"], full["pass_images"], full["model_id"]) == (2, 2, engine.model_id)
    latency = full["latency_ms"]
    assert latency["decode"] >= 0 and latency["model"] >= 0
    assert latency["decode"] + latency["model"] <= latency["total"] + 0.002  # parts of the whole
    assert answered(engine) == 4
    stats = engine.stats()
    assert (stats["forward_passes"], stats["pass_sizes"]) == (2, {2: 2})
    assert metric(engine, "fmnist_forward_pass_images_count") == 2
    assert metric(engine, "fmnist_forward_pass_images_sum") == 4
    assert metric(engine, "fmnist_forward_pass_seconds_count") == 2
    assert 0 < metric(engine, "fmnist_forward_pass_seconds_sum") <= took  # within the requests' time


# ---- readiness -------------------------------------------------------------------------------


class RaisesOnAFailedPass(logging.Filter):
    """An operator's logging filter with a bug: it raises on the batcher's log of a failed
    pass, and so kills the batcher's thread."""

    tripped = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not self.tripped:
            self.tripped = True
            raise RuntimeError("simulated bug in a logging filter")
        return True


def test_draining_then_a_dead_batcher_show_in_the_state_and_refuse_requests(make, model: Model) -> None:
    engine = make(model, predict_timeout_s=10)
    engine.warmup()
    engine.draining.set()
    assert engine.state() == ("draining", "The server is shutting down.")
    assert engine.stats()["state"] == "draining" and not engine.failed
    log = logging.getLogger("fmnist.serve")
    bug = RaisesOnAFailedPass()
    log.addFilter(bug)
    try:
        model.fail_pass = True
        with pytest.raises(BatcherDied):  # the pass under way is failed with it
            run(engine, [Item("a", array())])
        for _ in range(1000):
            if engine.failed:
                break
            threading.Event().wait(0.01)
    finally:
        log.removeFilter(bug)
    assert engine.failed
    assert engine.state() == ("failed", "The batcher has stopped on an error; this process is exiting.")
    assert engine.stats()["state"] == "failed"
    model.held_width = 40
    with pytest.raises(BatcherDied):  # refused before anything is decoded
        run(engine, [Item("a.png", picture(40, 56))])
    assert not model.decoding_held.is_set()


# ---- admission -------------------------------------------------------------------------------


def test_a_full_queue_and_too_many_uploads_are_refused_with_503_and_counted(make, model: Model) -> None:
    engine = make(model, max_queue=1, max_uploads=1)
    with engine.admit():
        assert engine.stats()["in_flight"] == 1
        busy = refusal(engine.shed)
        assert busy.status == 503 and busy.headers == {"Retry-After": "1", "Connection": "close"}
        assert busy.message == "The server is busy (1 predictions queued): retry shortly."

        def second() -> None:
            with engine.admit():
                raise AssertionError("admitted past the queue bound")

        assert refusal(second).status == 503
        assert engine.stats()["in_flight"] == 1
    assert engine.stats()["in_flight"] == 0
    engine.shed()  # room again
    with engine.admit_upload():
        assert engine.stats()["uploading"] == 1

        def another() -> None:
            with engine.admit_upload():
                raise AssertionError("admitted past the upload bound")

        uploads = refusal(another)
        assert uploads.status == 503 and uploads.headers == {"Retry-After": "1", "Connection": "close"}
        assert uploads.message == "The server is busy (1 uploads in progress): retry shortly."
    stats = engine.stats()
    assert (stats["uploading"], stats["refused"], stats["rejected"]) == (0, 3, {"busy": 2, "uploads": 1})
    assert metric(engine, "fmnist_rejected_total", reason="busy") == 2
    assert metric(engine, "fmnist_rejected_total", reason="uploads") == 1


# ---- decoding and its budgets ----------------------------------------------------------------


def test_decoding_gives_what_the_model_sees_and_a_bad_image_is_that_requests_422(make, model: Model) -> None:
    engine = make(model, max_pixels=3000)
    data, arr = picture(40, 56), array(3)
    seen = engine.decode([Item("a.png", data), Item("b", arr)])
    assert seen.shape == (2, 28, 28) and seen.dtype == np.uint8
    assert np.array_equal(seen[0], model.preprocess(Image.open(io.BytesIO(data))))
    assert np.array_equal(seen[1], arr)
    bad = refusal(lambda: engine.decode([Item("a.png", data), Item("notes.txt", b"not an image")]))
    assert bad.status == 422 and bad.message.startswith("notes.txt: ")
    big = refusal(lambda: run(engine, [Item("big.png", picture(60, 60))]))  # 3600 > max_pixels
    assert big.status == 422 and big.message.startswith("big.png: ") and "3,000" in big.message


def test_decoding_stops_at_the_next_image_once_nobody_waits(make, model: Model) -> None:
    engine = make(model)
    gone = threading.Event()
    items = [Item("a.png", picture()), Item("b.png", picture())]
    assert len(engine.decode(items, gone)) == 2
    gone.set()
    with pytest.raises(Abandoned):
        engine.decode(items, gone)
    assert model.decoded == 2


def test_the_requests_pixel_budget_is_exact_and_checked_again_with_the_sizes_pil_finds(make, model: Model) -> None:
    two = 2 * 40 * 56
    engine = make(model, max_request_pixels=two)
    assert run(engine, [Item(f"{i}.png", picture()) for i in range(2)])["count"] == 2  # exactly the budget
    refused = refusal(lambda: run(engine, [Item(f"{i}.png", picture()) for i in range(3)]))
    assert refused.status == 413
    assert refused.message == ("The request's images hold 6,720 pixels or more; this server decodes at "
                               "most 4,480 per request: send fewer or smaller images.")  # fmt: skip
    assert model.decoded == 2  # refused before anything was decoded
    # arrays count too
    arrays = make(model, max_request_pixels=2 * 28 * 28)
    assert run(arrays, [Item("a", array()), Item("b", array())])["count"] == 2
    assert refusal(lambda: run(arrays, [Item(str(i), array()) for i in range(3)])).status == 413
    # sizes not read from fixed offsets: decoding itself stops at the budget
    tiffs = [Item(f"{i}.jpg", hidden_size()) for i in range(3)]
    late = refusal(lambda: run(engine, tiffs))
    assert late.status == 413 and "hold 6,720 pixels" in late.message
    assert refusal(lambda: engine.decode(tiffs)).status == 413
    assert len(engine.decode(tiffs[:2])) == 2


def test_an_image_declaring_more_than_max_pixels_is_refused_for_what_it_is(make, model: Model) -> None:
    """Left out of the request's sum: PIL reads its header and says what it really is (422),
    instead of a 413 about the request."""
    engine = make(model, max_pixels=10_000, max_request_pixels=15_000)
    huge = picture(200, 100)  # 20,000 pixels: over max_pixels and over the request's budget
    got = refusal(lambda: run(engine, [Item("huge.png", huge)]))
    assert got.status == 422 and got.message.startswith("huge.png: ") and "10,000" in got.message


@pytest.mark.parametrize(
    "large",
    [picture(1100, 1000),  # more pixels than a request decoded inline may have
     picture(800, 500, noise=True),  # few pixels, too many bytes
     hidden_size(120, 100)],  # a size not readable from fixed offsets
    ids=["pixels", "bytes", "unknown-size"],
)  # fmt: skip
def test_a_large_upload_is_decoded_beside_the_passes_not_in_their_way(make, model: Model, large: bytes) -> None:
    engine = make(model, Batching(window_ms=0))
    model.held_width = Image.open(io.BytesIO(large)).size[0]

    async def both() -> tuple[dict[str, Any], dict[str, Any]]:
        big = asyncio.ensure_future(engine.run([Item("large", large)]))
        assert await asyncio.to_thread(model.decoding_held.wait, 10)
        # while the large one is being decoded, a small one is answered
        small = await asyncio.wait_for(engine.run([Item("small.png", picture())]), 5)
        model.release.set()
        return small, await asyncio.wait_for(big, 10)

    small, big = asyncio.run(both())
    assert (small["count"], big["count"]) == (1, 1)
    assert model.decoded == 2  # each decoded once


def test_small_requests_are_decoded_in_their_batchers_window_and_larger_ones_in_the_pool(
    make, model: Model
) -> None:
    """Where each request is decoded, as a profiler or a log's thread name shows it: up to
    INLINE_PIXELS pixels and INLINE_BYTES bytes (limits included) on the batcher's thread,
    saving two thread crossings; anything larger in the decoding pool."""
    side = int(INLINE_PIXELS**0.5)
    assert side * side == INLINE_PIXELS
    # the largest image a request may hold here is exactly as large as a small one may be
    at_limit, default = make(model, max_pixels=INLINE_PIXELS), make(model)
    sizes = {
        "small.png": (picture(40, 56), (40, 56)),
        "most-pixels.png": (picture(side, side), (side, side)),
        "most-bytes.png": (padded(picture(30, 50), INLINE_BYTES), (30, 50)),
        "more-bytes.png": (padded(picture(20, 50), INLINE_BYTES + 1), (20, 50)),
        "more-pixels.png": (picture(side, side + 1), (side, side + 1)),
    }
    for name, (data, _) in sizes.items():
        engine = default if name == "more-pixels.png" else at_limit
        assert run(engine, [Item(name, data)])["count"] == 1
    where = {name: model.threads[size] for name, (_, size) in sizes.items()}
    assert [name for name, thread in where.items() if thread == "fmnist-batcher"] == [
        "small.png", "most-pixels.png", "most-bytes.png"]  # fmt: skip
    assert all(where[n].startswith("fmnist-decode") for n in ("more-bytes.png", "more-pixels.png")), where


# ---- deadline and hang-up --------------------------------------------------------------------


@pytest.mark.parametrize("batching", [Batching(), Batching(enabled=False)], ids=["batched", "one-at-a-time"])
def test_a_request_not_answered_in_time_is_a_503_and_its_decoding_stops(make, model: Model, batching: Batching) -> None:
    engine = make(model, batching, predict_timeout_s=0.2)
    model.held_width = 1100
    items = [Item(f"{i}.png", picture(1100, 1000)) for i in range(3)]
    for _ in range(2):
        late = refusal(lambda: run(engine, items))
        assert late.status == 503 and late.headers == {"Retry-After": "1"}
        assert late.message == "The prediction was not answered within 0.2 s: retry shortly."
    assert engine.stats()["rejected"] == {"deadline": 2}
    assert metric(engine, "fmnist_rejected_total", reason="deadline") == 2
    model.release.set()
    for _ in range(500):  # each request's first image ends its decoding once released
        if model.decoded == 2:
            break
        time.sleep(0.01)
    time.sleep(0.2)  # room for a second image to start, if it were going to
    assert model.decoded == 2  # the other images were never decoded
    assert model.passes == []


def test_clients_that_hang_up_get_499_are_counted_and_those_still_queued_are_never_computed(
    make, model: Model
) -> None:
    engine = make(model, Batching(window_ms=0))
    model.hold_pass = threading.Event()

    async def go() -> list[Any]:
        # the first client's pass runs (held); two more wait behind it, then hang up
        first = asyncio.ensure_future(engine.run([Item("a", array(1))], disconnected=asyncio.Event().wait))
        assert await asyncio.to_thread(model.pass_started.wait, 10)
        gone = asyncio.Event()
        queued = [asyncio.ensure_future(engine.run([Item("b", array(2))], disconnected=gone.wait))
                  for _ in range(2)]  # fmt: skip
        for _ in range(500):  # both queued behind the held pass
            if engine.batcher is not None and engine.batcher.pending == 2:
                break
            await asyncio.sleep(0.01)
        gone.set()
        results = await asyncio.gather(*queued, return_exceptions=True)
        model.hold_pass.set()  # type: ignore[union-attr]
        answer = await asyncio.wait_for(first, 10)
        for _ in range(500):  # the batcher takes them after the held pass: dropped or computed
            if engine.stats()["dropped"] + len(model.passes) >= 3:
                break
            await asyncio.sleep(0.01)
        return [answer, *results]

    first, *gone = asyncio.run(go())
    assert first["count"] == 1
    for g in gone:
        assert isinstance(g, ApiError) and g.status == 499
        assert g.message == "The client closed the connection before its answer."
    assert model.passes == [1]  # the two that hung up were dropped, not computed
    stats = engine.stats()
    assert (stats["rejected"], stats["dropped"]) == ({"client_gone": 2}, 2)
    assert metric(engine, "fmnist_rejected_total", reason="client_gone") == 2


def test_once_answered_the_engine_stops_watching_for_a_hang_up(make, model: Model) -> None:
    """A watcher left running would go on reading the connection after its answer."""
    engine = make(model)
    stopped = threading.Event()

    async def go() -> tuple[dict[str, Any], bool]:
        async def watch() -> None:
            try:
                await asyncio.Event().wait()  # this client never hangs up
            except asyncio.CancelledError:
                stopped.set()
                raise

        got = await engine.run([Item("a", array())], disconnected=watch)
        await asyncio.sleep(0.01)  # the cancellation lands
        return got, stopped.is_set()  # asked before asyncio.run's own clean-up cancels it

    got, watcher_stopped = asyncio.run(go())
    assert got["count"] == 1 and watcher_stopped


# ---- replacing the model ---------------------------------------------------------------------


def other_model(predictor: Predictor) -> Model:
    """Another model: other weights, other class names, a calibration of its own."""
    state = {k: v + 0.05 for k, v in predictor.model.state_dict().items()}
    meta = {**predictor.meta, "classes": [c.upper() for c in predictor.classes], "model": "mlp",
            "trust": {"temperature": 1.5, "ood": {"score": "msp", "threshold": 0.3}}}  # fmt: skip
    other = Predictor(predictor.model, meta)  # an inference copy of the module: changed alone
    other.model.load_state_dict(state)
    return Model(other)


def test_a_swapped_model_answers_from_the_next_pass_and_a_pass_under_way_keeps_its_own(
    make, model: Model, predictor: Predictor
) -> None:
    engine = make(model, Batching(window_ms=0))
    old_id = engine.model_id
    engine.reload_error = "the last reload failed"
    new = other_model(predictor)
    model.hold_pass = threading.Event()

    async def meet() -> dict[str, Any]:
        first = asyncio.ensure_future(engine.run([Item("a", array())]))
        while not model.pass_started.is_set():
            await asyncio.sleep(0.005)
        engine.swap(new, "new-id")  # while the old model's pass is under way
        model.hold_pass.set()  # type: ignore[union-attr]
        return await asyncio.wait_for(first, 10)

    first = asyncio.run(meet())
    assert first["model_id"] == old_id and set(first["predictions"][0]["probabilities"]) == set(predictor.classes)
    second = run(engine, [Item("a", array())])
    assert second["model_id"] == "new-id" == engine.model_id
    assert set(second["predictions"][0]["probabilities"]) == set(new.classes)
    assert (model.passes, new.passes) == ([1], [1])
    info = engine.model_info()
    assert (info["model_id"], info["classes"], info["reload_error"]) == ("new-id", new.classes, None)
    assert info["trust"]["temperature"] == 1.5 and info["trust"]["ood_score"] == "msp"
    labels = {"model": "mlp", "backend": "torch", "tta": "false"}
    assert metric(engine, "fmnist_model_info", **labels, model_id="new-id") == 1
    assert metric(engine, "fmnist_model_info", **labels, model_id=old_id) is None


def test_one_reload_at_a_time_a_second_one_meanwhile_is_skipped(make, model: Model) -> None:
    engine = make(model)
    asked: list[str] = []

    def pin(name: str, inner: Any = None) -> Any:
        def pinned() -> tuple[Any, None]:
            asked.append(name)
            if inner is not None:  # a second SIGHUP while this reload runs
                swap_in(engine, inner)
            return SimpleNamespace(model_id=engine.model_id), None  # the same model: nothing to load

        return pinned

    swap_in(engine, pin("first", pin("meanwhile")))
    swap_in(engine, pin("after"))
    assert asked == ["first", "after"]
    assert engine.reload_error is None


def test_samples_are_chosen_by_seed_and_named_by_the_served_models_classes(
    make, model: Model, predictor: Predictor, fake_data
) -> None:
    engine = make(model)
    picked = engine.samples(3, 7)
    assert len(picked["samples"]) == 3 and picked == engine.samples(3, 7)
    assert picked != engine.samples(3, 8)
    assert all(s["label"] == predictor.classes[s["label_index"]] for s in picked["samples"])
    new = other_model(predictor)
    engine.swap(new, "new-id")
    assert all(s["label"] == new.classes[s["label_index"]] for s in engine.samples(3, 7)["samples"])


# ---- /v1/model -------------------------------------------------------------------------------


def test_model_info_says_what_is_served_how_it_was_made_and_its_limits(make, predictor: Predictor) -> None:
    meta = {**predictor.meta, "model_config": {"hidden": 512}, "dataset": "fashion-mnist",
            "dataset_sha256": "abc123", "metrics": {"test_accuracy": 0.5}, "epoch": 3,
            "recipe": {"name": "default"}, "normalize": {"mean": 0.2, "std": 0.3},
            "versions": {"torch": "x"},
            "trust": {"temperature": 1.25, "sets": {"score": "aps", "levels": [0.9], "thresholds": [0.7]},
                      "ood": {"score": "msp", "threshold": 0.4}}}  # fmt: skip
    served = Model(Predictor(predictor.model, meta, tta=True))
    limits = {"max_queue": 3, "max_uploads": 5}
    info = make(served, **limits).model_info()
    trust = Trust.from_meta(meta)
    assert info == {
        "model": "mlp", "model_id": content_id_of(served), "reload_error": None,
        "model_config": {"hidden": 512}, "classes": predictor.classes,
        "parameters": sum(p.numel() for p in predictor.model.parameters()),
        "dataset": "fashion-mnist", "dataset_hash": "abc123", "metrics": {"test_accuracy": 0.5},
        "epoch": 3, "recipe": {"name": "default"}, "normalize": {"mean": 0.2, "std": 0.3}, "tta": True,
        "trust": {"temperature": 1.25, "coverage": trust.coverage, "calibrated": True, "set_score": "aps",
                  "ood_score": "msp", "ood_threshold": 0.4},
        "versions": {"torch": "x"}, "device": "cpu", "backend": "torch", "ready": False,
        "limits": {**Limits().__dict__, **limits},
    }  # fmt: skip
    # a model that says nothing of how it was made
    bare = make(Model(Predictor(predictor.model, {"classes": predictor.classes}))).model_info()
    assert [bare[k] for k in ("model_config", "metrics", "versions")] == [{}, {}, {}]
    assert [bare[k] for k in ("model", "dataset", "dataset_hash", "epoch", "recipe")] == [None] * 5


class NoTrust:
    """A backend of another kind (neither a Predictor nor wrapping one): no calibration."""

    def __init__(self, inner: Model) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name in ("trust", "predictor"):
            raise AttributeError(name)
        return getattr(self._inner, name)


class OwnTrust(Model):
    """A backend with a calibration of its own (as an ONNX Runtime predictor has)."""

    trust = Trust(temperature=2.0, ood_threshold=1.0)


def test_model_info_reports_the_backends_own_calibration_or_none(make, model: Model, predictor: Predictor) -> None:
    assert make(NoTrust(model), model_id="x").model_info()["trust"] is None
    own = make(OwnTrust(predictor)).model_info()["trust"]
    assert (own["temperature"], own["ood_threshold"], own["calibrated"]) == (2.0, 1.0, False)
    wrapped = make(model).model_info()["trust"]
    assert wrapped is not None and wrapped["temperature"] == predictor.trust.temperature


# ---- closing ---------------------------------------------------------------------------------


def test_closing_does_not_wait_for_a_pass_that_never_ends(make, model: Model) -> None:
    engine = make(model)
    model.hold_pass = threading.Event()

    async def close_during_a_pass() -> None:
        request = asyncio.ensure_future(engine.run([Item("a", array())]))
        assert await asyncio.to_thread(model.pass_started.wait, 10)
        closer = threading.Thread(target=engine.close, kwargs={"timeout": 0.1})
        closer.start()
        await asyncio.to_thread(closer.join, 5)
        done = not closer.is_alive()
        model.hold_pass.set()  # type: ignore[union-attr]
        await asyncio.wait_for(request, 10)
        assert done, "close() waited for the pass"

    asyncio.run(close_during_a_pass())


def test_closing_drops_queued_decodes_and_does_not_wait_for_those_under_way(make, model: Model) -> None:
    """A server shutting down decodes no upload still waiting for a decoding thread; the ones
    being decoded finish on their own, without holding the shutdown."""
    engine = make(model)
    model.held_width = 1100
    large = picture(1100, 1000)

    async def go() -> list[Any]:
        requests = [asyncio.ensure_future(engine.run([Item(f"{i}.png", large)])) for i in range(DECODE_THREADS + 2)]
        for _ in range(1000):  # every decoding thread busy, the rest queued behind them
            if model.held == DECODE_THREADS:
                break
            await asyncio.sleep(0.01)
        assert model.held == DECODE_THREADS
        closer = threading.Thread(target=engine.close)
        closer.start()
        await asyncio.to_thread(closer.join, 5)
        closed = not closer.is_alive()
        model.release.set()
        results = await asyncio.gather(*requests, return_exceptions=True)
        assert closed, "close() waited for the decodes under way"
        return results

    results = asyncio.run(go())
    assert model.decoded == DECODE_THREADS  # the two queued never were
    assert model.passes == []
    # each told the server is shutting down (a 503), those queued included: not cancelled
    assert [type(r) for r in results] == [BatcherClosed] * len(results), results
