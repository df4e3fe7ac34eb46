# ds01 — see README.md. Every target runs as root on Debian; each is safe to run again.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV ?= .venv
BIN := $(VENV)/bin
TESTBED := scripts/testbed
FLEETBED := scripts/fleetbed
SHELL_SCRIPTS := scripts/testbed scripts/fleetbed scripts/demo tests/fakes/nvml/build.sh tests/fakes/ldap/slapd.sh .ci/run wrappers/docker config/profile.d/ds01.sh
PYTEST_ARGS ?=

.PHONY: demo test lint deps testbed fleetbed venv install clean

## demo: simulated GPUs on the private test bed, the system up, a scripted scenario
demo: venv testbed
	scripts/demo

## test: install everything, lint, and run the whole test suite against the test bed and the fleet test bed
test: venv testbed fleetbed lint
	eval "$$($(TESTBED) env)"; $(BIN)/pytest $(PYTEST_ARGS)

## lint: ruff, mypy and shellcheck
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	shellcheck $(SHELL_SCRIPTS)

## deps: the Debian packages the project needs (one apt-get call, only if something is missing)
deps:
	$(TESTBED) deps

## install: put ds01 in place on this host (docs-admin/installation.md); run it again after an update
install: venv
	$(BIN)/ds01 install

testbed: deps
	$(TESTBED) up

# Three etcd members and the engines of nodes 2 and 3 beside the test bed's, node 1 (tests/fleet/).
fleetbed: testbed
	$(FLEETBED) up

venv: $(VENV)/.installed

# Debian's python3 (not a per-user interpreter under /root), so the test users can run ds01 too.
$(VENV)/.installed: pyproject.toml | deps
	/usr/bin/python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --editable '.[test,dev]'
	touch $@

clean:
	$(FLEETBED) down
	$(TESTBED) down
	rm -rf $(VENV) build *.egg-info
