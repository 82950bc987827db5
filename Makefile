# The project's front door. `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup data run test lint bench browser clean

setup: $(STAMP) data

# torch first, pinned: this resolves to the CPU build on local disk here; an unpinned
# torch pulled in by a dependency would be a multi-GB CUDA download.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[serve,onnx,dev]'
	touch $@

# Make sure the real Fashion-MNIST is present and verified (installs Debian's
# dataset-fashion-mnist when nothing else has it and apt is available).
data: $(STAMP)
	bash scripts/ensure-data.sh $(PY)

# The main job: train the default recipe on the real data, evaluate, save, reload, predict.
run: setup
	$(PY) -m fmnist run

test: setup
	bash scripts/ensure-browser.sh
	$(PY) -m pytest -q
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m mypy src

lint: setup
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m mypy src

bench: setup
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
