# One-command setup and checks. `make setup` is idempotent: it re-installs only when a
# requirements file is newer than the stamp inside .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test lint format demo bench clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest -q

demo: setup
	@echo "make demo: not implemented yet (see the synthetic-data/demo issue)"; exit 1

bench: setup
	$(BIN)/python bench/bench_model.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
