"""Mutation testing of one module: `make mutants MODULE=rundir` (not in CI: minutes to hours).

mutmut plants one small bug at a time (a `<` for a `<=`, a dropped call, a changed constant) into
the module and runs the tests that cover it: a bug no test notices is a survivor. The settings
are pyproject.toml's [tool.mutmut]; its `modules` table names, for each module, the few test files
that cover it, so a run does not pay for the whole suite on every mutant.

Each module runs in its own copy of the project, .mutants/<module>/ (two modules can run at
once; `cd .mutants/<module> && mutmut show <name>` shows a survivor afterwards), with only that
module mutated and only its tests run. PYTHONPATH points at the mutated copy, so the tests' own
subprocesses (`python -m fmnist ...`, a signalled run) run the mutant too. MUTANTS_SUFFIX=-after
keeps a second run of the same module apart (.mutants/<module>-after/: a before/after score).
MUTANTS_ONLY=FILE runs only the mutants named in FILE (one a line, as `mutmut results` names
them): an earlier run's survivors, against the tests written since.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def settings() -> tuple[dict, dict[str, list[str]]]:
    mutmut = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    modules = mutmut.pop("modules")
    return mutmut, modules


def module_glob(module: str) -> str:
    """`rundir` -> src/fmnist/rundir.py; `sweep` (a package) -> src/fmnist/sweep/*."""
    path = ROOT / "src" / "fmnist" / module
    return f"src/fmnist/{module}/*" if path.is_dir() else f"src/fmnist/{module}.py"


def pyproject_for(module: str, common: dict, tests: list[str]) -> str:
    """The project's pyproject.toml with its [tool.mutmut] tables replaced by this module's."""
    text = (ROOT / "pyproject.toml").read_text()
    text = re.sub(r"^\[tool\.mutmut[^\n]*\n(?:(?!\[)[^\n]*\n)*", "", text, flags=re.M)
    ours = {**common, "only_mutate": [module_glob(module)],
            "pytest_add_cli_args_test_selection": tests}
    lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in ours.items())
    return f"{text}\n[tool.mutmut]\n{lines}"


def main(argv: list[str]) -> int:
    common, modules = settings()
    if not argv or argv[0] not in modules:
        print(f"Usage: make mutants MODULE=<one of: {', '.join(modules)}> [TESTS='test files "
              "to run instead of the module's own']", file=sys.stderr)
        return 2
    module, tests = argv[0], argv[1:] or modules[argv[0]]
    work = ROOT / ".mutants" / (module.replace("/", "-") + os.environ.get("MUTANTS_SUFFIX", ""))
    shutil.rmtree(work, ignore_errors=True)  # mutmut keeps what it finds: start clean
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    (work / "pyproject.toml").write_text(pyproject_for(module, common, tests))
    # made now, not by mutmut: a PYTHONPATH folder missing when Python starts is remembered as
    # missing (sys.path_importer_cache), and the tests would quietly import the unmutated code
    (work / "mutants" / "src").mkdir(parents=True)
    # one thread: mutmut forks a test process per mutant from one that has run torch, and a
    # forked OpenMP pool hangs (every mutant of a torch-using test "timed out" with more)
    env = {**os.environ, "PYTHONPATH": str(work / "mutants" / "src"), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    children = os.environ.get("MUTANTS_CHILDREN", "1")  # 2 shared cores: one test run at a time
    only = os.environ.get("MUTANTS_ONLY")
    names = Path(only).read_text().split() if only else []
    run = subprocess.run([mutmut, "run", "--max-children", children, *names], cwd=work, env=env)
    if run.returncode != 0:
        return run.returncode
    subprocess.run([mutmut, "results"], cwd=work, env=env, check=True)
    subprocess.run([mutmut, "export-cicd-stats"], cwd=work, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
    tested = stats["total"] - stats.get("skipped", 0)
    caught = stats["killed"] + stats.get("timeout", 0)
    print(f"{module}: {caught} of {tested} mutants killed ({100 * caught / max(1, tested):.1f} %); "
          f"{stats.get('survived', 0)} survived. See one: cd {work.relative_to(ROOT)} && "
          f"mutmut show <name>")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
