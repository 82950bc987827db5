"""What a user who loads a model or resumes a run meets: a Quickstart `model.pth` taken as what
it is, each file that is not a model refused with the sentence that says what it is and what to
pass instead, and a resume that draws the same numpy numbers an unbroken run draws."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_stops_behaviour import TINY, SignalAt, tiny_data

from fmnist.checkpoint import FASHION_CLASSES, ResumeState, load_model
from fmnist.errors import CheckpointError
from fmnist.models import build_model
from fmnist.train import Callback, fit
from fmnist.train.stops import Interrupted

QUICKSTART = {"model": "mlp", "model_config": {}, "classes": FASHION_CLASSES,
              "normalize": {"mean": 0.0, "std": 1.0}, "dataset": "fashion-mnist", "source": "pth"}


def refused(path, **kw) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_model(path, **kw)
    return str(caught.value)


# ---- a Quickstart model.pth ---------------------------------------------------------------------


def test_a_lone_quickstart_pth_is_an_mlp_on_fashion_mnist_inputs_over_255(tmp_path):
    torch.manual_seed(0)
    net = build_model("mlp")
    torch.save(net.state_dict(), tmp_path / "model.pth")
    model, meta = load_model(tmp_path / "model.pth")
    assert meta == QUICKSTART
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(model(x), net.eval()(x))
    assert not model.training


def test_a_quickstart_file_named_pt_loads_too(tmp_path):
    torch.save(build_model("mlp").state_dict(), tmp_path / "model.pt")
    assert load_model(tmp_path / "model.pt")[1] == QUICKSTART


class RunsCode:
    """A pickle that runs code when loaded, as a .pth from a stranger may."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pth_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "model.pth"
    torch.save({"w": torch.zeros(1), "x": RunsCode(marker)}, path)
    assert refused(path).startswith(f"Cannot read {path} as a PyTorch state dict (")
    assert not marker.exists()


def test_a_pth_beside_another_models_metadata_takes_the_model_asked_for(make_checkpoint):
    """model.pth exported from an mlp run, then replaced by a cnn's weights: `--model cnn` wins,
    and the run's metadata (which says mlp) is not used for it."""
    folder = make_checkpoint("mlp")
    torch.save(build_model("cnn").state_dict(), folder / "model.pth")
    _, meta = load_model(folder / "model.pth", model="cnn")
    assert meta == {**QUICKSTART, "model": "cnn"}


def test_a_pth_beside_its_runs_metadata_keeps_it(make_checkpoint):
    folder = make_checkpoint("mlp")
    saved = json.loads((folder / "model.json").read_text())
    model, _ = load_model(folder)
    torch.save(model.state_dict(), folder / "model.pth")
    for asked in (None, "mlp"):
        assert load_model(folder / "model.pth", model=asked)[1] == {**saved, "source": "pth"}


# ---- files that are not a model -----------------------------------------------------------------


def test_paths_that_hold_no_model_say_what_to_pass(tmp_path):
    assert refused(tmp_path / "nope") == (
        f"Checkpoint {tmp_path / 'nope'} does not exist: pass a run folder (e.g. runs/latest), a "
        "model.safetensors file or a Quickstart model.pth.")
    assert refused(tmp_path) == (
        f"No checkpoint in folder {tmp_path}: expected model.safetensors there (train one with "
        "`fmnist train`, or pass a .safetensors or Quickstart .pth file).")
    (tmp_path / "model.safetensors").mkdir()  # a folder of that name is not a weights file
    assert refused(tmp_path).startswith(f"No checkpoint in folder {tmp_path}:")


def test_a_json_file_is_read_as_the_weights_beside_it(make_checkpoint, tmp_path):
    folder = make_checkpoint("mlp")
    assert load_model(folder / "model.json")[1]["model"] == "mlp"
    lone = tmp_path / "other.json"  # no other.safetensors beside it: taken as the file given
    lone.write_text("{}")
    assert refused(lone).startswith(f"Cannot read {lone} as a safetensors file: ")


def test_a_file_that_is_not_a_state_dict_of_tensors_is_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save([torch.zeros(1)], path)
    assert refused(path) == f"{path} is not a state dict of tensors."
    torch.save({"w": torch.zeros(1), "epoch": 3}, path)
    assert refused(path) == f"{path} is not a state dict of tensors."
    path.write_text("not a checkpoint")
    assert refused(path) == (
        f"Cannot read {path} as a PyTorch state dict (UnpicklingError): expected the "
        "Quickstart's torch.save(model.state_dict(), ...) file.")


