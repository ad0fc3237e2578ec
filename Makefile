# The two commands of the README, and the checks CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: example test check venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'

venv: $(BIN)/python

example: venv  ## run the example app on http://127.0.0.1:5000 (in-memory store)
	$(BIN)/python examples/quickstart.py

test: venv  ## lint, type-check and run every test (starts its own redis-server)
	$(BIN)/ruff check async_endpoints tests examples
	$(BIN)/mypy async_endpoints
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
