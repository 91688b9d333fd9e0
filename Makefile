# landslide-mapper. `make demo` and `make test` create .venv and install on first use.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Keep TensorFlow quiet and on the CPU unless asked otherwise.
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-all lint bench bench-quality lock clean venv

$(STAMP): requirements.txt requirements-dev.txt setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/landslides demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -n 2 --dist loadgroup $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check pipelines model tests bench
	$(VENV)/bin/mypy

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# Held-out model quality of the demo study for three world seeds (it prints each study's time).
bench-quality: $(STAMP)
	$(PY) bench/quality.py $(QUALITY_ARGS)

# Re-pin the lock files from requirements.in / requirements-dev.in.
lock:
	rm -rf /tmp/lsm-lock && $(PYTHON) -m venv /tmp/lsm-lock
	/tmp/lsm-lock/bin/pip install -q -r requirements.in -r requirements-dev.in
	/tmp/lsm-lock/bin/pip freeze > /tmp/lsm-lock/freeze.txt
	@echo "Split /tmp/lsm-lock/freeze.txt into requirements.txt and requirements-dev.txt"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
