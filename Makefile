# Two commands do everything on a fresh machine:
#   make run    installs, then runs a server and two workers on localhost (foreground)
#   make test   installs, then runs the whole test suite (lint, types, tests)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint unit e2e faults bench clean

$(STAMP): pyproject.toml bin/jq
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Byte-compile every time: with PYTHONDONTWRITEBYTECODE set, jq would compile
# its changed modules again on every run (it starts for every job).
install: $(STAMP)
	@$(BIN)/python -m compileall -q src

run: install
	@bash scripts/run-local.sh

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/mypy

test: install lint
	$(BIN)/python -m pytest tests

unit: install
	$(BIN)/python -m pytest tests/unit

bench: install
	bench/run

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
