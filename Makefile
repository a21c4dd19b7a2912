# One-command entry points. Everything installs into .venv from pinned versions.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/dagster_home
# llama-cpp-python compiles from source; use both cores.
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
# ...for a fixed x86-64 baseline (AVX2, FMA, F16C, BMI2), not -march=native: a native build
# uses every extension the build host advertises, and some virtual machines advertise AMX
# and then trap it (llama.cpp died with "invalid opcode"). See neuron_assets/llama_build.py.
LLAMA_CPP := $(shell grep -i '^llama[-_]cpp[-_]python==' requirements.lock)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
# The wheel is kept outside the venv, in a folder named after what it was built from, so a
# new venv reuses it and a change of version or flags builds a new one.
LLAMA_WHEELS := .wheels/$(shell echo '$(LLAMA_CPP) $(LLAMA_CMAKE_ARGS)' | sha1sum | cut -c1-12)

.PHONY: install demo test dev bench bench-modes bench-llama-build clean-results

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock $(LLAMA_WHEELS)/.built
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --find-links $(LLAMA_WHEELS) -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --force-reinstall $(LLAMA_WHEELS)/*.whl
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Built from the source distribution with pip's cache off, so no wheel built natively
# elsewhere on this machine can stand in for it.
$(LLAMA_WHEELS)/.built: requirements.lock
	rm -rf $(LLAMA_WHEELS) && mkdir -p $(LLAMA_WHEELS)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PYTHON) -m pip wheel --quiet --no-deps --no-cache-dir \
		--no-binary llama-cpp-python "$(LLAMA_CPP)" -w $(LLAMA_WHEELS)
	touch $@

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

# The portable llama.cpp build against one compiled natively for this host (-march=native, the
# llama-cpp-python default), side by side; the native one also as-is, to show whether it crashes here.
LLAMA_NATIVE_WHEELS := .wheels/native-$(shell echo '$(LLAMA_CPP)' | sha1sum | cut -c1-12)
$(LLAMA_NATIVE_WHEELS)/.built: requirements.lock
	rm -rf $(LLAMA_NATIVE_WHEELS) && mkdir -p $(LLAMA_NATIVE_WHEELS)
	CMAKE_ARGS= $(PYTHON) -m pip wheel --quiet --no-deps --no-cache-dir \
		--no-binary llama-cpp-python "$(LLAMA_CPP)" -w $(LLAMA_NATIVE_WHEELS)
	touch $@

bench-llama-build: install $(LLAMA_NATIVE_WHEELS)/.built
	rm -rf .wheels/installed
	$(PY) -m pip install --quiet --no-deps --target .wheels/installed/portable $(LLAMA_WHEELS)/*.whl
	$(PY) -m pip install --quiet --no-deps --target .wheels/installed/native $(LLAMA_NATIVE_WHEELS)/*.whl
	$(PY) -W ignore -m neuron_assets.bench_llama_build --as-is $(ARGS) \
		portable=.wheels/installed/portable native=.wheels/installed/native

clean-results:
	rm -rf data
