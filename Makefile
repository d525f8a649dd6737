# `make demo` and `make test` are all a new user needs: both create .venv and install into it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rcnn demo

# ruff, then the import contracts of pyproject.toml (the layers, no torch at import time).
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/ruff format --check src tests benchmarks tools
	PYTHONPATH=. $(VENV)/bin/lint-imports

# One session; the tests of the automatic precision run with native bfloat16 forced off and
# on (RCNN_NATIVE_BF16) whatever this CPU has. The slowest 10 are named at the end.
test: lint
	$(VENV)/bin/pytest --durations=10

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks tools
	$(VENV)/bin/ruff format src tests benchmarks tools

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
