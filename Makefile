# fleetscore: the two commands of the README, and the checks.
#   make demo   creates .venv, installs fleetscore, runs the whole flow on the embedded defaults
#   make test   installs what the tests need (Python lock, Azurite from npm), runs check + the suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
NODE_PREFIX := $(VENV)/node
AZURITE := $(NODE_PREFIX)/node_modules/.bin/azurite
PYTEST_ARGS ?=

.PHONY: help install install-test demo test check lint types imports bench image clean

help:
	@echo "make demo    - install and run the demo flow on the embedded defaults"
	@echo "make test    - install test dependencies, run lint, types, import contracts and the suite"
	@echo "make check   - lint (ruff), types (mypy), import contracts (import-linter)"
	@echo "make bench   - run the benchmarks under benchmarks/"
	@echo "make image   - build the scoring image (needs a Docker engine)"

$(VENV)/.installed: setup.cfg pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[azure,dask,dev]'
	touch $@

install: $(VENV)/.installed

$(AZURITE):
	mkdir -p $(NODE_PREFIX)
	npm install --silent --no-audit --no-fund --prefix $(NODE_PREFIX) azurite@3.35.0

# the tests start a real PostgreSQL server from the machine's packages (initdb runs as user postgres)
$(VENV)/.postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing PostgreSQL from the Debian packages for the tests"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
	fi
	touch $@

install-test: install $(AZURITE) $(VENV)/.postgres

demo: install
	$(BIN)/fleetscore demo

check: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

lint: install
	$(BIN)/ruff check .

types: install
	$(BIN)/mypy

imports: install
	$(BIN)/lint-imports

test: install-test check
	PATH="$(CURDIR)/$(NODE_PREFIX)/node_modules/.bin:$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/validate.py
	$(BIN)/python benchmarks/release.py
	$(BIN)/python benchmarks/score.py

image:
	docker build -f environments/scoring/Dockerfile -t fleetscore-scoring:$$(git rev-parse --short HEAD) .

clean:
	rm -rf .fleetscore .pytest_cache .mypy_cache .ruff_cache
