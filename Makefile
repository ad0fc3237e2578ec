# The two commands of the README, and the checks CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: example test check venv clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# What is installed in the venv, as stamp files: `example` needs only the package,
# `test` the package with its test toolchain (so it stands for both). Installed
# again when pyproject.toml changes; order-only on the interpreter, whose mtime
# says nothing about what is installed.
$(VENV)/.installed-example: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-example

venv: $(VENV)/.installed-test

example: $(VENV)/.installed-example  ## run the example app on http://127.0.0.1:5000 (in-memory store)
	$(BIN)/python examples/quickstart.py

test: $(VENV)/.installed-test  ## lint, type-check and run every test (starts its own redis-server)
	$(BIN)/ruff check async_endpoints tests examples
	$(BIN)/mypy async_endpoints
	$(BIN)/python -m pytest

bench: $(BIN)/python  ## compare with bare Flask, RQ, Celery, Huey and Dramatiq; writes bench/results/latest.* (BENCH_ARGS=--quick for a smoke run)
	@command -v redis-server >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    echo "installing redis-server and wrk" && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server wrk >/dev/null; } || \
	  echo "could not install redis-server/wrk (without wrk the bundled Python load generator is used)"
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
