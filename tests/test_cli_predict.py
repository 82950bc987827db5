"""`fmnist predict` in-process: the seed's line, image files, Quickstart interop, error paths."""

from __future__ import annotations

import io
import json

import pytest
import torch
from conftest import FAKE_SPLIT_SIZE
from PIL import Image, ImageDraw
from quickstart_net import NeuralNetwork

import fmnist.datasets
from fmnist.checkpoint import FASHION_CLASSES, load_model
from fmnist.cli import main
from fmnist.inference import predict_logits
from fmnist.trust import UNCALIBRATED


@pytest.fixture
def quickstart_pth(tmp_path):
    torch.manual_seed(0)
    qs = NeuralNetwork()
    path = tmp_path / "model.pth"
    torch.save(qs.state_dict(), path)
    return qs.eval(), path


@pytest.fixture(autouse=True)
def _fresh_notes(monkeypatch):
    """Each command says its notes as a fresh process would (fmnist.trust.say_once)."""
    import fmnist.trust

    monkeypatch.setattr(fmnist.trust, "_said", set())


NOTE = f"fmnist: note: {UNCALIBRATED}\n"  # make_checkpoint's models were never calibrated


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, match, expected_code=2):
    assert code == expected_code
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fmnist: error: "), err
    assert match in lines[0]


def write_image(path, background="white", fill="black", size=(90, 70)):
    img = Image.new("RGB", size, background)
    ImageDraw.Draw(img).ellipse((10, 5, size[0] - 10, size[1] - 5), fill=fill)
    img.save(path)
    return path


# ---- --index: the seed's line ------------------------------------------------------------------


def test_index_prints_the_seed_line(make_checkpoint, fake_data, capsys):
    images, labels = fake_data
    folder = make_checkpoint("cnn")
    code, out, err = run(capsys, "predict", folder, "--index", 7)
    model, meta = load_model(folder)
    logits = predict_logits(model, torch.from_numpy(images[7:8]), 0.286, 0.353)
    expected = FASHION_CLASSES[int(logits.argmax())]
    # a checkpoint from before calibration: said on stderr; stdout is the seed's line
    assert code == 0 and err == NOTE
    assert out == f'Predicted: "{expected}", Actual: "{FASHION_CLASSES[labels[7]]}"\n'


def test_index_json(make_checkpoint, fake_data, capsys):
    code, out, _ = run(capsys, "predict", make_checkpoint(), "--index", 3, "--json")
    d = json.loads(out)
    assert code == 0 and d["actual"] == FASHION_CLASSES[3]
    assert sum(d["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert d["image"] == 3 and d["label"] == FASHION_CLASSES[d["index"]] and len(d["top"]) == 3


def test_index_predicts_with_the_runs_tta(make_checkpoint, fake_data, capsys):
    """A run evaluated with flip TTA is served with it (the accuracy it reports is the one it
    delivers); --no-tta overrides."""
    folder = make_checkpoint("cnn", {"widths": [4, 4, 8]})
    meta = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**meta, "tta_flip": True}))
    model, _ = load_model(folder)
    x = torch.from_numpy(fake_data[0][5:6])
    mean, std = meta["normalize"]["mean"], meta["normalize"]["std"]
    want = {tta: torch.softmax(predict_logits(model, x, mean, std, tta_flip=tta), 1)[0].tolist()
            for tta in (True, False)}
    assert want[True] != pytest.approx(want[False], abs=1e-7)
    for flags, tta in (((), True), (("--no-tta",), False)):
        _, out, _ = run(capsys, "predict", folder, "--index", 5, "--json", *flags)
        assert list(json.loads(out)["probabilities"].values()) == pytest.approx(want[tta], abs=1e-6)


