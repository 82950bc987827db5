# The project's front door. `make run` and `make test` work on a fresh clone.
#
# What they install:
#   make run    .venv (Python >= 3.11): torch 2.13.0, uv, fmnist and its dependencies, TensorBoard;
#               the real Fashion-MNIST (Debian's dataset-fashion-mnist via apt where apt exists,
#               else a verified download into the user cache)
#   make test   the above, plus the server, ONNX, Optuna and the test tools in .venv, and two
#               system packages via apt (scripts/ensure-*.sh): chromium (the browser tests) and
#               postgresql (the shared-study sweep test)
# Variables:
#   SYSTEM_PACKAGES=no   install nothing with apt: the data is downloaded instead, and the tests
#                        needing a missing chromium or postgresql are skipped, saying why
#   TORCH_INDEX=URL      where pip gets torch, e.g. https://download.pytorch.org/whl/cpu (the CPU
#                        build; pip's default on Linux is a CUDA build of several GB)
PYTHON ?= python3
SYSTEM_PACKAGES ?= yes
TORCH_INDEX ?=
export SYSTEM_PACKAGES
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check
# uv installs the package's dependencies several times faster than pip (measured cold: 3 s vs
# 17 s for `make run`'s); torch stays with pip, which finds the CPU wheel on local disk (uv
# does not look there and would fetch a CUDA build).
# --compile-bytecode: uv (unlike pip) installs no .pyc files, and where PYTHONDONTWRITEBYTECODE
# is set (many Docker images; this machine) Python never writes them, so every `fmnist train`
# compiled numpy, matplotlib, tensorboard and PIL again: 467 modules, 1.24 s on a 2-core AMD
# EPYC, class avx2 (benchmarks/results/2026-11-27-amd-epyc-2c-quickstart-floor.md).
UV     := $(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY)
# What the main job needs, and the extras that testing, serving and exporting add.
RUN_STAMP  := $(VENV)/.installed-run
FULL_STAMP := $(VENV)/.installed-full

.PHONY: setup setup-full data run test lint lint-only bench bench-serve mutants clean

setup: $(RUN_STAMP) data

# torch first, pinned: this resolves to the CPU build on local disk here; an unpinned
# torch pulled in by a dependency would be a multi-GB CUDA download. TensorBoard (an optional
# extra: training logs to it when it is installed) comes with every setup.
$(RUN_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.13.0
	$(PIP) uv
	$(UV) -e '.[tensorboard]'
	touch $@

# The server, ONNX export, sweeps (Optuna) and the test tools: only `make test` (and `make setup-full`) need them.
$(FULL_STAMP): $(RUN_STAMP)
	$(UV) -e '.[serve,onnx,sweep,dev]'
	touch $@

setup-full: $(FULL_STAMP) data

# Make sure the real Fashion-MNIST is present and verified (installs Debian's
# dataset-fashion-mnist when nothing else has it and apt is available).
data: $(RUN_STAMP)
	bash scripts/ensure-data.sh $(PY)

# The main job: train the default recipe on the real data, evaluate, save, reload, predict.
run: setup
	$(PY) -m fmnist demo

test: setup-full
	bash scripts/ensure-browser.sh
	bash scripts/ensure-deb.sh /usr/lib/postgresql postgresql "the shared-study sweep test is skipped"
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory lint-only

lint: setup-full lint-only

# ruff, mypy, and the layering (import-linter's contracts in pyproject.toml: a module importing
# a higher layer, or an import circle, fails the build).
lint-only:
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m mypy src
	$(VENV)/bin/lint-imports --no-cache

bench: setup-full
	$(PY) -m benchmarks

# `fmnist serve` under load from wrk (Debian's package, installed here), against the server
# without batching and an in-process ceiling, in one run.
bench-serve: setup-full
	bash scripts/ensure-deb.sh /usr/bin/wrk wrk "the load benchmark cannot run"
	$(PY) -m benchmarks.serve_load

# Mutation testing of one module (MODULE=rundir, train/stops, budget, ...: pyproject.toml's
# [tool.mutmut.modules]); slow, so never part of `make test`. mutmut is installed here only.
mutants: setup-full
	$(PIP) mutmut==3.8.1
	$(PY) scripts/mutants.py $(MODULE) $(TESTS)

clean:
	rm -rf $(VENV) runs .pytest_cache
