# Two commands on a fresh machine: `make serve` and `make test`. Each sets up .venv first.
PYTHON ?= python3
# torch==2.13.0 is a CPU build on this project's machines; override for a CUDA host: make serve TORCH=torch
TORCH ?= torch==2.13.0
BIN := .venv/bin

.PHONY: setup serve test bench clean

setup: .venv/.installed

.venv/.installed: pyproject.toml
	$(PYTHON) -m venv .venv
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

serve: setup
	$(BIN)/tinyllm-serve

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf .venv build *.egg-info
