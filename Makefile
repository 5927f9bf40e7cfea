# classmesh: `make run` starts the whole system, `make test` installs what the tests need and runs them all.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test lint format bench system-deps test-fast test-browser test-multiprocess clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: create .venv, install, start everything on loopback (Ctrl-C stops it)
run: $(STAMP)
	$(BIN)/classmesh dev

## system-deps: apt-get what the tests need when it is missing (redis-server, chromium, ffmpeg, postgresql)
system-deps:
	@scripts/system-deps.sh

## lint: ruff (lint + format check) and mypy
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## test: system deps, venv, lint, then every suite (browser and multi-process included),
## inside a network namespace that has only loopback when we are root
test: system-deps $(STAMP) lint
	scripts/in-loopback-netns.sh $(BIN)/pytest $(PYTEST_ARGS)

## test-fast: the suites without real browsers or several processes
test-fast: $(STAMP)
	scripts/in-loopback-netns.sh $(BIN)/pytest -m "not browser and not multiprocess" $(PYTEST_ARGS)

## test-browser / test-multiprocess: only the slow suites (real Chromium; several classmesh processes)
test-browser: system-deps $(STAMP)
	scripts/in-loopback-netns.sh $(BIN)/pytest -m browser $(PYTEST_ARGS)

test-multiprocess: system-deps $(STAMP)
	scripts/in-loopback-netns.sh $(BIN)/pytest -m multiprocess $(PYTEST_ARGS)

## bench: full benchmarks (JSON on stdout; copy results into docs/benchmarks.md). Janus baselines need
## `apt-get install janus` (see bench/README.md); without it they report themselves unavailable.
bench: system-deps $(STAMP)
	$(BIN)/python bench/scheduling.py --scale 1
	$(BIN)/python bench/scheduling.py --scale 10
	$(BIN)/python bench/recording.py --publishers 3 --warmup 6 --window 20
	scripts/in-loopback-netns.sh $(BIN)/python bench/join_latency.py --joins 20
	for subs in 5 16 25; do $(BIN)/python bench/sfu_capacity.py --publishers 4 --subscribers-per-publisher $$subs \
	  --no-audio --warmup 5 --duration 30 --baseline janus,mediarelay; done
	# one worker against two, each at a fixed CPU budget (a cgroup quota: needs root, skipped without it)
	-$(BIN)/python bench/sfu_capacity.py --workers 1,2 --find-capacity --worker-cpu 0.25 --publishers 4 \
	  --subscribers-per-publisher 4 --capacity-step 2 --capacity-max-streams 120 --warmup 5 --duration 15
	$(BIN)/python bench/sfu_capacity.py --workers 1,2 --publishers 4 --subscribers-per-publisher 16 --warmup 5 --duration 30
	# the delay target: the SFU under a real-time policy, as on a machine of its own (needs root, skipped without it)
	-$(BIN)/python bench/sfu_capacity.py --workers 2 --realtime 10 --publishers 4 --subscribers-per-publisher 16 \
	  --warmup 5 --duration 30 --baseline janus

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
