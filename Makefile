# One-command entry points. Everything installs into .venv from pinned versions.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/dagster_home
# llama-cpp-python compiles from source; use both cores.
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
# ...once, for fixed instruction sets, not -march=native: a native build uses every extension
# the build host advertises, and some virtual machines advertise AMX and then trap it
# (llama.cpp died with "invalid opcode"). The portable build (AVX2, FMA, F16C, BMI2) goes into
# the venv and runs on any x86-64 host with AVX2. Only llama.cpp's CPU backend
# (libggml-cpu.so, the one library compiled for an instruction set) is compiled a second
# time, with AVX-512 (no AMX): the avx512 variant is the portable build with that library
# swapped in, and the local server starts with it where the CPU offers AVX-512 and it really
# runs (else the portable one). See neuron_assets/llm/llama_build.py. The multimodal library
# (LLAVA_BUILD) is not built: nothing here serves images.
# Every dependency's exact version, installed by `make install` (kept in .ci/ so the top level
# holds only what the layout names).
LOCK := .ci/requirements.lock
LLAMA_CPP := $(shell grep -i '^llama[-_]cpp[-_]python==' $(LOCK))
LLAMA_VERSION := $(lastword $(subst ==, ,$(LLAMA_CPP)))
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_BMI2=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF \
	-DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_AVX512_CMAKE_ARGS := $(LLAMA_CMAKE_ARGS) -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON
LLAMA_VARIANTS := $(VENV)/llama-cpp-variants
# Builds are kept outside the venv, in folders named after what they were built from, so a
# new venv reuses them and a change of version or flags builds anew (the folder name says
# both, so another edit of the lock file, such as a new package, rebuilds nothing). The
# source distribution is downloaded once, into a folder named after its version.
build_dir = .wheels/$(shell echo '$(LLAMA_CPP) $(1)' | sha1sum | cut -c1-12)
LLAMA_SDIST_DIR := .wheels/sdist-$(LLAMA_VERSION)
LLAMA_WHEELS := $(call build_dir,$(LLAMA_CMAKE_ARGS))
LLAMA_AVX512_CPU := $(call build_dir,ggml-cpu $(LLAMA_AVX512_CMAKE_ARGS))
LLAMA_NATIVE_WHEELS := $(call build_dir,native)
LLAMA_SERVER := $(call build_dir,llama-server $(LLAMA_CMAKE_ARGS))

# For the tests only: GPT-2's real byte-level BPE, which openai-whisper ships as a data file
# (whisper/assets/gpt2.tiktoken; tests/gpt2_tokenizer.py builds GPT-2's tokenizer from it, as no
# test reaches a model hub). --no-deps and never imported: its own dependencies (torch's triton,
# tiktoken, ...) are not needed to read one file. Not in the lock file, which is installed
# with its dependencies. A stamp of its own, so an existing venv gets it from `make install`.
WHISPER_VERSION := 20250625
TEST_ASSETS := $(VENV)/.openai-whisper-$(WHISPER_VERSION)

.PHONY: install demo ablation directions puzzles test test-fast lint view dev bench bench-ablation bench-memory bench-llm bench-cache bench-storage bench-viewer study-results bench-modes bench-puzzles bench-llama-build llama-server clean-results

install: $(STAMP) $(TEST_ASSETS)