def test_quickstart_pth_logits_equal_the_quickstart_model(quickstart_pth):
    qs, path = quickstart_pth
    model, meta = load_model(path, model="mlp")
    x = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    ours = predict_logits(model, x, meta["normalize"]["mean"], meta["normalize"]["std"])
    with torch.no_grad():
        theirs = qs(x.unsqueeze(1).float() / 255)  # what ToTensor() gives the Quickstart
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.realdata
def test_quickstart_pth_index_0_on_real_data(quickstart_pth, capsys):
    qs, path = quickstart_pth
    images, labels = fmnist.datasets.load_arrays("fashion-mnist", "test")
    with torch.no_grad():
        pred = qs(torch.from_numpy(images[0]).float().div(255).unsqueeze(0))
    expected = f'Predicted: "{FASHION_CLASSES[int(pred.argmax())]}", Actual: "Ankle boot"\n'
    code, out, err = run(capsys, "predict", path, "--model", "mlp", "--index", 0)
    assert (code, out, err) == (0, expected, NOTE)


# ---- image files --------------------------------------------------------------------------------


def test_files_and_folders_as_json(make_checkpoint, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    write_image(folder / "b.png")
    write_image(folder / "a.jpg", background="black", fill="white")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    single = write_image(tmp_path / "c.webp", size=(40, 120))
    code, out, err = run(capsys, "predict", make_checkpoint("cnn"), folder, single,
                         "--json", "--top-k", 2)
    rows = json.loads(out)
    assert code == 0 and err == NOTE
    assert [r["file"] for r in rows] == [str(folder / "a.jpg"), str(folder / "b.png"), str(single)]
    for r in rows:
        assert r["label"] in FASHION_CLASSES and len(r["top"]) == 2
        assert r["top"][0]["label"] == r["label"]
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_files_table_matches_the_predictor(make_checkpoint, tmp_path, capsys):
    from fmnist.images import open_image
    from fmnist.predict import Predictor

    ckpt = make_checkpoint("mlp")
    path = write_image(tmp_path / "shoe.png")
    code, out, _ = run(capsys, "predict", ckpt, path)
    expected = Predictor.from_checkpoint(ckpt).predict([open_image(path)])[0]
    header, row = out.strip().splitlines()
    assert code == 0 and header.split() == ["file", "prediction", "top-3"]
    assert row.startswith(str(path)) and expected.label in row
    assert f"{expected.top(1)[0][1]:.3f}" in row


def test_one_bad_file_among_good_ones_exits_1(make_checkpoint, tmp_path, capsys):
    good = write_image(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    code, out, err = run(capsys, "predict", make_checkpoint(), good, bad)
    assert code == 1 and "Traceback" not in err
    assert str(good) in out and str(bad) not in out
    assert f"fmnist: error: {bad} is not an image" in err
    assert "1 of 2 inputs could not be classified" in err


def test_bad_file_in_json_output(make_checkpoint, tmp_path, capsys):
    good = write_image(tmp_path / "good.png")
    code, out, _ = run(capsys, "predict", make_checkpoint(), good, tmp_path / "missing.png", "--json")
    rows = json.loads(out)
    assert code == 1 and "does not exist" in rows[1]["error"] and "label" in rows[0]


def test_all_files_bad_exits_2(make_checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "predict", make_checkpoint(), empty, tmp_path / "nope.png")
    assert code == 2 and "has no image files" in err and "does not exist" in err


# ---- error paths: exit 2, one line, no traceback -------------------------------------------------


def test_missing_checkpoint(tmp_path, capsys):
    code, _, err = run(capsys, "predict", tmp_path / "nowhere", "--index", 0)
    assert_user_error(code, err, "does not exist")


def test_checkpoint_of_another_architecture(make_checkpoint, fake_data, capsys):
    code, _, err = run(capsys, "predict", make_checkpoint("cnn"), "--model", "mlp", "--index", 0)
    assert_user_error(code, err, "holds a 'cnn' model, not 'mlp'")


def test_pth_loaded_as_another_architecture(quickstart_pth, fake_data, capsys):
    _, path = quickstart_pth
    code, _, err = run(capsys, "predict", path, "--model", "cnn", "--index", 0)
    assert_user_error(code, err, "does not fit model 'cnn'")


def test_unknown_model_name(make_checkpoint, capsys):
    code, _, err = run(capsys, "predict", make_checkpoint(), "--model", "vgg", "--index", 0)
    assert_user_error(code, err, "Unknown model 'vgg'. Valid models: mlp, cnn, resnet")


def test_non_image_file(make_checkpoint, tmp_path, capsys):
    path = tmp_path / "notes.png"
    path.write_text("hello")
    code, _, err = run(capsys, "predict", make_checkpoint(), path)
    assert_user_error(code, err, f"{path} is not an image")


def test_corrupt_image(make_checkpoint, tmp_path, capsys):
    buf = io.BytesIO()
    Image.effect_noise((100, 100), 40).save(buf, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[:300])
    code, _, err = run(capsys, "predict", make_checkpoint(), path)
    assert_user_error(code, err, "corrupt or truncated")


@pytest.mark.parametrize("index", [FAKE_SPLIT_SIZE, -1])
def test_index_out_of_range(make_checkpoint, fake_data, capsys, index):
    code, _, err = run(capsys, "predict", make_checkpoint(), "--index", index)
    assert_user_error(code, err, f"--index {index} is out of range")


def test_unknown_dataset(make_checkpoint, capsys):
    code, _, err = run(capsys, "predict", make_checkpoint(), "--index", 0, "--dataset", "cifar")
    assert_user_error(code, err, "Unknown dataset 'cifar'")


def test_index_and_files_together_or_neither(make_checkpoint, tmp_path, capsys):
    ckpt = make_checkpoint()
    code, _, err = run(capsys, "predict", ckpt, tmp_path / "x.png", "--index", 0)
    assert_user_error(code, err, "not both")
    code, _, err = run(capsys, "predict", ckpt)
    assert_user_error(code, err, "Nothing to predict")
    code, _, err = run(capsys, "predict", ckpt, tmp_path / "x.png", "--top-k", 0)
    assert_user_error(code, err, "--top-k must be at least 1")


def test_debug_shows_the_traceback(tmp_path):
    from fmnist.errors import CheckpointError

    with pytest.raises(CheckpointError):
        main(["predict", str(tmp_path / "nowhere"), "--index", "0", "--debug"])


def test_the_table_gives_each_set_in_words_and_marks_what_was_not_recognised(capsys):
    from fmnist.cli.predict import _print_table, trust_words
    from fmnist.predict import Prediction

    unsure = Prediction(6, "Shirt", {"Shirt": 0.55, "T-shirt/top": 0.4, "Coat": 0.05},
                        set=["Shirt", "T-shirt/top"], recognised=True, ood_score=0.8)
    strange = Prediction(2, "Coat", {"Shirt": 0.3, "T-shirt/top": 0.3, "Coat": 0.4},
                         set=[], recognised=False, ood_score=1.1)
    _print_table({"a.png": unsure, "b.png": strange}, 2, 0.9)
    lines = capsys.readouterr().out.splitlines()
    assert "set (90 %)" in lines[0]
    assert "Shirt or T-shirt/top" in lines[1] and "*" not in lines[1]
    assert "Coat *" in lines[2] and "no class likely enough" in lines[2]
    assert lines[3].startswith("* not recognised: 1 of 2")
    assert trust_words(unsure) == "set: Shirt or T-shirt/top"
    assert "NOT RECOGNISED" in trust_words(strange)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_device_picks_where_the_model_runs(make_checkpoint, fake_data, capsys, tmp_path, command):
    folder = make_checkpoint("mlp")
    extra = ["--index", 0] if command == "predict" else ["--out", tmp_path / "eval"]
    code, out, err = run(capsys, command, folder, *extra, "--device", "cpu")
    assert code == 0, err
    if not torch.cuda.is_available():  # asked for a GPU that is not there: one sentence
        code, out, err = run(capsys, command, folder, *extra, "--device", "cuda")
        assert_user_error(code, err, "no CUDA GPU is available")
