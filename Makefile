# graphwire: `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: help install test lint bench profile run dev services clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## create .venv and install graphwire with its dev dependencies

services: ## check PostgreSQL and Redis answer; start them if they do not
	@bash scripts/services.sh

PYTEST_WORKERS ?= 3
test: install services ## run the whole test suite (unit + integration on the bundled broker)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile

lint: install ## ruff and mypy
	$(VENV)/bin/ruff check graphwire topics graphs processors tests bench examples
	$(VENV)/bin/mypy -p graphwire

BENCH_JSON ?= bench-runner.json
SETTINGS   ?= defaults

bench: install services ## benchmarks against their baselines, measured in the same run (about 13 min)
	$(PY) bench/bench_runner.py --json $(BENCH_JSON)
	$(PY) bench/bench_latency.py
	$(PY) bench/bench_audit.py
	$(PY) bench/bench_gateway.py
	$(PY) bench/bench_agentapi.py

profile: install services ## py-spy a worker draining 4,000 pipeline requests (SETTINGS=defaults|off)
	$(PY) bench/profile.py --settings $(SETTINGS) $(PROFILE_ARGS)

run: install ## graphwire dev --demo: broker, Redis, PostgreSQL, runner, sink + sample requests
	$(VENV)/bin/graphwire dev --demo

dev: run ## same as run

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