def test_a_pth_of_other_weights_names_the_mismatch_and_the_flag(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(build_model("mlp").state_dict(), path)
    message = refused(path, model="cnn")
    assert message.startswith(f"Checkpoint {path} does not fit model 'cnn' (Missing key(s) in "
                              "state_dict: ")
    assert message.endswith("): pass the --model it was trained with.")
    # the first line of torch's long answer, cut at 200 characters
    said = message[len(f"Checkpoint {path} does not fit model 'cnn' ("):-len("): pass the --model "
                                                                             "it was trained with.")]
    assert "\n" not in said and len(said) == 200


def test_safetensors_from_elsewhere_say_they_were_not_written_by_fmnist(tmp_path):
    path = tmp_path / "weights.safetensors"
    tensors = {"w": torch.zeros(2)}
    expected = (f"Checkpoint {path} has no fmnist metadata (weights.json missing, none in the "
                "file): it was not written by fmnist.")
    for metadata in (None, {"other": "x"}, {"fmnist": "{not json"}, {"fmnist": "[1]"},
                     {"fmnist": json.dumps({"classes": ["a"]})}):
        save_file(tensors, str(path), metadata=metadata)
        assert refused(path) == expected, metadata


def test_metadata_that_names_no_model_or_an_unknown_one_is_refused(make_checkpoint):
    folder = make_checkpoint("mlp")
    meta_path = folder / "model.json"
    good = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in good.items() if k != "model"}))
    assert refused(folder) == (f"Metadata {meta_path} does not name a model: it was not written "
                               "by fmnist.")
    meta_path.write_text("[]")
    assert refused(folder) == (f"Metadata {meta_path} does not name a model: it was not written "
                               "by fmnist.")
    meta_path.write_text("{not json")
    assert refused(folder) == f"Cannot read checkpoint metadata {meta_path}: it is not valid JSON."
    meta_path.write_bytes(b"\xff\xfe")
    assert refused(folder) == f"Cannot read checkpoint metadata {meta_path}: it is not valid JSON."
    meta_path.write_text(json.dumps({**good, "model": "nope"}))
    assert refused(folder).startswith(f"Metadata of {folder / 'model.safetensors'} does not "
                                      "describe a model we can build: ")
    for damage in ({"classes": None}, {"classes": ["a", 1]}, {"model_config": "x"}):
        meta_path.write_text(json.dumps({**good, **damage}))
        assert refused(folder) == (
            f"Metadata of {folder / 'model.safetensors'} is damaged: model_config must be a table "
            "and classes a list of names."), damage


def test_metadata_without_a_model_config_builds_the_default_model(make_checkpoint):
    folder = make_checkpoint("mlp")
    meta_path = folder / "model.json"
    meta_path.write_text(json.dumps({k: v for k, v in json.loads(meta_path.read_text()).items()
                                     if k != "model_config"}))
    model, meta = load_model(folder)
    assert meta["model"] == "mlp" and "model_config" not in meta
    assert model(torch.rand(1, 1, 28, 28)).shape == (1, 10)


def test_model_json_is_one_field_a_line(make_checkpoint):
    text = (make_checkpoint("mlp") / "model.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2) + "\n"


def test_a_model_asked_for_by_name_must_be_the_one_saved(make_checkpoint):
    folder = make_checkpoint("mlp")
    assert refused(folder, model="cnn") == (
        f"Checkpoint {folder / 'model.safetensors'} holds a 'mlp' model, not 'cnn': drop --model "
        "or pass --model mlp.")
    assert load_model(folder, model="mlp")[1]["model"] == "mlp"


# ---- resume state -------------------------------------------------------------------------------


def test_a_folder_without_resume_state_is_refused_with_what_it_is(tmp_path):
    with pytest.raises(CheckpointError) as caught:
        ResumeState.load(tmp_path)
    assert str(caught.value) == (f"Cannot resume from {tmp_path}: it has no resume.pt (is it an "
                                 "fmnist run folder?).")
    (tmp_path / "resume.pt").write_text("no zip")
    with pytest.raises(CheckpointError) as caught:
        ResumeState.load(tmp_path)
    assert str(caught.value).startswith(f"Cannot read resume state {tmp_path / 'resume.pt'} (")


class NumpyDraws(Callback):
    """Draws from numpy's global RNG at every step, as an augmentation written with it would."""

    def __init__(self) -> None:
        self.draws: list[float] = []

    def on_step(self, state, step, loss, batch):
        self.draws.append(float(np.random.random()))


def test_a_resumed_run_draws_the_numpy_numbers_an_unbroken_one_draws(tmp_path: Path):
    np.random.seed(7)
    whole = NumpyDraws()
    fit(TINY, data=tiny_data(), save=False, display=False, callbacks=[whole])

    np.random.seed(7)
    run, resumed = tmp_path / "run", NumpyDraws()
    with pytest.raises(Interrupted):
        fit(TINY, data=tiny_data(), out=run, display=False,
            callbacks=[resumed, SignalAt(2, 0, signal.SIGTERM)])  # mid-epoch
    np.random.seed(12345)  # whatever the process did in between
    fit(resume=run, data=tiny_data(), display=False, callbacks=[resumed])
    assert resumed.draws == whole.draws
