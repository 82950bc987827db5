"""The environment of a test's child Python process (`python -m fmnist serve`, a supervisor).

The child imports fmnist from this checkout's src/, after any PYTHONPATH already set: mutation
testing (`make mutants`) sets it to the mutated copy, and a child that put src/ first would run
the unmutated code and let every mutant it covers survive.
"""

from __future__ import annotations

import os
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def child_env(*folders: Path, **variables: str) -> dict[str, str]:
    """os.environ with PYTHONPATH = the one set already, then src/, then `folders`."""
    path = [p for p in (os.environ.get("PYTHONPATH"), str(SRC), *map(str, folders)) if p]
    return {**os.environ, **variables, "PYTHONPATH": os.pathsep.join(path)}
