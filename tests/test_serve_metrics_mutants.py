"""/metrics as an operator reads it, for what the serving tests left unchecked (written for
serve/metrics.py's mutants): the drift counters' labels, a reloaded model's series, and with
several workers, every worker's values summed in one scrape, and a dead worker's counts kept
(never going back) while its files go.

The workers here are real processes that write their values as `fmnist serve`'s workers do
(prometheus_client's multiprocess files under PROMETHEUS_MULTIPROC_DIR); the scrape and the
bookkeeping for a dead worker run in this process, as the answering worker and the supervisor
do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fmnist.serve.metrics import MULTIPROC_ENV, Metrics, mark_worker_dead

SRC = Path(__file__).resolve().parents[1] / "src"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(metrics: Metrics) -> Samples:
    text = metrics.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


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
metrics.rejected.labels("busy").inc()
metrics.set_model("mlp", "torch", False, "old")
if answered > 3:  # this one reloaded its model
    metrics.set_model("mlp", "torch", False, "new")
    metrics.unset_model("mlp", "torch", False, "old")
print(os.getpid())
"""


def run_worker(folder: Path, answered: int) -> int:
    """A worker process that answered `answered` requests and exited; its pid."""
    env = {**os.environ, MULTIPROC_ENV: str(folder), "PYTHONPATH": f"{SRC}{os.pathsep}"
           f"{os.environ.get('PYTHONPATH', '')}"}  # fmt: skip
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
    assert not any(name == "fmnist_model_info" and v for (name, _), v in after.items())
    assert sorted(p.name for p in folder.iterdir()) == ["counter_archive.db", "histogram_archive.db"]
