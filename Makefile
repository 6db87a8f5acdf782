# jobd: `make run` serves with the defaults, `make test` installs and runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help install run test lint bench soak clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install jobd with its dev extras

run: install  ## serve with the defaults (jobd.db in this directory, port 8080)
	$(BIN)/jobd serve

test: install  ## run the whole test suite
	$(BIN)/python -m pytest -q

lint: install  ## ruff and mypy
	$(BIN)/ruff check jobd tests bench docs
	$(BIN)/mypy jobd

bench: install  ## print throughput and latency figures (see bench/README.md)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/run.py --runs 3

soak: install  ## kill -9 cycles under load, then lost/duplicated/stuck (SOAK_ARGS="--duration 60")
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .mypy_cache
