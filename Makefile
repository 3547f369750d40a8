# earlytom-eval: everything runs from the virtual environment in .venv at the repo root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check earlytom_eval tests

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
