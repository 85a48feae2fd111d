# The two commands of the README: `make train` and `make test`. Both set up .venv first, at the
# exact versions of constraints.txt (the same pins the Dockerfile installs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --constraint constraints.txt

.PHONY: setup train test test-tools bench-setup
$(BIN)/carla-td3: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: on CPU-only machines torch==2.13.0 takes the local CPU build instead of
	# pulling a multi-GB CUDA build; the project's `torch>=` requirement is then satisfied.
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	touch $(BIN)/carla-td3

setup: $(BIN)/carla-td3

train: setup
	$(BIN)/carla-td3 train $(ARGS)

# Prometheus for the tests that run it: installed where this user may (root or passwordless
# sudo); elsewhere those tests are skipped with one line saying how to install it.
test-tools:
	@sh deploy/install_test_tools.sh

test: setup test-tools
	$(BIN)/python -m pytest -q tests $(ARGS)

# The benchmarks' extra (Stable-Baselines3 as the learner reference, matplotlib for plots);
# then run any of them, e.g. .venv/bin/python -m bench.learner_throughput (docs/benchmarks.md).
bench-setup: setup
	$(PIP) -e '.[test,bench]'
