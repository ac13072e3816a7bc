PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONFIG ?= $(if $(wildcard config.yaml),config.yaml,config.example.yaml)

.PHONY: install system-deps test run bench bench-api clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

system-deps:
	./scripts/system-deps.sh

test: install system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

run: install
	CONFIG=$(CONFIG) PY=$(PY) ./scripts/run.sh

bench: install
	./scripts/system-deps.sh bench
	$(PY) bench/run.py $(BENCH_ARGS)

bench-api: install system-deps
	$(PY) bench/api.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
