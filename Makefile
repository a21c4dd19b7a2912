# One-command entry points. Everything installs into .venv from pinned versions.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/dagster_home
# llama-cpp-python compiles from source; use both cores.
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: install demo test dev bench bench-modes clean-results

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: install
	$(PY) -W ignore -m neuron_assets.demo

test: install
	$(PY) -m pytest

dev: install
	$(VENV)/bin/dagster dev -w workspace.yaml

bench: install
	$(PY) -W ignore -m neuron_assets.bench $(ARGS)

# The simulator modes side by side on the local llama.cpp server: costs, speed-up, agreement.
bench-modes: install
	$(PY) -W ignore -m neuron_assets.bench_modes $(ARGS)

clean-results:
	rm -rf data
