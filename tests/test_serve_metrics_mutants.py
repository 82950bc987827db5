"""/metrics as an operator reads it, for what the serving tests left unchecked (written for
serve/metrics.py's mutants): every family's name, type, help, labels and buckets (what
dashboards and alert rules name), the supervisor's restart counter, every answer counted by
route and status (a 500 and an unknown path included) and timed, the drift counters' labels, a
reloaded model's series, and with several workers, every worker's values summed in one scrape,
and a dead worker's counts kept (never going back) while its files go.

The workers here are real processes that write their values as `fmnist serve`'s workers do
(prometheus_client's multiprocess files under PROMETHEUS_MULTIPROC_DIR); the scrape and the
bookkeeping for a dead worker run in this process, as the answering worker and the supervisor
do."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from child_env import child_env
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from test_serve import Spy, png

from fmnist.predict import Predictor
from fmnist.serve import create_app
from fmnist.serve.metrics import MULTIPROC_ENV, Metrics, WorkerRestarts, mark_worker_dead

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(metrics: Metrics) -> Samples:
    text = metrics.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


LATENCY = ["0.002", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "30.0", "+Inf"]
# every family /metrics offers, as dashboards and alert rules (docs/serving.md) name them:
# (type, help, label names of its series, bucket bounds of a histogram)
FAMILIES = {
    "fmnist_http_requests": ("counter", "HTTP requests answered, by route and status",
                             ["method", "route", "status"], None),
    "fmnist_http_request_duration_seconds": ("histogram", "Time to answer, by route", ["route"], LATENCY),
    "fmnist_forward_pass_images": ("histogram", "Images in one forward pass", [],
                                   ["1.0", "2.0", "4.0", "8.0", "16.0", "32.0", "64.0", "128.0", "256.0", "+Inf"]),
    "fmnist_forward_pass_seconds": ("histogram", "Duration of one forward pass", [], LATENCY),
    "fmnist_predictions_queued": ("gauge", "Predictions admitted and not yet answered", [], None),
    "fmnist_uploads_in_progress": ("gauge", "Prediction bodies still arriving", [], None),
    "fmnist_rejected": ("counter", "Predictions refused or dropped before their forward pass, by reason",
                        ["reason"], None),
    "fmnist_predictions": ("counter", "Images answered, by whether they were recognised and the size of "
                           "their prediction set", ["recognised", "set_size"], None),
    "fmnist_top_probability": ("histogram", "Calibrated probability of each answer's top class", [],
                               ["0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "0.95", "0.99", "1.0", "+Inf"]),
    "fmnist_model_info": ("gauge", "The model served (value always 1)", ["backend", "model", "model_id", "tta"],
                          None),
}  # fmt: skip


def families(text: str) -> dict[str, tuple[str, str, list[str], list[str] | None]]:
    found = {}
    for family in text_string_to_metric_families(text):
        if family.name.endswith("_created"):
            continue
        series = [s for s in family.samples if not s.name.endswith("_created")]
        labels = sorted({k for s in series for k in s.labels if k != "le"})
        buckets = [s.labels["le"] for s in series if s.name.endswith("_bucket")] or None
        found[family.name] = (family.type, family.documentation, labels, buckets)
    return found


def test_metrics_offers_every_family_with_its_type_help_labels_and_buckets() -> None:
    metrics = Metrics()
    metrics.requests.labels("/v1/predict", "POST", "200").inc()
    metrics.latency.labels("/v1/predict").observe(0.01)
    metrics.rejected.labels("busy").inc()
    metrics.observe(True, 1, 0.9)
    metrics.set_model("mlp", "torch", False, "abc")
    assert families(metrics.exposition().decode()) == FAMILIES


def test_the_supervisors_restart_counter_has_every_reason_from_the_start_and_counts_each() -> None:
    """So that an alert on its rate has a series to read before the first restart."""
    restarts = WorkerRestarts()

    def counted() -> dict[str, float]:
        (family,) = restarts.counter.collect()
        assert (family.name, family.type, family.documentation) == (
            "fmnist_worker_restarts", "counter", "Worker processes replaced, by reason")
        return {s.labels["reason"]: s.value for s in family.samples if s.name.endswith("_total")}

    assert counted() == {"crashed": 0, "failed_start": 0, "unresponsive": 0}
    for reason in ("crashed", "unresponsive", "crashed"):
        restarts.inc(reason)
    assert counted() == {"crashed": 2, "failed_start": 0, "unresponsive": 1}
    # a second supervisor in the same process (a test, a program that embeds one) counts apart
    assert {s.labels["reason"]: s.value for family in WorkerRestarts().counter.collect()
            for s in family.samples if s.name.endswith("_total")} == {
        "crashed": 0, "failed_start": 0, "unresponsive": 0}  # fmt: skip


def test_every_answer_is_counted_by_route_method_and_status_and_timed_within_the_clients_wait(
    make_checkpoint,
) -> None:
    """A failing forward pass (500) included, and an unknown path under "other"."""
    spy = Spy(Predictor.from_checkpoint(make_checkpoint("mlp")))
    app = create_app(spy, warmup=False)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.get("/no/such/page").status_code == 404
        spy.fail = True
        assert client.post("/v1/predict", content=png(), headers={"Content-Type": "image/png"}).status_code == 500
        waited = time.perf_counter() - t0
        text = client.get("/metrics").text
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip
    counted = {labels: v for (name, labels), v in got.items() if name == "fmnist_http_requests_total"}
    assert counted == {
        (("method", "GET"), ("route", "/healthz"), ("status", "200")): 2,
        (("method", "GET"), ("route", "other"), ("status", "404")): 1,
        (("method", "POST"), ("route", "/v1/predict"), ("status", "500")): 1,
    }
    timed = {labels: v for (name, labels), v in got.items() if name == "fmnist_http_request_duration_seconds_count"}
    assert timed == {(("route", "/healthz"),): 2, (("route", "other"),): 1, (("route", "/v1/predict"),): 1}
    spent = sum(v for (name, _), v in got.items() if name == "fmnist_http_request_duration_seconds_sum")
    assert 0 < spent <= waited


def test_every_answered_image_is_counted_by_whether_it_was_recognised_and_its_sets_size() -> None:
    metrics = Metrics()
    for recognised, set_size in [(True, 1), (True, 1), (False, 2), (None, None), (True, 0),
                                 (False, 3), (True, 7)]:  # fmt: skip
        metrics.observe(recognised, set_size, 0.5)
    counted = {labels: v for (name, labels), v in samples(metrics).items()
               if name == "fmnist_predictions_total"}  # fmt: skip
    assert counted == {
        (("recognised", "true"), ("set_size", "1")): 2,
        (("recognised", "false"), ("set_size", "2")): 1,
        (("recognised", "unknown"), ("set_size", "none")): 1,
        (("recognised", "true"), ("set_size", "0")): 1,
        (("recognised", "false"), ("set_size", "3+")): 1,
        (("recognised", "true"), ("set_size", "3+")): 1,
    }
    assert samples(metrics)[("fmnist_top_probability_count", ())] == 7


def test_a_replaced_model_leaves_the_model_series_of_one_process() -> None:
    metrics = Metrics()
    metrics.set_model("mlp", "torch", False, "old")
    metrics.set_model("cnn", "onnxruntime", True, "new")
    metrics.unset_model("mlp", "torch", False, "old")
    info = {labels: v for (name, labels), v in samples(metrics).items() if name == "fmnist_model_info"}
    assert info == {(("backend", "onnxruntime"), ("model", "cnn"), ("model_id", "new"), ("tta", "true")): 1}


WORKER = """
import os, sys
from fmnist.serve.metrics import Metrics

