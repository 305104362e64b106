# Two entry points for a fresh machine with Python 3.11 and pip: `make demo` and `make test`.
# Each creates .venv and installs wsiseg with its dependencies first (once; redone when pyproject changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.wsiseg-installed

.PHONY: install browser demo test test-all lint bench fault-table

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The cohort report's browser test (tests/export/test_cohort_browser.py) opens the page in Debian's Chromium,
# driven by Playwright (dev extra). Installed once, quietly, only when missing; without root it says how.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (apt-get) for the HTML report test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium not found and not root (or no apt-get): the HTML report browser test will be skipped;" \
	         "install it with 'sudo apt-get install chromium'"; \
	  fi; }

demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash examples/demo.sh

test: $(STAMP) browser
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
