import json

import pytest

from fmnist.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, message", [
    (["--recipe", "fast"], "Unknown recipe 'fast'. Valid recipes: quickstart, default, best."),
    (["--model", "vgg"], "Unknown model 'vgg'. Valid models: mlp, cnn, resnet."),
    (["--epochs", "0"], "epochs must be positive, got 0."),
    (["--optimizer", "lbfgs"], "Invalid optimizer 'lbfgs'. Only sgd, adamw, muon are supported."),
    (["--device", "tpu"], "Invalid device 'tpu'. Only auto, cpu, cuda, mps are supported."),
    (["--config", "missing.toml"], "Cannot read config file missing.toml"),
    (["--resume", "nowhere"], "Cannot resume from nowhere: it has no resume.pt"),
    (["--resume", "somewhere", "--epochs", "3"], "--resume continues a run with its saved"),
])
def test_user_errors_are_one_line(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "train", *argv)
    assert code == 2
    assert err.startswith("fmnist: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_config_file_contents(capsys, tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("epochs = [")
    code, _, err = run_cli(capsys, "train", "--config", str(bad))
    assert code == 2 and "is not valid TOML" in err
    bad.write_text("epoch = 3\n")
    code, _, err = run_cli(capsys, "train", "--config", str(bad))
    assert code == 2 and "Unknown recipe field(s) epoch" in err


def test_config_file_then_flags(tmp_path):
    from fmnist.cli import get_parser
    from fmnist.cli.train import recipe_from_args

    config = tmp_path / "c.toml"
    config.write_text('model = "mlp"\nepochs = 7\nlr = 0.5\n[model_config]\nhidden = 64\n')
    args = get_parser().parse_args(["train", "--config", str(config), "--lr", "0.01",
                                    "--no-tta-flip"])
    recipe = recipe_from_args(args)
    assert (recipe.model, recipe.epochs, recipe.lr, recipe.model_config, recipe.tta_flip) == (
        "mlp", 7, 0.01, {"hidden": 64}, False)
    # the effective config written into a run folder is accepted back as --config
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps({"model": "mlp", "epochs": 2}))
    args = get_parser().parse_args(["train", "--config", str(saved)])
    assert recipe_from_args(args).epochs == 2


def test_debug_shows_the_traceback(capsys):
    from fmnist.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["train", "--recipe", "fast", "--debug"])


def test_an_unwritable_out_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "train", "--recipe", "quickstart", "--epochs", "1",
                           "--out", str(blocker / "run"))
    assert code == 2 and err.startswith("fmnist: error: ") and "Traceback" not in err
    assert err.count("\n") == 1 and "afile" in err


@pytest.mark.parametrize("toml, message", [
    ('epochs = "ten"', "Recipe field epochs must be a whole number, got 'ten'."),
    ("model_config = 5", "Recipe field model_config must be a table, got 5."),
    ("flip = 1", "Recipe field flip must be true or false, got 1."),
    ('model = "mlp"\n[model_config]\nhidden = "x"', "Bad model_config for 'mlp'"),
])
def test_config_values_of_the_wrong_type_are_one_line(capsys, tmp_path, toml, message):
    config = tmp_path / "c.toml"
    config.write_text(toml + "\n")
    code, _, err = run_cli(capsys, "train", "--config", str(config), "--out", str(tmp_path / "r"))
    assert code == 2 and message in err and "Traceback" not in err


def test_another_model_drops_the_recipes_model_config():
    from fmnist.recipes import apply_overrides, get_recipe

    default = get_recipe("default")
    assert default.model_config  # the default cnn has its own widths
    assert apply_overrides(default, {"model": "mlp"}).model_config == {}
    kept = apply_overrides(default, {"model": "resnet", "model_config": {"blocks": [1, 1, 1]}})
    assert kept.model_config == {"blocks": [1, 1, 1]}


def test_run_names_what_it_trains():
    from fmnist.cli.demo import recipe_line
    from fmnist.recipes import apply_overrides, get_recipe

    assert recipe_line(get_recipe("default")).startswith(
        "Training recipe 'default': cnn (first conv whitened, last stage pooled), 4 epochs")
    assert recipe_line(get_recipe("quickstart")).startswith("Training recipe 'quickstart': mlp, 5 epochs")
    muon = apply_overrides(get_recipe("default"), {"optimizer": "muon", "lr": 0.2, "muon_lr": 0.05})
    assert recipe_line(muon).endswith(", muon lr 0.2, filters' lr 0.05")
    assert recipe_line(get_recipe("default")).endswith(f"sgd lr {get_recipe('default').lr}")


@pytest.mark.realdata
def test_run_is_the_whole_workflow(capsys, tmp_path):
    import re

    code, out, _ = run_cli(capsys, "run", "--recipe", "quickstart", "--epochs", "1",
                           "--out", str(tmp_path / "r"))
    assert code == 0
    assert re.search(r'^Predicted: "Ankle boot", Actual: "Ankle boot"$', out, re.M)
    assert "Done!" in out and "confusion matrix" in out.lower()
    for name in ("model.safetensors", "model.json", "curves.png", "confusion.png"):
        assert (tmp_path / "r" / name).is_file(), name
    assert f"Run folder: {tmp_path / 'r'}" in out