metrics = Metrics()
answered = int(sys.argv[1])
for _ in range(answered):
    metrics.requests.labels("/v1/predict", "POST", "200").inc()
    metrics.pass_images.observe(2)
metrics.queued.inc()  # one prediction still waiting when it dies
metrics.uploads.inc()  # and one body still arriving
metrics.rejected.labels("busy").inc()
metrics.set_model("mlp", "torch", False, "old")
if answered > 3:  # this one reloaded its model
    metrics.set_model("mlp", "torch", False, "new")
    metrics.unset_model("mlp", "torch", False, "old")
print(os.getpid())
"""


def run_worker(folder: Path, answered: int) -> int:
    """A worker process that answered `answered` requests and exited; its pid."""
    env = child_env(**{MULTIPROC_ENV: str(folder)})
    done = subprocess.run([sys.executable, "-c", WORKER, str(answered)], env=env, check=True,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    return int(done.stdout)


def test_workers_values_are_summed_and_a_dead_workers_counts_are_kept_and_its_files_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    first, second = run_worker(folder, 3), run_worker(folder, 4)
    monkeypatch.setenv(MULTIPROC_ENV, str(folder))  # this process answers /metrics for all
    scrape = Metrics()
    ok = ("fmnist_http_requests_total", (("method", "POST"), ("route", "/v1/predict"), ("status", "200")))
    model = ("fmnist_model_info", (("backend", "torch"), ("model", "mlp"), ("model_id", "old"), ("tta", "false")))  # fmt: skip
    new = ("fmnist_model_info", (("backend", "torch"), ("model", "mlp"), ("model_id", "new"), ("tta", "false")))  # fmt: skip
    both = samples(scrape)
    assert both[ok] == 7 and both[("fmnist_forward_pass_images_count", ())] == 7
    assert both[("fmnist_predictions_queued", ())] == 2
    assert both[("fmnist_uploads_in_progress", ())] == 2
    assert both[("fmnist_rejected_total", (("reason", "busy"),))] == 2
    assert both[model] == 1  # the first still serves "old"; the second reloaded and reads 0
    for dead in (first, second):  # each as the supervisor does when its worker dies
        mark_worker_dead(dead)
        assert not [p.name for p in folder.iterdir() if str(dead) in p.name]
        after = samples(scrape)
        assert after[ok] == 7 and after[("fmnist_forward_pass_images_count", ())] == 7
        assert after[("fmnist_forward_pass_images_sum", ())] == 14
        assert after[("fmnist_rejected_total", (("reason", "busy"),))] == 2
        if dead == first:  # the worker left serves "new" only: "old" reads 0 there
            assert after.get(model, 0) == 0 and after[new] == 1
    assert after.get(("fmnist_predictions_queued", ()), 0) == 0  # a dead worker waits for nothing
    assert after.get(("fmnist_uploads_in_progress", ()), 0) == 0
    assert not any(name == "fmnist_model_info" and v for (name, _), v in after.items())
    assert sorted(p.name for p in folder.iterdir()) == ["counter_archive.db", "histogram_archive.db"]
