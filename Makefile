# Every target runs from a fresh clone with python3.11 on PATH; `make test` is what CI runs.
# python3.11 if the machine has that name for it, else python3 (pyproject requires >= 3.11).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed.stamp

.PHONY: venv test lint typecheck unit proto up bench clean

venv: $(STAMP)

# Re-install only when the dependency list changes (the stamp lives inside the venv, so removing
# .venv also forces a fresh install).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: lint typecheck unit

lint: venv
	$(VENV)/bin/ruff check .

typecheck: venv
	$(VENV)/bin/mypy

unit: venv
	$(PY) -m pytest -q -n 2

proto: venv
	$(PY) proto/generate.py

# ARGS passes flags through, e.g. `make up ARGS="--duration 10"` or `make bench ARGS="--seconds 2"`.
up: venv
	$(PY) -m cluster up $(ARGS)

bench: venv
	$(PY) -m cluster bench core $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
