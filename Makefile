# fleetscore: the two commands of the README, and the checks.
#   make demo   creates .venv, installs fleetscore, runs the whole flow on the embedded defaults
#   make test   installs what the tests need (Python lock, Azurite from npm), runs check + the suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
NODE_PREFIX := $(VENV)/node
AZURITE := $(NODE_PREFIX)/node_modules/.bin/azurite
PYTEST_ARGS ?=
# the suite waits on servers and subprocesses much of its time: two workers halve it on two cores
PYTEST_WORKERS ?= 2

.PHONY: help install install-test demo test check lint types imports bench faults image release-needed odbc-driver clean

help:
	@echo "make demo    - install and run the demo flow on the embedded defaults"
	@echo "make test    - install test dependencies, run lint, types, import contracts and the suite"
	@echo "make check   - lint (ruff), types (mypy), import contracts (import-linter)"
	@echo "make bench   - run the benchmarks under benchmarks/"
	@echo "make faults  - the fault campaign: kills, concurrent commands, bad input"
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

# system packages the tests need: a real PostgreSQL server (initdb runs as user postgres) and unixODBC
# (pyodbc, the Azure SQL driver, loads libodbc.so.2); installed from the Debian packages when missing
$(VENV)/.system-packages:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	ldconfig -p | grep -q 'libodbc.so.2' || missing="$$missing unixodbc"; \
	if [ -n "$$missing" ]; then \
	  echo "installing from the Debian packages for the tests:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	touch $@

install-test: install $(AZURITE) $(VENV)/.system-packages

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
	PATH="$(CURDIR)/$(NODE_PREFIX)/node_modules/.bin:$$PATH" $(BIN)/pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/validate.py
	$(BIN)/python benchmarks/release.py
	$(BIN)/python benchmarks/score.py
	$(BIN)/python benchmarks/detection.py

# kill -9 at random points, concurrent commands and 51 kinds of bad input on a 200-device fleet (~30 min)
faults: install
	$(BIN)/python benchmarks/faults.py

# what a release ships: a change anywhere else (docs, tests, benchmarks, CI) does not retrain the fleet
RELEASE_PATHS = fleetscore ingestion records simulation data_checks training scoring pipelines environments \
	pyproject.toml setup.cfg requirements.lock fleetscore.toml .github/workflows/release.yml

# prints release=true when the commit COMMIT (default HEAD) changed RELEASE_PATHS against its first parent
# (a merge commit: everything the merge brought), release=false otherwise (GITHUB_OUTPUT format)
release-needed:
	@commit=$(or $(COMMIT),HEAD); \
	if git diff --quiet "$$commit^1" "$$commit" -- $(RELEASE_PATHS); then echo release=false; else echo release=true; fi

# the Microsoft ODBC driver 18 for Azure SQL (mssql+pyodbc URLs) on Debian/Ubuntu, from Microsoft's repository
odbc-driver:
	@if odbcinst -q -d -n "ODBC Driver 18 for SQL Server" >/dev/null 2>&1; then echo "ODBC Driver 18 already installed"; else \
	  . /etc/os-release; \
	  curl -fsSL https://packages.microsoft.com/keys/microsoft.asc | sudo gpg --dearmor -o /usr/share/keyrings/microsoft-prod.gpg; \
	  echo "deb [arch=amd64 signed-by=/usr/share/keyrings/microsoft-prod.gpg] https://packages.microsoft.com/$$ID/$$VERSION_ID/prod $$VERSION_CODENAME main" \
	    | sudo tee /etc/apt/sources.list.d/mssql-release.list >/dev/null; \
	  sudo apt-get update -q && sudo ACCEPT_EULA=Y DEBIAN_FRONTEND=noninteractive apt-get install -y -q msodbcsql18 unixodbc; \
	fi

image:
	docker build -f environments/scoring/Dockerfile -t fleetscore-scoring:$$(git rev-parse --short HEAD) .

clean:
	rm -rf .fleetscore .pytest_cache .mypy_cache .ruff_cache
