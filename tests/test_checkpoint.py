import json

import pytest
import torch

from fmnist.checkpoint import ResumeState, load_model
from fmnist.errors import CheckpointError
from fmnist.models import build_model


def test_loads_from_folder_weights_file_json_file_and_lone_weights(make_checkpoint, tmp_path):
    folder = make_checkpoint("cnn", {"widths": [4, 4, 8]})
    x = torch.randn(2, 1, 28, 28)
    reference = load_model(folder)[0](x)
    for path in (folder, folder / "model.safetensors", folder / "model.json"):
        model, meta = load_model(path)
        assert meta["model"] == "cnn" and torch.equal(model(x), reference)
    # the weights file alone still carries its metadata in the safetensors header
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes((folder / "model.safetensors").read_bytes())
    model, meta = load_model(lone)
    assert meta["model_config"]["widths"] == [4, 4, 8] and torch.equal(model(x), reference)


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="No checkpoint in folder"):
        load_model(tmp_path)


def test_corrupt_weights_and_foreign_files(tmp_path, make_checkpoint):
    folder = make_checkpoint()
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="Cannot read .* as a safetensors file"):
        load_model(folder)
    junk = tmp_path / "model.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="Cannot read .* as a PyTorch state dict"):
        load_model(junk)


def test_other_architecture_is_refused_with_the_right_flag(make_checkpoint, tmp_path):
    folder = make_checkpoint("mlp")
    with pytest.raises(CheckpointError, match="holds a 'mlp' model, not 'cnn'"):
        load_model(folder, model="cnn")
    pth = tmp_path / "model.pth"
    torch.save(build_model("mlp").state_dict(), pth)
    with pytest.raises(CheckpointError, match="does not fit model 'cnn'"):
        load_model(pth, model="cnn")


def test_metadata_is_complete(make_checkpoint):
    # a failed save keeping the old files: test_write_errors, on a really full disk
    meta = json.loads((make_checkpoint() / "model.json").read_text())
    assert {"model", "model_config", "classes", "normalize", "dataset", "metrics", "epoch",
            "versions"} <= set(meta)


def test_resume_needs_a_run_folder(tmp_path):
    with pytest.raises(CheckpointError, match="has no resume.pt"):
        ResumeState.load(tmp_path)


def test_damaged_metadata_is_one_clear_error(make_checkpoint):
    folder = make_checkpoint()
    meta_path = folder / "model.json"
    good = json.loads(meta_path.read_text())
    for damage in ({"classes": ["a", "b", "c"]}, {"classes": None}, {"model_config": "x"},
                   {"model_config": {"hidden": "x"}}):
        meta_path.write_text(json.dumps({**good, **damage}))
        with pytest.raises(CheckpointError):
            load_model(folder)
    meta_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(folder)


def test_exported_pth_beside_its_run_keeps_the_runs_normalisation(make_checkpoint):
    from fmnist.checkpoint import normalization
    from fmnist.export import export_pth

    folder = make_checkpoint("cnn")  # default config: a lone .pth can only say "cnn"
    model, meta = load_model(folder)
    export_pth(model, folder / "model.pth")
    again, again_meta = load_model(folder / "model.pth", model="cnn")
    assert normalization(again_meta) == normalization(meta) != (0.0, 1.0)
    # a lone .pth is the Quickstart's: inputs just /255
    lone = folder.parent / "lone.pth"
    lone.write_bytes((folder / "model.pth").read_bytes())
    assert normalization(load_model(lone, model="cnn")[1]) == (0.0, 1.0)


# ---- resume state: only our own, plain data loads -------------------------------------------


class Payload:  # a pickled custom object: torch.load(weights_only=True) must refuse it
    pass


def test_resume_state_refuses_pickles_and_foreign_files(tmp_path):
    torch.save({"epoch": 1, "obj": Payload()}, tmp_path / "resume.pt")
    with pytest.raises(CheckpointError, match=r"Cannot read resume state .*resume\.pt \(UnpicklingError\)"):
        ResumeState.load(tmp_path)
    torch.save({"epoch": 1}, tmp_path / "resume.pt")
    with pytest.raises(CheckpointError, match=r"not an fmnist resume state \(no model, optimizer, "
                                              r"recipe, rng, rows, scheduler\)"):
        ResumeState.load(tmp_path)
    torch.save(3, tmp_path / "resume.pt")
    with pytest.raises(CheckpointError, match="not an fmnist resume state"):
        ResumeState.load(tmp_path)


def test_resume_state_from_before_the_data_checks_still_loads(tmp_path):
    old = {"epoch": 2, "rows": [], "recipe": {}, "model": {}, "optimizer": {}, "scheduler": {},
           "rng": {"torch": torch.get_rng_state()}}
    torch.save(old, tmp_path / "resume.pt")
    state = ResumeState.load(tmp_path)
    assert state.epoch == 2 and state.mean is None and state.fingerprint is None
    assert state.world_size is None  # unknown: the process-count check is skipped
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "resume.pt").write_bytes(state.to_bytes())
    again = ResumeState.load(tmp_path / "again")
    assert (again.epoch, again.mean, again.world_size) == (2, None, None)
    assert torch.equal(again.rng["torch"], old["rng"]["torch"])


def test_normalization_defaults_to_plain_division():
    from fmnist.checkpoint import normalization

    assert normalization({}) == (0.0, 1.0)
    assert normalization({"normalize": {}}) == (0.0, 1.0)
    assert normalization({"normalize": {"mean": 0.3, "std": 0.4}}) == (0.3, 0.4)
