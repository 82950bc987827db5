"""The package as a user gets it: build the sdist and, from it, the wheel; install the wheel
into a fresh venv (outside this checkout) and run `fmnist` from there. This catches what a
checkout hides: a module, the web page's static files or the licence left out of the wheel.

The fresh venv reuses this environment's dependencies (torch among them) through a .pth line
instead of installing them again, so the test takes seconds and needs no network; fmnist itself
comes from the wheel only (this environment's editable install is a .pth file of its own, and
.pth files are not read from a path added that way)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import fmnist

ROOT = Path(__file__).resolve().parent.parent
UV = Path(sys.executable).parent / "uv"
STATIC = sorted(p.name for p in (ROOT / "src/fmnist/serve/static").iterdir())

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not UV.exists(), reason=f"uv not found beside {sys.executable} "
                                               "(make setup installs it)"),
]


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    # --no-build-isolation: the setuptools installed here, no download of a build environment
    subprocess.run([str(UV), "build", "--no-build-isolation", "--offline", "--python",
                    sys.executable, "--out-dir", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    return {"wheel": next(out.glob("fmnist-*.whl")), "sdist": next(out.glob("fmnist-*.tar.gz"))}


@pytest.fixture(scope="module")
def venv(dists: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True,
                   timeout=120)
    python = root / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "fmnist-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(UV), "pip", "install", "--offline", "--no-deps", "--python", str(python),
                    str(dists["wheel"])], check=True, capture_output=True, timeout=300)
    return root


def run(venv: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_wheel_holds_the_package_its_page_and_licence(dists):
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "fmnist/cli/__init__.py" in names and "fmnist/train/whitening.py" in names
    assert {f"fmnist/serve/static/{n}" for n in STATIC} <= set(names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
    assert "License-Expression: MIT" in metadata and "Requires-Python: >=3.11" in metadata


def test_the_sdist_holds_what_the_wheel_is_built_from(dists):
    with tarfile.open(dists["sdist"]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"LICENSE", "README.md", "pyproject.toml", "src/fmnist/serve/static/index.html"} <= names


def test_fmnist_runs_from_the_installed_wheel(venv, tmp_path):
    where = run(venv, "python", "-c", "import fmnist; print(fmnist.__file__)", cwd=tmp_path)
    assert where.returncode == 0 and where.stdout.startswith(str(venv)), where.stdout + where.stderr
    version = run(venv, "fmnist", "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"fmnist {fmnist.__version__}"
    helped = run(venv, "fmnist", "recipes", cwd=tmp_path)
    assert helped.returncode == 0 and "quickstart" in helped.stdout
    page = run(venv, "python", "-c", "from importlib.resources import files; "
               "print(sorted(p.name for p in files('fmnist.serve').joinpath('static').iterdir()))",
               cwd=tmp_path)
    assert page.stdout.strip() == str(STATIC), page.stderr


@pytest.mark.realdata
def test_data_info_from_the_installed_wheel(venv, tmp_path):
    info = run(venv, "fmnist", "data", "info", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert "Fashion-MNIST" in info.stdout and "verified" in info.stdout
