PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev

CHROMIUM := /usr/bin/chromium
# Root installs system packages directly; anyone else goes through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint fmt bench bench-peers clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEVSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP) $@

run: $(STAMP)
	$(BIN)/parley serve --host 127.0.0.1 --port 8080 --data-dir ./data

# The browser tests drive Debian's Chromium with Playwright (no browser download).
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null

test: $(DEVSTAMP) $(CHROMIUM)
	$(BIN)/pytest -q

bench: $(DEVSTAMP)
	$(BIN)/parley bench $(ARGS)

# Matrix Synapse, to compare against on this box: its own virtualenv, never a
# dependency of Parley's. PostgreSQL comes from the machine's packages.
SYNAPSE_VENV := .venv-synapse
$(SYNAPSE_VENV)/.installed:
	$(PY) -m venv $(SYNAPSE_VENV)
	$(SYNAPSE_VENV)/bin/pip install --quiet 'matrix-synapse[postgres]'
	touch $@

bench-peers: $(DEVSTAMP) $(SYNAPSE_VENV)/.installed
	$(BIN)/parley bench peers --synapse-python $(SYNAPSE_VENV)/bin/python $(ARGS)

lint: $(DEVSTAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

fmt: $(DEVSTAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean:
	rm -rf $(VENV) $(SYNAPSE_VENV) data
