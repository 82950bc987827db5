"""Distributed training under torchrun: 2 CPU processes, gloo, all traffic on 127.0.0.1.

The data is small synthetic IDX files read as `--dataset mnist --data-dir DIR`: the MNIST spec
carries only md5s of the official .gz files, so uncompressed copies load on their IDX structure
alone — the real `fmnist train` command line, no test-only hooks. Fault injection needs one:
run as a script (under torchrun), this file patches `train_epoch` to fail on one rank and
then runs the `fmnist` command line (see the bottom of the file).

Each torchrun start costs a few seconds (two processes importing torch), so the runs are
module fixtures shared by several tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from idx_helpers import NAMES, idx_bytes
from safetensors.torch import load_file
from synthetic import make_images

from fmnist import distributed
from fmnist.checkpoint import ResumeState, load_model
from fmnist.errors import ConfigError
from fmnist.inference import predict_logits
from fmnist.predict import Predictor

N_TRAIN, N_TEST = 200, 101  # 101: an odd test set, split 51/50 over two ranks
B = 16  # per process; the single-process reference uses 2B
RUN_FILES = {"config.json", "metrics.jsonl", "model.safetensors", "model.json", "resume.pt",
             "curves.png", "status.json", ".claim", "current", "checkpoints", "model-card.md"}
# The synthetic classes are mirror images of each other: no flips. Tiny widths keep CPU runs short.
# eval_every 1 (the default recipe evaluates its last epoch only): the ranks' shared evaluation
# is compared epoch by epoch
MLP = {"model": "mlp", "epochs": 2, "flip": False, "tta_flip": False, "bf16": "off",
       "channels_last": False, "eval_every": 1}
CNN = {"model": "cnn", "model_config": {"widths": [8, 8, 16]}, "epochs": 2, "flip": False,
       "tta_flip": False, "bf16": "off", "channels_last": False, "eval_every": 1}


# ---- helpers ----------------------------------------------------------------------------------


def torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    launcher = [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]
    return [*launcher, "--standalone", "--nproc_per_node=2"]


def env(cache: Path, **extra: str) -> dict[str, str]:
    e = {**os.environ, "FMNIST_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1",
         "PYTHONUNBUFFERED": "1", **extra}
    if Path("/sys/class/net/lo").exists():
        e["GLOO_SOCKET_IFNAME"] = "lo"  # keep gloo on the loopback interface
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(name, None)
    return e


def run(cmd: list[str], cwd: Path, environ: dict[str, str], timeout: float = 120):
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=timeout)
    proc.seconds = time.monotonic() - t0  # type: ignore[attr-defined]
    return proc


def train_args(data: Path, config: Path, *more: str) -> list[str]:
    return ["train", "--dataset", "mnist", "--data-dir", str(data), "--config", str(config),
            "--device", "cpu", *more]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_close_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=f"tensor {k}")


def single_process_eval(run_dir: Path, images: torch.Tensor, labels: torch.Tensor):
    """(accuracy, mean loss) of the saved checkpoint over every test image, in this process."""
    model, meta = load_model(run_dir)
    logits = predict_logits(model, images, meta["normalize"]["mean"], meta["normalize"]["std"],
                            tta_flip=bool(meta.get("tta_flip")))
    acc = (logits.argmax(1) == labels).float().mean().item()
    return acc, torch.nn.functional.cross_entropy(logits, labels).item(), logits


# ---- fixtures: synthetic data and the shared runs -----------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    data = root / "data"
    data.mkdir()
    splits = {"train": make_images(N_TRAIN, 1), "test": make_images(N_TEST, 2)}
    for split, (images, labels) in splits.items():
        (data / NAMES[f"{split}-images"]).write_bytes(idx_bytes(images.numpy()))
        (data / NAMES[f"{split}-labels"]).write_bytes(idx_bytes(labels.numpy().astype(np.uint8)))
    for name, cfg in (("mlp", MLP), ("cnn", CNN)):
        (root / f"{name}.json").write_text(json.dumps(cfg))
    return root


@pytest.fixture(scope="module")
def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    return make_images(N_TEST, 2)


@pytest.fixture(scope="module")
def mlp_runs(work: Path):
    """The same recipe as 1 process at batch 2B (in this process) and 2 processes at B."""
    from fmnist.cli import main

    saved = torch.get_num_threads(), os.getcwd(), os.environ.get("FMNIST_CACHE_DIR")
    try:
        os.chdir(work)
        os.environ["FMNIST_CACHE_DIR"] = str(work / "cache")
        assert main(train_args(work / "data", work / "mlp.json", "--batch-size", str(2 * B),
                               "--out", str(work / "mlp-1proc"))) == 0
    finally:
        torch.set_num_threads(saved[0])
        os.chdir(saved[1])
        if saved[2] is None:
            os.environ.pop("FMNIST_CACHE_DIR", None)
        else:
            os.environ["FMNIST_CACHE_DIR"] = saved[2]
    proc = run([*torchrun(), "-m", "fmnist",
                *train_args(work / "data", work / "mlp.json", "--batch-size", str(B),
                            "--out", "mlp-2proc")],
               work, env(work / "cache"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "mlp-1proc", work / "mlp-2proc", proc


@pytest.fixture(scope="module")
def cnn_run(work: Path):
    """An uninterrupted 2-process run of a BatchNorm model: the reference for resume."""
    proc = run([*torchrun(), "-m", "fmnist",
                *train_args(work / "data", work / "cnn.json", "--batch-size", str(B),
                            "--out", "cnn-2proc")],
               work, env(work / "cache"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "cnn-2proc"


@pytest.fixture(scope="module")
def cnn_crash(work: Path):
    """The same run, with rank 1 failing after epoch 2's training (epoch 1 is saved by then)."""
    proc = run([*torchrun(), __file__, "1", "2", "raise",
                *train_args(work / "data", work / "cnn.json", "--batch-size", str(B),
                            "--out", "cnn-crash")],
               work, env(work / "cache"), timeout=120)
    return work / "cnn-crash", proc