$(STAMP): pyproject.toml $(LOCK) $(LLAMA_WHEELS)/.built $(LLAMA_AVX512_CPU)/.built
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --find-links $(LLAMA_WHEELS) -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --force-reinstall $(LLAMA_WHEELS)/*.whl
	rm -rf $(LLAMA_VARIANTS) && $(PY) -m pip install --quiet --no-deps --target $(LLAMA_VARIANTS)/avx512 $(LLAMA_WHEELS)/*.whl
	for lib in $(LLAMA_VARIANTS)/avx512/llama_cpp/lib/libggml-cpu.so*; do cp $(LLAMA_AVX512_CPU)/libggml-cpu.so $$lib; done
	echo '$(LLAMA_AVX512_CMAKE_ARGS)' > $(LLAMA_VARIANTS)/avx512/cmake-args
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

$(TEST_ASSETS): $(STAMP)
	$(PY) -m pip install --quiet --no-deps openai-whisper==$(WHISPER_VERSION)
	rm -f $(VENV)/.openai-whisper-* && touch $@

$(LLAMA_SDIST_DIR)/.downloaded:
	rm -rf $(dir $@) && mkdir -p $(dir $@)
	$(PYTHON) -m pip download --quiet --no-deps --no-binary :all: --no-cache-dir "$(LLAMA_CPP)" -d $(dir $@)
	touch $@

# A wheel built from the source distribution with pip's cache off, so no wheel built natively
# elsewhere on this machine can stand in for it.
define build_llama_wheel
	rm -rf $(dir $@) && mkdir -p $(dir $@)
	CMAKE_ARGS="$(1)" $(PYTHON) -m pip wheel --quiet --no-deps --no-cache-dir $(LLAMA_SDIST_DIR)/*.tar.gz -w $(dir $@)
	touch $@
endef

$(LLAMA_WHEELS)/.built: $(LLAMA_SDIST_DIR)/.downloaded
	$(call build_llama_wheel,$(LLAMA_CMAKE_ARGS))

# The CPU backend alone, configured from the same source and arguments as the wheel (a
# Release build, as pip's build of the wheel is) with AVX-512 on: only ggml-base and
# ggml-cpu are compiled. The machine code is the same as a whole wheel built with these
# arguments gives (checked instruction by instruction with objdump on 0.3.36).
$(LLAMA_AVX512_CPU)/.built: $(LLAMA_SDIST_DIR)/.downloaded
	@command -v cmake >/dev/null || { echo "cmake is needed to build llama.cpp's CPU backend: apt-get install cmake"; exit 1; }
	rm -rf $(dir $@) && mkdir -p $(dir $@)src
	tar -xzf $(LLAMA_SDIST_DIR)/*.tar.gz -C $(dir $@)src --strip-components=1
	cmake -S $(dir $@)src -B $(dir $@)build -DCMAKE_BUILD_TYPE=Release $(LLAMA_AVX512_CMAKE_ARGS) > $(dir $@)configure.log
	cmake --build $(dir $@)build --target ggml-cpu > $(dir $@)build.log
	cp -L $$(find $(dir $@)build -name libggml-cpu.so) $(dir $@)libggml-cpu.so
	strip $(dir $@)libggml-cpu.so  # as the wheel's install strips its libraries
	rm -rf $(dir $@)src $(dir $@)build
	touch $@

# llama.cpp's own HTTP server (llama-server: continuous batching over --parallel slots), built from
# the llama.cpp source that llama-cpp-python's sdist vendors, with the portable flags above (no
# -march=native, no AMX), so it runs on every host the wheel runs on. About 9 minutes on 2 cores.
# Not the local default (docs/llm-servers.md says why); make bench-llm measures it where it is built.
llama-server: $(LLAMA_SERVER)/.built
	@echo "llama.cpp's server: $(LLAMA_SERVER)/llama-server"

$(LLAMA_SERVER)/.built: $(LLAMA_SDIST_DIR)/.downloaded
	@command -v cmake >/dev/null || { echo "cmake is needed to build llama.cpp's server: apt-get install cmake"; exit 1; }
	rm -rf $(dir $@) && mkdir -p $(dir $@)src
	tar -xzf $(LLAMA_SDIST_DIR)/*.tar.gz -C $(dir $@)src --strip-components=1
	cmake -S $(dir $@)src/vendor/llama.cpp -B $(dir $@)build -DCMAKE_BUILD_TYPE=Release $(LLAMA_CMAKE_ARGS) \
		-DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
		-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
		> $(dir $@)configure.log
	cmake --build $(dir $@)build --target llama-server > $(dir $@)build.log
	cp $(dir $@)build/bin/llama-server $(dir $@)llama-server
	strip $(dir $@)llama-server
	rm -rf $(dir $@)src $(dir $@)build
	touch $@

# For make bench-llama-build only: llama-cpp-python's default, -march=native.
$(LLAMA_NATIVE_WHEELS)/.built: $(LLAMA_SDIST_DIR)/.downloaded
	$(call build_llama_wheel,)

demo: install
	$(PY) -W ignore -m neuron_assets.demo

# The ablation score (method.md §5) of every scored method, after the scores, on layers 0-1 with 3 random
# neurons each and no revision; ARGS="--neurons 20" for more (slow: the LLM stages), and
# ARGS="--config run.yaml" lays a run config (ops by table name) over the demo's, as make demo takes it.
ablation: install
	$(PY) -W ignore -m neuron_assets.demo --no-revision --ablation $(ARGS)

# Explainable directions (method.md §9) of one layer (layer 0): records it, then 8 directions, 3 rounds of
# lookup-table explanations (no LLM) and Adam steps; ARGS="--layer 10 --rounds 10 --directions 16" for more.
directions: install
	$(PY) -W ignore -m neuron_assets.directions_demo $(ARGS)

# The puzzle scorer and explainer tests (method.md §10) on our puzzles, or ARGS="--path FILE".
puzzles: install
	$(PY) -W ignore -m neuron_assets.puzzles.run $(ARGS)

# The viewer's browser tests drive Debian's Chromium (no library downloads a browser of its
# own), and the shared-instance tests start a PostgreSQL server from the distribution's
# package (initdb in a temporary folder); where one is missing and apt-get can run, it is
# installed first, else those tests skip.
test: install
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null; } || echo "no Chromium: the browser tests will skip"
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq >/dev/null && \
		apt-get install -y -qq postgresql >/dev/null; } || echo "no PostgreSQL: the shared-instance tests will skip"
	$(PY) -m pytest --durations=10

# The inner loop: the tests that need neither the packaged model nor a real llama.cpp server.
test-fast: install
	$(PY) -m pytest -m "not slow"

# ruff's lint and formatting check, configured in pyproject.toml; .ci/run runs it before the tests.
lint: install
	$(VENV)/bin/ruff check neuron_assets tests
	$(VENV)/bin/ruff format --check neuron_assets tests

# The neuron viewer on http://127.0.0.1:8765/ (ARGS="--port N --data-dir D").
view: install
	$(PY) -W ignore -m neuron_assets.viewer.server $(ARGS)

# DAGSTER_HOME's instance is checked first: a PostgreSQL one that cannot be reached fails here, naming it.
dev: install
	$(PY) -m neuron_assets.instance
	$(VENV)/bin/dagster dev -w workspace.yaml

bench: install
	$(PY) -W ignore -m neuron_assets.benches.recording $(ARGS)

# The ablation score's cost per neuron against one full forward pass, and the mid-model start's speed-up.
bench-ablation: install
	$(PY) -W ignore -m neuron_assets.benches.ablation $(ARGS)

# Recording's memory as one pass streams through 10k, 25k and 50k excerpts (about 10 minutes here).
bench-memory: install
	$(PY) -W ignore -m neuron_assets.benches.recording_memory $(ARGS)

# First the cost per neuron by scorer (LLM calls and prompt tokens against all-at-once simulation; no model run),
# then the LLM stage against its server's own speed, on the same prompts (ARGS="--lever '--n_batch 2048'").
# It ends with a memory soak: 1,000 simulation calls on one server (ARGS="--soak 0" skips it).
bench-llm: install
	$(PY) -W ignore -m neuron_assets.benches.llm --llama-server $(LLAMA_SERVER)/llama-server $(ARGS)

# Bytes the response cache keeps per simulated excerpt: the old one-file-per-request layout vs the compact store.
bench-cache: install
	$(PY) -W ignore -m neuron_assets.benches.cache_size $(ARGS)

# One run of 4 layers on SQLite vs PostgreSQL and local files vs an S3 bucket (the tests' real servers).
bench-storage: install
	$(PY) -W ignore tests/storage_timing.py

# A synthetic result set of the study's size (48 layers x 6,400 neurons; ARGS="--token-layers 2" writes the
# per-token tables, about 0.6 GB a layer, for the first 2 layers only) in data/study.
study-results: install
	$(PY) -W ignore -m neuron_assets.synthetic.results $(ARGS)

# The viewer's index, search and neuron page and the README's queries on that set (written first if absent).
bench-viewer: install
	$(PY) -W ignore -m neuron_assets.benches.viewer $(ARGS)

# The simulator modes side by side on the local llama.cpp server: costs, speed-up, agreement.
bench-modes: install
	$(PY) -W ignore -m neuron_assets.benches.modes $(ARGS)

# The puzzle scorer test for each local LLM and simulator mode: who can tell explanations apart.
bench-puzzles: install
	$(PY) -W ignore -m neuron_assets.benches.puzzle_models $(ARGS)

# The portable and AVX-512 llama.cpp builds against one compiled natively for this host
# (-march=native, the llama-cpp-python default), side by side; each also as-is (no start-up
# settings), to show whether it crashes here.
bench-llama-build: install $(LLAMA_NATIVE_WHEELS)/.built
	rm -rf .wheels/installed
	$(PY) -m pip install --quiet --no-deps --target .wheels/installed/portable $(LLAMA_WHEELS)/*.whl
	$(PY) -m pip install --quiet --no-deps --target .wheels/installed/native $(LLAMA_NATIVE_WHEELS)/*.whl
	$(PY) -W ignore -m neuron_assets.benches.llama_build --as-is $(ARGS) portable=.wheels/installed/portable \
		avx512=$(LLAMA_VARIANTS)/avx512 native=.wheels/installed/native

clean-results:
	rm -rf data
