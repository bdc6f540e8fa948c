# Waypost: the two set-up commands are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: consul-suite screenshots run test lint typecheck unit bench system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstall when the project's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

## make run: the all-in-one dev server on SQLite (API on 127.0.0.1:8500), data in ./.waypost/
run: $(STAMP)
	$(BIN)/waypost dev

## make test: installs what the tests need (Python deps, Debian packages), then lint, types, tests
test: $(STAMP) system-deps
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	bash scripts/run-tests.sh

system-deps:
	bash scripts/system-deps.sh test
	npm --prefix tests/consul_clients/npm ci --no-audit --no-fund --loglevel=error

## make screenshots: the dashboard test in headless Chromium, saving docs/images/dashboard-*.png
screenshots: $(STAMP) system-deps
	WAYPOST_SCREENSHOTS=docs/images $(BIN)/python -m pytest -q tests/integration/test_dashboard.py

## make consul-suite: py-consul's own test suite (its PyPI sdist) against Waypost (~45 s)
consul-suite: $(STAMP)
	$(BIN)/python -m pip download -q --no-deps --no-binary :all: py-consul==1.8.0 -d tests/consul_clients/py_consul_suite
	$(BIN)/python -m pytest -q -m slow tests/integration/test_py_consul_suite.py

## make bench: side-by-side benchmarks (needs etcd-server, wrk); results in bench/results/
bench: $(STAMP)
	bash scripts/system-deps.sh bench
	$(BIN)/python bench/registry.py
	$(BIN)/python bench/watch.py
	$(BIN)/python bench/checks.py
	$(BIN)/python bench/dns.py
	$(BIN)/python bench/traffic.py
	$(BIN)/python bench/scale.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build src/*.egg-info
