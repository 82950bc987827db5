"""README.md and docs/*.md cannot drift from the interface: every `fmnist ...` command shown in
a code block parses with the real argument parser (nothing runs), every Python name the README
imports exists, every exit code is in the table, and no page holds a path of the machine it was
written on."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from fmnist.cli import EXIT_CODES, get_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([Path("README.md"), *(p.relative_to(ROOT) for p in (ROOT / "docs").glob("*.md"))])
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
# An absolute path outside the standard system locations (where packages, services and
# examples of installed software live) is a path of some machine: a temp folder, a home, a
# checkout. URLs (`http://host/x`, `sqlite:///x`) and HTTP routes (one segment) are not paths.
ABSOLUTE = re.compile(r"(?<![\w.:/~-])/(?!(?:usr|bin|sbin|lib|etc|proc|dev|opt|srv|mnt|sys|run|v\d+)/)"
                      r"[A-Za-z][\w.-]*/[\w./-]*")


def commands(text: str) -> list[str]:
    """The `fmnist ...` commands in the page's code blocks (also `python -m fmnist ...`,
    `torchrun ... -m fmnist ...`), continuation lines joined, `$ ` prompts dropped."""
    found = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("fmnist "):
                found.append(line)
            elif " -m fmnist " in line:
                found.append("fmnist " + line.split(" -m fmnist ", 1)[1])
    return found


def parse_error(command: str) -> str | None:
    """Why the parser refuses `command`, or None: parsed as `fmnist` parses it (files after
    options belong to a trailing file list), and nothing else."""
    argv = shlex.split(command, comments=True)[1:]
    parser = get_parser()
    parser.exit = lambda status=0, message=None: (_ for _ in ()).throw(  # type: ignore[method-assign]
        ValueError(message or f"exit {status}"))
    try:
        args, extra = parser.parse_known_args(argv)
    except ValueError as e:
        return str(e).strip()
    if extra and not (hasattr(args, "inputs") and not any(e.startswith("-") for e in extra)):
        return f"unrecognized arguments: {' '.join(extra)}"
    return None


def test_commands_are_found():
    shown = {p: commands((ROOT / p).read_text()) for p in PAGES}
    assert len(shown[Path("README.md")]) >= 15 and sum(map(len, shown.values())) >= 60


@pytest.mark.parametrize("page", PAGES, ids=str)
def test_every_command_shown_parses(page: Path):
    bad = {c: e for c in commands((ROOT / page).read_text()) if (e := parse_error(c))}
    assert not bad, f"{page}: commands the parser refuses: {bad}"


def test_a_stale_command_is_caught():
    assert parse_error("fmnist train --epochs 3 --recipe default") is None
    assert "--epohcs" in parse_error("fmnist train --epohcs 3")
    assert "invalid choice" in parse_error("fmnist runz")
    assert parse_error("fmnist predict runs/latest --top-k 5 a.png b.png") is None


def python_imports(text: str) -> list[tuple[str, str]]:
    """(module, name) for every `from M import a, b` and `import M` in the python blocks."""
    out = []
    for block in re.findall(r"^```python\n(.*?)^```", text, re.S | re.M):
        for module, names in re.findall(r"^from ([\w.]+) import ([\w, ]+)$", block, re.M):
            out += [(module, n.strip()) for n in names.split(",")]
        out += [(m, "") for m in re.findall(r"^import ([\w.]+)$", block, re.M)]
    return out


def missing_names(text: str) -> list[str]:
    missing = []
    for module, name in python_imports(text):
        try:
            if not hasattr(importlib.import_module(module), name or "__name__"):
                missing.append(f"{module}.{name}")
        except ImportError:
            missing.append(module)
    return missing


def test_every_python_name_the_readme_shows_exists():
    text = (ROOT / "README.md").read_text()
    assert len(python_imports(text)) >= 7
    assert not missing_names(text)


def test_a_missing_name_is_caught():
    text = "```python\nfrom fmnist.predict import Predictor, Predicter\nimport fmnist.nowhere\n```\n"
    assert missing_names(text) == ["fmnist.predict.Predicter", "fmnist.nowhere"]


def absolute_paths(text: str) -> list[str]:
    return ABSOLUTE.findall(text)


@pytest.mark.parametrize("page", [*PAGES, Path("benchmarks/results/history.md")], ids=str)
def test_no_page_holds_a_machines_path(page: Path):
    assert not absolute_paths((ROOT / page).read_text()), page


def test_an_absolute_path_is_caught():
    assert absolute_paths("ran `fmnist sweep --out /tmp/lead/sweep` here") == ["/tmp/lead/sweep"]
    assert absolute_paths("`--data-dir /home/me/data`, /work/main/x.toml") == [
        "/home/me/data", "/work/main/x.toml"]
    assert not absolute_paths("Debian's /usr/share/datasets/x/, http://127.0.0.1:8000/v1/model, "
                              "sqlite:///shared/x.db, 28/28, img/s, GET /readyz, /bin/kill")


def test_every_exit_code_is_in_the_docs_table():
    table = (ROOT / "docs/cli.md").read_text().split("## Exit codes", 1)[1]
    assert {int(c) for c in re.findall(r"^\| (\d+) \|", table, re.M)} == set(EXIT_CODES)
