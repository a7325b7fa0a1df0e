# payfn: the two commands a newcomer needs are `make up` and `make test`.
# Both install what is missing first (Debian packages, the virtualenv and its
# pinned dependencies), so they work on a fresh Debian machine with no Docker.

SHELL        := /bin/bash
PYTHON       ?= $(shell command -v python3.11 || command -v python3)
VENV         := .venv
BIN          := $(VENV)/bin
SUDO         := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := mariadb-server mariadb-client redis-server prometheus chromium
STAMP        := $(VENV)/.payfn-installed
PYTEST_ARGS  ?=

export SAM_CLI_TELEMETRY := 0

.PHONY: up down status test unit lint bench bench-deps deps system-deps clean

## up: install what is missing, start the whole stack, print the URLs
up: deps
	$(BIN)/payfn up

## down: stop everything payfn started
down:
	@if [ -x $(BIN)/payfn ]; then $(BIN)/payfn down; else echo "nothing installed, nothing to stop"; fi

status: deps
	$(BIN)/payfn status

## test: install what is missing, lint, run unit + integration + e2e tests on a live stack
test: deps
	$(BIN)/ruff check .
	$(BIN)/pytest tests/unit tests/integration tests/e2e $(PYTEST_ARGS)

unit: deps
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: deps
	$(BIN)/ruff check .

## bench: the benchmarks (manual, not part of make test); results in bench-results/
bench: deps bench-deps
	$(BIN)/python -m tests.load.bench

# Debian packages only the benchmarks use (wrk: closed-loop figures of bench_gateway;
# Node for the serverless-offline peer, unless a node with npm is already there);
# the load generator of bench_load is Python. Not needed by make test.
# The peers of bench_peers (tests/load/peers/: exact pins) go to the git-ignored .bench/:
# serverless + serverless-offline from the committed npm lock, chalice in its own venv
# (its pins differ from requirements.lock's); each reinstalled only when its pins change.
BENCH_PACKAGES := wrk $(if $(shell command -v npm),,nodejs npm)
PEERS        := tests/load/peers
bench-deps:
	@$(call apt_install,$(BENCH_PACKAGES))
	@mkdir -p .bench
	@cmp -s $(PEERS)/package-lock.json .bench/node_modules/.payfn-lock || { \
	  cp $(PEERS)/package.json $(PEERS)/package-lock.json .bench/ && \
	  npm ci --prefix .bench --ignore-scripts --no-audit --no-fund && \
	  cp $(PEERS)/package-lock.json .bench/node_modules/.payfn-lock; }
	@test -x .bench/venv/bin/python || $(PYTHON) -m venv .bench/venv
	@cmp -s $(PEERS)/requirements.txt .bench/venv/.payfn-requirements || { \
	  .bench/venv/bin/pip install -q --disable-pip-version-check -r $(PEERS)/requirements.txt && \
	  cp $(PEERS)/requirements.txt .bench/venv/.payfn-requirements; }

deps: system-deps $(STAMP)

# Debian packages: installed only when missing. RUNLEVEL=1 keeps Debian's
# maintainer scripts from starting system-wide services on the ports payfn uses.
define apt_install
missing=""; for pkg in $(1); do \
  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$pkg"; \
done; \
if [ -n "$$missing" ]; then \
  echo "installing Debian packages:$$missing"; \
  $(SUDO) apt-get update -q && \
  $(SUDO) env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -q --no-install-recommends $$missing; \
fi
endef

system-deps:
	@$(call apt_install,$(APT_PACKAGES))

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c requirements.lock -e .
	@touch $@

clean: down
	rm -rf .stack .aws-sam
