"""The command line itself: every `--help` answers without importing torch, `--version`, the
examples in the top-level help, the names `--help` lists without importing their modules, old
names kept as hidden aliases, run names from `fmnist runs`, and the exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fmnist import __version__
from fmnist.cli import EXAMPLES, get_parser, main
from fmnist.cli.common import DATASET_NAMES, DEFAULT_DATASET, MODEL_NAMES, run_path


def commands() -> list[list[str]]:
    """Every sub-command (and `data`'s actions) as argv, from the parser itself."""
    sub = next(a for a in get_parser()._actions if a.dest == "command")
    out = []
    for choice in sub._choices_actions:
        out.append([choice.dest])
        leaves = [a for a in sub.choices[choice.dest]._actions if a.dest == "data_command"]
        out += [[choice.dest, leaf.dest] for a in leaves for leaf in a._choices_actions]
    return out


def test_every_command_is_found():
    found = {" ".join(c) for c in commands()}
    assert {"train", "recipes", "demo", "runs", "serve", "data info", "data fetch"} <= found
    assert "run" not in found  # the old name works (below) but is not listed


HELP_IMPORTS = """
import sys
from fmnist.cli import main
for argv in {argvs!r}:
    try:
        main([*argv, "--help"])
    except SystemExit:
        pass
print("\\nIMPORTED:", sorted(m for m in ("torch", "numpy", "matplotlib") if m in sys.modules))
"""


def test_help_imports_no_torch():
    argvs = [[], *commands()]
    proc = subprocess.run([sys.executable, "-c", HELP_IMPORTS.format(argvs=argvs)],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.count("usage: fmnist") == len(argvs)
    assert proc.stdout.rstrip().endswith("IMPORTED: []"), proc.stdout[-300:]


def test_names_listed_without_importing_their_modules_match_them():
    from fmnist.datasets import DEFAULT_DATASET as dataset
    from fmnist.datasets import SPECS
    from fmnist.models import MODELS

    assert tuple(MODELS) == MODEL_NAMES
    assert tuple(SPECS) == DATASET_NAMES and dataset == DEFAULT_DATASET


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"fmnist {__version__}"


def test_the_help_shows_examples_that_parse(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "examples:\n  fmnist data info" in capsys.readouterr().out
    lines = [line.split("   ")[0].split() for line in EXAMPLES.splitlines()
             if line.startswith("  fmnist ")]
    assert len(lines) >= 8
    for words in lines:
        get_parser().parse_args(words[1:])  # exits 2 on a stale example


def test_train_flags_show_the_default_recipe(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--epochs EPOCHS [default recipe: 4]" in out and "[default recipe: on]" in out


@pytest.mark.parametrize("old, new, hidden", [
    (["run", "--epochs", "1"], ["demo", "--epochs", "1"], "run"),
    (["lr-find", "--steps", "40"], ["lr-find", "--test-steps", "40"], "--steps"),
    (["sweep", "--budget", "5m"], ["sweep", "--time-budget", "5m"], "--budget"),
])
def test_old_names_still_work_unlisted(old, new, hidden, capsys):
    a, b = get_parser().parse_args(old), get_parser().parse_args(new)
    assert vars(a) | {"command": None} == vars(b) | {"command": None}
    with pytest.raises(SystemExit):
        main(["--help"] if hidden == "run" else [old[0], "--help"])
    # the options' and commands' lines, without their help text: "  --steps N", "    demo (run)"
    listed = [re.split(r"\s{2,}", line.strip())[0] for line in capsys.readouterr().out.splitlines()
              if re.match(r"( {4}\S| {2}-)", line)]
    assert not [x for x in listed if re.search(rf"(^|[ (,]){hidden}($|[ ),])", x)], listed
    assert hidden != "run" or "demo" in listed


def test_runs_takes_its_folder_as_dir_or_as_before(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    assert main(["runs", "--dir", "elsewhere"]) == 0 and main(["runs", "elsewhere"]) == 0
    assert capsys.readouterr().out == "No runs in elsewhere.\n" * 2


def test_a_run_name_from_fmnist_runs_works_where_a_run_is_expected(tmp_path, monkeypatch,
                                                                    make_checkpoint, capsys):
    monkeypatch.chdir(tmp_path)
    ckpt = make_checkpoint(name="runs/2026-01-02-0304-default")
    assert run_path("2026-01-02-0304-default") == str(Path("runs") / ckpt.name)
    assert run_path("nowhere") == "nowhere"  # not a run: left for the command to report
    code = main(["export", "2026-01-02-0304-default", "--format", "pth", "--out", "m.pth"])
    assert code == 0 and (tmp_path / "m.pth").is_file()


def test_recipes_dry_run_shows_what_flags_change(capsys, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("lr = 0.05\n")
    assert main(["recipes", "default", "--config", str(config), "--epochs", "8", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["changes"] == {"lr": {"recipe": 0.1, "effective": 0.05},
                                "epochs": {"recipe": 4, "effective": 8},
                                "min_steps": {"recipe": 100, "effective": 0}}
    assert main(["recipes"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["field", "quickstart", "default", "best", "flag"]
    assert main(["recipes", "default", "--epochs", "0"]) == 2  # train's own checks


def test_divergence_has_its_own_exit_code(tmp_path, capsys):
    from synthetic import write_csv

    config = tmp_path / "r.json"
    # lr 10 makes the mlp's loss NaN in its first epoch
    config.write_text(json.dumps({"bf16": "off", "device": "cpu", "model": "mlp", "epochs": 2,
                                  "batch_size": 32, "lr": 10.0,
                                  "dataset": write_csv(tmp_path / "data")}))
    code = main(["train", "--config", str(config), "--out", str(tmp_path / "run"),
                 "--no-tensorboard"])
    assert code == 3 and "Training diverged" in capsys.readouterr().err
