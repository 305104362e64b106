# Two entry points for a fresh machine with Python 3.11 and pip: `make demo` and `make test`.
# Each creates .venv and installs wsiseg with its dependencies first (once; redone when pyproject changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.wsiseg-installed

.PHONY: install demo test test-all lint bench fault-table

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash examples/demo.sh

test: $(STAMP)
	$(BIN)/ruff check wsiseg tests benchmarks examples
	$(BIN)/ruff format --check wsiseg tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

# docs/robustness.md: what every bad input and fault in tests/robustness gave (generated, not written by hand).
fault-table: $(STAMP)
	WSISEG_FAULT_TABLE=docs/robustness.md $(BIN)/python -m pytest -q tests/robustness

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or integration or not slow"

lint: $(STAMP)
	$(BIN)/ruff check --fix wsiseg tests benchmarks examples
	$(BIN)/ruff format wsiseg tests benchmarks examples
