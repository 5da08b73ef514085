SHELL := /bin/bash
# nre_ros developer entry points. A fresh machine needs only python3 (3.10+) with venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test test-all install install-dev install-ros clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	@echo "[make] installing nre_ros and its pinned dependencies into $(VENV) (about 1 minute)"
	$(PIP) install -r requirements.txt -c constraints.txt 2> >(grep -v '^WARNING: Location' >&2)
	$(PIP) install --no-deps -e .

install-dev: install
	$(PIP) install -r requirements-dev.txt -c constraints.txt 2> >(grep -v '^WARNING: Location' >&2)

install-ros: $(BIN)/python
	PYTHON=$(BIN)/python scripts/install_ros.sh

demo: install
	$(BIN)/nre-ros demo

test: install-dev install-ros
	$(BIN)/python -m pytest -q

test-all: install-dev install-ros
	$(BIN)/python -m pytest -q -m ''

clean:
	rm -rf $(VENV) build *.egg-info