# ---- the torchrun tests -------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_at_b_match_one_process_at_2b(mlp_runs):
    one, two, _ = mlp_runs
    # Same shuffled order and shift augmentation (drawn per (seed, epoch), before sharding),
    # gradients averaged over ranks: the same SGD steps up to float summation order.
    assert_close_weights(weights(one), weights(two), atol=1e-5)
    for a, b in zip(metrics(one), metrics(two), strict=True):
        assert a["epoch"] == b["epoch"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["test_accuracy"] == b["test_accuracy"]
        assert a["lr"] == pytest.approx(b["lr"])


@pytest.mark.slow
def test_rank0_writes_the_run_folder_once_and_it_loads_in_one_process(mlp_runs, work, test_set):
    one, two, proc = mlp_runs
    files = {p.name for p in two.iterdir()}
    events = {f for f in files if f.startswith("events.out.tfevents.")}
    assert files - events == RUN_FILES  # no temp files, nothing per rank
    # the last two saves, nothing half-written: the last epoch's, and the same epoch saved again
    # with the calibration fitted at the end (fmnist.train.calibration)
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["epoch-0002", "epoch-0002-2"]
    assert "trust" in json.loads((two / "model.json").read_text())
    assert len(events) == (1 if importlib.util.find_spec("tensorboard") else 0)  # rank 0's only
    assert json.loads((two / "status.json").read_text())["status"] == "finished"
    rows = metrics(two)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert json.loads((two / "config.json").read_text())["model"] == "mlp"
    assert proc.stdout.count("Saved run to") == 1
    assert proc.stdout.count("epoch   2/2") == 1
    assert not (work / "runs").exists()  # rank 1 made no run folder of its own
    images, labels = test_set
    predictor = Predictor.from_checkpoint(two)
    predicted = predictor.predict_arrays(images.numpy()).argmax(1)
    accuracy = float((predicted == labels.numpy()).mean())
    assert accuracy == pytest.approx(rows[-1]["test_accuracy"], abs=1e-6)
    assert accuracy > 0.5  # the synthetic task is learnable; chance is 0.1
    reference = Predictor.from_checkpoint(one).predict_arrays(images.numpy()).argmax(1)
    assert (predicted == reference).all()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_sharded_evaluation_counts_every_test_image_once(which, mlp_runs, cnn_run, test_set):
    run_dir = mlp_runs[1] if which == "mlp" else cnn_run
    row = metrics(run_dir)[-1]
    acc, loss, _ = single_process_eval(run_dir, *test_set)
    # 101 images over 2 ranks: a lost or doubled image would move the accuracy off k/101.
    assert round(row["test_accuracy"] * N_TEST, 4) == round(acc * N_TEST, 4)
    # With BatchNorm the ranks' running statistics drift apart during an epoch; evaluation
    # must use rank 0's (the saved model's), or the loss differs from the checkpoint's.
    assert row["test_loss"] == pytest.approx(loss, rel=1e-5)


@pytest.mark.slow
def test_failing_rank_stops_the_run_with_a_clear_error(cnn_crash):
    _, proc = cnn_crash
    err = proc.stderr
    assert proc.returncode != 0
    assert proc.seconds < 60  # type: ignore[attr-defined]
    assert "RuntimeError: injected failure on rank 1" in err  # the failing rank's own error
    assert "rank      : 1" in err  # torchrun's summary names the root-cause rank
    # The survivor says what happened in one sentence, not with a second traceback.
    assert "fmnist: error: rank 0 of 2 stopped: another rank of this run failed" in err
    assert "[rank0]: Traceback" not in err


@pytest.mark.slow
def test_resume_under_torchrun_matches_the_uninterrupted_run(cnn_crash, cnn_run, work):
    crashed, _ = cnn_crash
    assert [r["epoch"] for r in metrics(crashed)] == [1]
    proc = run([*torchrun(), "-m", "fmnist", "train", "--data-dir", str(work / "data"),
                "--resume", str(crashed)], work, env(work / "cache"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_close_weights(weights(crashed), weights(cnn_run), atol=1e-6)
    resumed, straight = metrics(crashed), metrics(cnn_run)
    assert [r["epoch"] for r in resumed] == [1, 2]
    for a, b in zip(resumed, straight, strict=True):
        for key in ("train_loss", "test_loss", "test_accuracy", "lr"):
            assert a[key] == pytest.approx(b[key], abs=1e-6)
    state = ResumeState.load(crashed)
    assert state.world_size == 2 and state.rng_ranks is not None and len(state.rng_ranks) == 2
    # Seeded seed + rank: the ranks' own RNG streams were saved, not rank 0's twice.
    assert not torch.equal(state.rng_ranks[0]["torch"], state.rng_ranks[1]["torch"])


@pytest.mark.slow
def test_resume_with_another_process_count_is_refused(cnn_run, work):
    from fmnist.train import fit

    with pytest.raises(ConfigError, match=r"trained by 2 process\(es\), this launch has 1"):
        fit(resume=cnn_run, data_dir=work / "data")


@pytest.mark.slow
def test_error_on_rank0_only_is_one_line_per_rank(mlp_runs, work):
    # --out names a folder that already holds a run: only rank 0 checks, after the group formed.
    proc = run([*torchrun(), "-m", "fmnist",
                *train_args(work / "data", work / "mlp.json", "--out", "mlp-2proc")],
               work, env(work / "cache"))
    assert proc.returncode != 0
    assert "fmnist: error: rank 0 of 2: Run folder mlp-2proc already holds a run" in proc.stderr
    assert "[rank1]: Traceback" not in proc.stderr
    assert "[rank0]: Traceback" not in proc.stderr


@pytest.mark.slow
def test_stuck_rank_hits_the_collective_timeout(work):
    proc = run([*torchrun(), __file__, "1", "1", "hang",
                *train_args(work / "data", work / "mlp.json", "--out", "stuck")],
               work, env(work / "cache", FMNIST_DIST_TIMEOUT="3"), timeout=120)
    assert proc.returncode != 0
    assert proc.seconds < 60  # type: ignore[attr-defined]
    assert "fmnist: error: rank 0 of 2 stopped: a collective timed out" in proc.stderr
    assert "FMNIST_DIST_TIMEOUT" in proc.stderr


# ---- the helpers, in this process ---------------------------------------------------------------


def test_from_env(monkeypatch: pytest.MonkeyPatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.from_env() == distributed.DistInfo(0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = distributed.from_env()
    assert (info.rank, info.world_size, info.local_rank, info.enabled, info.is_main) == (
        3, 4, 1, True, False)
    assert info.label == "rank 3 of 4"
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="do not make sense"):
        distributed.from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="RANK='x' is not an integer"):
        distributed.from_env()


def test_single_process_helpers_are_no_ops():
    info = distributed.DistInfo()
    t = torch.ones(3)
    assert distributed.all_reduce_sum(t, info) is t and t.tolist() == [1, 1, 1]
    assert distributed.gather_objects("x", info) == ["x"]
    distributed.barrier(info)
    distributed.broadcast_buffers(torch.nn.BatchNorm1d(2), info)
    assert distributed.device_for(info, torch.device("cpu")) == torch.device("cpu")
    distributed.init(info, torch.device("cpu"))
    assert not torch.distributed.is_initialized()


def test_timeout_env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.timeout() is None
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "90")
    assert distributed.timeout().total_seconds() == 90
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(ConfigError, match="positive number of seconds"):
        distributed.timeout()


def test_rank_rng_state_and_resume_check():
    per_rank = [{"torch": torch.tensor([r])} for r in range(2)]
    def state(**kwargs):
        return ResumeState(epoch=1, rows=[], recipe={}, model={}, optimizer={}, scheduler={},
                           rng=per_rank[0], **kwargs)

    saved = state(rng_ranks=per_rank, world_size=2)
    assert distributed.rank_rng_state(saved, distributed.DistInfo(1, 2)) is per_rank[1]
    old = state()  # a resume.pt from before per-rank states: rank 0's for all
    assert distributed.rank_rng_state(old, distributed.DistInfo(1, 2)) is per_rank[0]
    distributed.check_resume(saved.world_size, distributed.DistInfo(0, 2), "r")
    distributed.check_resume(old.world_size, distributed.DistInfo(0, 4), "r")
    with pytest.raises(ConfigError, match="resume it with torchrun"):
        distributed.check_resume(saved.world_size, distributed.DistInfo(0, 4), "r")
    with pytest.raises(ConfigError, match=r"in one process \(no torchrun\)"):
        distributed.check_resume(1, distributed.DistInfo(0, 2), "r")


def test_clear_errors_names_the_rank(monkeypatch: pytest.MonkeyPatch):
    @distributed.clear_errors
    def fails(error: Exception) -> None:
        raise error

    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="^bad$") as one:  # one process: messages unchanged
        fails(ConfigError("bad"))
    assert one.value.rank is None
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        fails(RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:1"))

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="^rank 1 of 2: bad$") as named:
        fails(ConfigError("bad"))
    assert named.value.rank == 1  # the CLI shows errors that carry a rank on every rank
    with pytest.raises(distributed.PeerError,
                       match=r"^rank 1 of 2 stopped: another rank .*\(Connection closed by peer") as peer:
        fails(RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:1"))
    assert peer.value.rank == 1
    with pytest.raises(ValueError):  # bugs keep their traceback
        fails(ValueError("a bug"))
    with pytest.raises(RuntimeError, match="^shape mismatch$"):
        fails(RuntimeError("shape mismatch"))


# ---- fault injection: run under torchrun as a script ----------------------------------------------

if __name__ == "__main__":
    # test_distributed.py FAIL_RANK FAIL_EPOCH raise|hang <fmnist arguments...>
    import fmnist.train.loop
    from fmnist.cli import main

    fail_rank, fail_epoch, how = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    real_train_epoch = fmnist.train.loop.train_epoch

    def faulty(state, callbacks, stops, save):  # type: ignore[no-untyped-def]
        row = real_train_epoch(state, callbacks, stops, save)
        if state.setup.info.rank == fail_rank and state.epoch == fail_epoch:
            if how == "hang":
                time.sleep(300)
            raise RuntimeError(f"injected failure on rank {fail_rank}")
        return row

    fmnist.train.loop.train_epoch = faulty
    sys.exit(main(sys.argv[4:]))
