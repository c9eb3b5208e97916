# Two commands on a fresh machine: `make serve` and `make test`. Each sets up .venv first.
PYTHON ?= python3
# torch==2.13.0 is a CPU build on this project's machines; override for a CUDA host: make serve TORCH=torch
TORCH ?= torch==2.13.0
BIN := .venv/bin

.PHONY: setup eval serve test lint browser clean

setup: .venv/.installed

.venv/.installed: pyproject.toml
	$(PYTHON) -m venv .venv
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# lm-evaluation-harness for the tests only (tests/test_lm_eval.py): too heavy for `make serve`.
eval: .venv/.eval-installed

.venv/.eval-installed: .venv/.installed
	$(BIN)/pip install -q -e ".[dev,eval]"
	touch $@

serve: setup
	$(BIN)/tinyllm-serve

test: setup eval browser lint
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The page's browser test drives Debian's chromium (never a downloaded browser); installed where we can.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium is not installed: the browser tests will be skipped"

clean:
	rm -rf .venv build *.egg-info
