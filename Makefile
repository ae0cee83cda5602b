# fleetkeeper: `make demo` runs the product on its embedded default with a simulated fleet, `make serve`
# the server alone, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= fleetkeeper-data
# The console's front-end libraries (htmx, xterm.js, Swagger UI) are installed here by npm (see console-assets).
CONSOLE_VENDOR := src/fleetkeeper/console/vendor
# `make serve` keeps the device listener on loopback; `make serve DEVICE_HOST=0.0.0.0` opens it.
# The demo's simulated devices are on this machine: its listener is always on loopback.
DEVICE_HOST ?= 127.0.0.1
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo serve test lint typecheck pytest bench env clean console-assets

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[server,agent,sim,dev]'
	touch $(STAMP)

demo: $(STAMP) $(CONSOLE_VENDOR)/node_modules
	$(BIN)/fleetkeeper demo --data-dir $(DATA_DIR)

serve: $(STAMP) $(CONSOLE_VENDOR)/node_modules
	$(BIN)/fleetkeeper serve --data-dir $(DATA_DIR) --device-host $(DEVICE_HOST)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# The OpenID Provider the sign-in tests start (tests/oidc_provider): its exact version is in package.json,
# and no lock file is kept, so npm resolves the rest afresh on each clean install.
OIDC_PROVIDER := tests/oidc_provider
$(OIDC_PROVIDER)/node_modules: $(OIDC_PROVIDER)/package.json
	cd $(OIDC_PROVIDER) && npm install --no-package-lock --no-audit --no-fund --loglevel=error
	touch $@

# The S3-compatible server the object-store tests start (tests/s3_server), pinned the same way.
S3_SERVER := tests/s3_server
$(S3_SERVER)/node_modules: $(S3_SERVER)/package.json
	cd $(S3_SERVER) && npm install --no-package-lock --no-audit --no-fund --loglevel=error
	touch $@

# The console's front-end libraries (htmx, xterm.js, Swagger UI), pinned in its package.json, served as installed.
$(CONSOLE_VENDOR)/node_modules: $(CONSOLE_VENDOR)/package.json
	cd $(CONSOLE_VENDOR) && npm install --no-package-lock --no-audit --no-fund --loglevel=error
	touch $@

console-assets: $(CONSOLE_VENDOR)/node_modules

# The suite's files run on PYTEST_WORKERS processes (each file whole on one: its servers and
# fixtures are shared by its tests); most of a test's time is spent waiting on servers it started.
PYTEST_WORKERS ?= 2
pytest: $(STAMP) $(CONSOLE_VENDOR)/node_modules $(OIDC_PROVIDER)/node_modules $(S3_SERVER)/node_modules
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test: lint typecheck pytest

# The benchmark suite (bench/run.py), about 10 minutes on 2 cores; it rewrites the results table of
# docs/benchmarks.md and keeps the JSON lines in bench-results/. `make bench BENCH_ARGS=--quick`
# is a smoke test at tiny sizes. It needs PostgreSQL (FLEETKEEPER_BENCH_POSTGRES_URL) and nginx.
bench: $(STAMP)
	PYTHONPATH=$(CURDIR)/src:$(CURDIR) $(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
