# The two commands of the README: `make train` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup train test bench
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

bench: setup
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench.run_all $(ARGS)
