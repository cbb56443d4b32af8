# Everything a newcomer needs, from a fresh clone: `make serve` and `make test`.
# Both create .venv on first use and reinstall only when pyproject.toml or constraints.txt change.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: serve predict test lint typecheck unit clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.serve-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e ".[serve]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e ".[serve,redis,bench,label,export,planes,dev]"
	touch $@ $(VENV)/.serve-installed

## serve: set up, then serve the built-in catdog model on http://127.0.0.1:8000 (docs at /docs;
## VISIONLOOP_* environment variables change any setting, e.g. VISIONLOOP_PORT=9000).
serve: $(VENV)/.serve-installed
	$(BIN)/visionloop serve

## predict: classify the bundled sample photos.
predict: $(VENV)/.serve-installed
	$(BIN)/visionloop predict tests/data/*

## test: set up, then lint, type-check and run the whole test suite (what CI runs).
test: $(VENV)/.dev-installed lint typecheck unit

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests $(wildcard benchmarks examples)
	$(BIN)/ruff format --check src tests $(wildcard benchmarks examples)

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

unit: $(VENV)/.dev-installed
	$(BIN)/pytest

## bench: regenerate benchmarks/results/*.json and the tables of BENCHMARKS.md (about 10.5 min on
## 2 cores); BENCH=--full for what BENCHMARKS.md quotes (about 3 h), BENCH=--render-only
## to rewrite the tables from the committed files, BENCH="--quick --only fusion,decode" for some.
BENCH ?= --quick
bench: $(VENV)/.dev-installed
	$(BIN)/python benchmarks/run_all.py $(BENCH)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
