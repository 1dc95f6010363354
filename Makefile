# synguard — see scripts/setup.sh for what `setup` does (root, Debian 12).
SHELL  := /bin/bash
VENV   := .venv
PY     := $(VENV)/bin/python

# pytest reads extra options from the environment, e.g.
#   PYTEST_ADDOPTS="-m slow" make test    or    make test PYTEST_ADDOPTS="-k cookie"
export PYTEST_ADDOPTS

.PHONY: all setup test demo bench install clean

all: test

setup:
	@if [ "$$(id -u)" -ne 0 ]; then echo "synguard: 'make setup' must run as root (apt, bpffs, XDP); try: sudo make $(or $(MAKECMDGOALS),test)" >&2; exit 1; fi
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q -ra tests

demo: setup
	$(PY) -m synguard_lab.demo $(ARGS)

bench: setup
	$(PY) -m synguard_lab.benchreport $(ARGS)

install: setup
	@bash scripts/install.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build dist *.egg-info
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
