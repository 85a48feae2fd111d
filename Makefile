# The two commands of the README: `make train` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup train test bench-setup
$(BIN)/carla-td3: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: on CPU-only machines this takes the local CPU build instead of
	# pulling a multi-GB CUDA build; any later `torch>=` requirement is then already satisfied.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/carla-td3

setup: $(BIN)/carla-td3

train: setup
	$(BIN)/carla-td3 train $(ARGS)

test: setup
	$(BIN)/python -m pytest -q tests $(ARGS)

# The benchmarks' extra (Stable-Baselines3 as the learner reference, matplotlib for plots);
# then run any of them, e.g. .venv/bin/python -m bench.learner_throughput (docs/benchmarks.md).
bench-setup: setup
	$(BIN)/pip install --quiet -e '.[test,bench]'
