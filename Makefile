# jobd: `make run` serves with the defaults, `make test` installs the dev tools and runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# One stamp per install: an install runs again only when pyproject.toml is newer than its stamp.
CREATED := $(VENV)/.created
RUNTIME := $(VENV)/.installed-runtime
DEV     := $(VENV)/.installed-dev
BENCH   := $(VENV)/.installed-bench

.PHONY: help install dev run test lint bench soak clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(CREATED):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	touch $@

$(RUNTIME): pyproject.toml | $(CREATED)
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEV): pyproject.toml | $(CREATED)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(RUNTIME)  # the dev install holds everything running needs

$(BENCH): pyproject.toml $(DEV)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

install: $(RUNTIME)  ## create .venv with jobd and what running it needs (.venv/bin/jobd)

dev: $(DEV)  ## install also the test, lint and type-check tools

run: $(RUNTIME)  ## serve with the defaults (jobd.db in this directory, port 8080)
	$(BIN)/jobd serve

# The tests on PostgreSQL (-m postgres: those on the throwaway server of tests/pg.py) run
# in a second pytest process beside the others, so that the two halves share the
# machine's cores; the PostgreSQL half's output is printed after the first half's.
# `python -m pytest -q` runs the same tests one after another.
test: $(DEV)  ## run the whole test suite (its PostgreSQL half in a second process beside it)
	@log=$$(mktemp); \
	$(BIN)/python -m pytest -q -m postgres > $$log 2>&1 & postgres=$$!; \
	$(BIN)/python -m pytest -q -m 'not postgres'; others=$$?; \
	wait $$postgres; on_postgres=$$?; \
	echo "== the tests on PostgreSQL (pytest -m postgres):"; cat $$log; rm -f $$log; \
	test $$others -eq 0 -a $$on_postgres -eq 0

lint: $(DEV)  ## ruff and mypy
	$(BIN)/ruff check jobd tests bench docs
	$(BIN)/mypy jobd

bench: $(BENCH)  ## print throughput and latency figures (BENCH_ARGS="--backend sqlite,postgres"; see bench/README.md)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/run.py --runs 3 $(BENCH_ARGS)

soak: $(DEV)  ## kill -9 cycles under load, then lost/duplicated/stuck (SOAK_ARGS="--duration 60")
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) *.egg-info build dist .pytest_cache .ruff_cache .mypy_cache
