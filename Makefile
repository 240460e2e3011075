# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv if missing.
# Torch is installed first, pinned to the CPU wheel this machine kind keeps on disk; the package's
# own metadata keeps a normal range (torch>=2.2), which that wheel already satisfies.
PYTHON ?= python3
VENV ?= .venv
TORCH_PIN ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: demo test test-all lint bench clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH_PIN)"
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e ".[dev]"
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/latentsurgeon demo $(ARGS)

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q $(ARGS)

test-all: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m "" $(ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check latentsurgeon tests bench

bench: $(VENV)/.installed-dev
	$(PIP) install -q -e ".[bench]"
	$(PY) -m bench all --write

clean:
	rm -rf $(VENV) latentsurgeon-report .pytest_cache
