# `make run` and `make test` are the two commands of the README; bare `make` lists the targets.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help run run-loader test test-unit lint fmt bench clean

help:
	@echo "make run         set up $(VENV) and run the collector with its embedded defaults"
	@echo "make run-loader  run the loader alone (when loader.embedded = false)"
	@echo "make test        set up $(VENV) and run the whole test suite"
	@echo "make test-unit   only the unit tests (no sockets, no Redis)"
	@echo "make lint        ruff check"
	@echo "make fmt         ruff format + fix"
	@echo "make bench       ingestion benchmark against FastAPI and nginx (installs wrk, nginx)"

$(STAMP): setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/collector serve

run-loader: $(STAMP)
	$(BIN)/collector loader

test: $(STAMP)
	$(BIN)/pytest -q

test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check collector loader tests bench

fmt: $(STAMP)
	$(BIN)/ruff check --fix collector loader tests bench

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) build *.egg-info
