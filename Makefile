PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONFIG ?= $(if $(wildcard config.yaml),config.yaml,config.example.yaml)

.PHONY: install system-deps test test-fast run bench bench-api clean

# The runtime (SDK, accelctl, service): all `make run` needs.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -e .
	touch $@

# Plus what the tests use (pytest, selenium, schemathesis, ...).
$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PIP) install -q -r requirements-test.txt
	touch $@

install: $(VENV)/.installed-test

system-deps:
	./scripts/system-deps.sh

test: install system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

# The inner loop: everything but the tests marked slow (end-to-end stacks, fresh clones).
test-fast: install system-deps
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

run: $(VENV)/.installed
	CONFIG=$(CONFIG) PY=$(PY) ./scripts/run.sh

bench: install
	./scripts/system-deps.sh bench
	$(PY) bench/run.py $(BENCH_ARGS)

bench-api: install system-deps
	$(PY) bench/api.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
