# arw-models: `make run` serves on 127.0.0.1:8090 with ./state; `make test` runs the suite;
# `make docs` builds docs/ into docs/_build/html.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARW_STATE_DIR ?= ./state
ARW_PORT ?= 8090

.PHONY: run test docs lint bench bench-quick mutation fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python setup.py setup.cfg
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

$(VENV)/.installed-fuzz: $(VENV)/.installed-test
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,fuzz]'
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-test
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $@

$(VENV)/.installed-docs: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[docs]'
	touch $@

run: $(VENV)/.installed
	ARW_STATE_DIR=$(ARW_STATE_DIR) ARW_PORT=$(ARW_PORT) \
	$(BIN)/gunicorn -c python:arw_models.gunicorn_conf wsgi:app

# Four workers on two cores: most of the suite waits on sockets, servers and child
# processes, not on the CPU (TEST_ARGS="-n 0" runs it in one process).
TEST_ARGS ?= -n 4

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(TEST_ARGS)

# Warnings are errors: a broken reference or a page the code no longer matches fails.
docs: $(VENV)/.installed-docs
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

# ruff, and the layers' import contracts (setup.cfg [importlinter]).
lint: $(VENV)/.installed-test
	$(BIN)/ruff check arw_models tests tools
	$(BIN)/lint-imports

bench: $(VENV)/.installed-bench
	$(BIN)/python -m tools.bench $(BENCH_ARGS)

mutation: $(VENV)/.installed-test
	$(BIN)/python -m tools.mutation $(MUTATION_ARGS)

bench-quick: $(VENV)/.installed-bench
	$(BIN)/python -m tools.bench --quick $(BENCH_ARGS)

fuzz: $(VENV)/.installed-fuzz
	$(BIN)/python -m tools.fuzz $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info docs/_build
