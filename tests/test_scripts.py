"""`make test SYSTEM_PACKAGES=no` and scripts/ensure-deb.sh, which `make test` uses to install Chromium and PostgreSQL with apt:
with SYSTEM_PACKAGES=no (`make test SYSTEM_PACKAGES=no`) it never calls apt and says what will
be skipped. apt-get is a stand-in on PATH that records its calls."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def ensure_deb(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], str]:
    bin_dir, calls = tmp_path / "bin", tmp_path / "apt-calls"
    bin_dir.mkdir()
    for tool in ("apt-get", "sudo"):  # apt-get fails, as without the package lists
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\nexit 1\n')
        (bin_dir / tool).chmod(0o755)
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts/ensure-deb.sh"), str(tmp_path / "no-such-binary"),
         "some-package", "the some tests are skipped"],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env},
        capture_output=True, text=True, timeout=60)
    return proc, calls.read_text() if calls.exists() else ""


@pytest.mark.skipif(os.geteuid() != 0, reason="the script asks apt only as root or with sudo")
def test_it_asks_apt_by_default(tmp_path):
    proc, calls = ensure_deb(tmp_path)
    assert proc.returncode == 0 and "apt-get install" in calls and "could not install" in proc.stderr


def test_system_packages_no_installs_nothing_and_says_so(tmp_path):
    proc, calls = ensure_deb(tmp_path, SYSTEM_PACKAGES="no")
    assert proc.returncode == 0 and calls == ""
    assert "SYSTEM_PACKAGES=no" in proc.stderr and "the some tests are skipped" in proc.stderr


@pytest.mark.parametrize("given, seen", [([], "yes"), (["SYSTEM_PACKAGES=no"], "no")])
def test_make_passes_the_variable_to_the_scripts(given, seen):
    # a target added on the command line prints what a recipe's shell (a script) sees
    proc = subprocess.run(["make", "-s", "--no-print-directory", "--eval",
                           'print-env: ; @echo "$$SYSTEM_PACKAGES"', "print-env", *given],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == seen, proc.stderr
