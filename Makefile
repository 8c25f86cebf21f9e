# Two commands matter: `make run` (the service) and `make test` (the whole suite).
# Both create .venv from the pinned requirements.lock on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint install lock bench bench-tools clean docs-settings

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Settle needs Python 3.11 or newer; set PYTHON=python3.11 or similar")'
	@echo "Creating $(VENV) and installing pinned dependencies (first run only)..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

run: install
	$(BIN)/settle run $(RUN_ARGS)

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

# docs/configuration.md's settings table, written from the declarations in
# shared/config/settings.py (a unit test fails while the two disagree).
docs-settings: install
	$(BIN)/python -m shared.config --write docs/configuration.md

# The benchmark suite (a few minutes; BENCH_QUICK=1 for a smoke pass), never part of `test`.
# It needs wrk, pgbench and node besides Python: missing ones are installed with apt-get.
BENCH_TOOLS := wrk:wrk pgbench:postgresql-client node:nodejs npm:npm
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PEER := bench/peers/express

bench: install $(PEER)/node_modules/.package-lock.json
	$(BIN)/python -m bench.suite $(BENCH_ARGS)

bench-tools:
	@missing=""; for pair in $(BENCH_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing$$missing with apt-get (the bench's load generators)..."; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; fi

$(PEER)/node_modules/.package-lock.json: $(PEER)/package-lock.json | bench-tools
	cd $(PEER) && npm ci --no-audit --no-fund

# Re-pin dependencies after changing pyproject.toml.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet -e '.[dev]'
	.lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^settle' > requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .settle .pytest_cache .mypy_cache .ruff_cache *.egg-info $(PEER)/node_modules
