# Two commands on a fresh machine: `make serve` and `make test`. Each sets up .venv first.
PYTHON ?= python3
# torch==2.13.0 is a CPU build on this project's machines; override for a CUDA host: make serve TORCH=torch
TORCH ?= torch==2.13.0
BIN := .venv/bin

.PHONY: setup eval serve test soak lint browser clean

# A binary built from other sources than those here (model/native/sources.py) is rebuilt.
setup: .venv/.installed
	@$(BIN)/python -c "import sys; from model.native import step; sys.exit(bool(step.STALE))" || { \
		echo "native step: the binary is stale, rebuilding"; rm -f $<; $(MAKE) --no-print-directory $<; }

# The native step (model/native/) is compiled here, against the torch just installed: --no-build-isolation, so
# that pip fetches no other torch to build with. setuptools is upgraded first: the venv's may be too old to
# build an editable install from pyproject.toml. A compiler that is missing or broken leaves the package without
# the step (the last line says why), never the install failed.
.venv/.installed: pyproject.toml setup.py $(wildcard model/native/*.cpp model/native/*.h)
	$(PYTHON) -m venv .venv
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q "setuptools>=68"
	$(BIN)/pip install -q --no-build-isolation -e ".[dev]"
	$(BIN)/python -c "from model.native import step; print('native step:', step.UNAVAILABLE or 'built')"
	touch $@

# lm-evaluation-harness for the tests only (tests/test_lm_eval.py): too heavy for `make serve`.
eval: .venv/.eval-installed

# The eval extra's requirements, read from pyproject.toml (reinstalling the project would compile the step again).
.venv/.eval-installed: .venv/.installed
	$(BIN)/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['eval'], sep='\n')" > .venv/eval-requirements.txt
	$(BIN)/pip install -q -r .venv/eval-requirements.txt
	touch $@

serve: setup
	$(BIN)/tinyllm-serve

test: setup eval browser lint
	$(BIN)/python -m pytest -q

# The shipped server (every bundled model, default settings) under a mix of clients over every route for
# SOAK_SECONDS, then its invariants (tests/test_soak.py); figures in test-artifacts/soak.json. Too long for CI.
SOAK_SECONDS ?= 180
soak: setup
	TINYLLM_SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m pytest -q -s -m slow tests/test_soak.py

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
