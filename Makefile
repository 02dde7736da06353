# The two commands of the README: `make run` and `make test`. Everything else is a convenience.
SHELL := /bin/bash
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: web install infra infra-down run up stop stop-services logs test test-unit test-integration lint format typecheck clean \
        bench bench-aggregator bench-fanout bench-peer-ws bench-peer-rest bench-peer-fix bench-rest bench-e2e clean-topics chaos load-rest load-ws load-rest-headless load-ws-headless

install:            ## install what is missing (Debian packages, .venv, Kafka jars)
	@deploy/local/install.sh

infra: install      ## start Kafka, PostgreSQL and Redis (reuses running ones)
	@deploy/local/infra.sh up

infra-down:
	@deploy/local/infra.sh down

web:                ## build the live market page (web/dist) once; again when web/ changes
	@if [ ! -f web/dist/.built ] || [ -n "$$(find web/src web/package.json web/build.mjs -newer web/dist/.built 2>/dev/null | head -1)" ]; then \
	  cd web && ( [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error ) && npm run build --silent && touch dist/.built; fi

run: install web    ## the whole platform in the foreground; Ctrl-C stops it
	@deploy/local/stack.sh run

up: install web     ## the whole platform in the background; returns when every service answers
	@deploy/local/stack.sh up

# `make run` on a recorded Coinbase feed instead of the simulator (docs/aggregator.md "Coinbase"):
# the source slot plays RECORDING through the mock feed and the real connector; own topic/Redis prefix.
.PHONY: run-recording
RECORDING ?= ../shared/data/coinbase-ws-2021-04-17.ndjson
run-recording: install  ## the whole platform on a Coinbase recording (RECORDING=file, SPEED=1)
	@MD_SOURCE=recording MD_RECORDING_FILE="$(abspath $(RECORDING))" MD_RECORDING_SPEED="$(or $(SPEED),1)" \
	  MD_TOPIC_PREFIX=rec MD_REDIS_PREFIX=rec \
	  MD_SYMBOLS="$$($(PY) -m aggregator.sources.recording --list-products "$(abspath $(RECORDING))")" \
	  deploy/local/stack.sh run

stop:               ## stop what `make up` started
	@deploy/local/stack.sh stop

stop-services:      ## stop the services, keep Kafka, PostgreSQL and Redis running
	@deploy/local/stack.sh stop-services

logs:
	@deploy/local/stack.sh logs

# coverage of `make test` (pyproject [tool.coverage]): total printed, HTML and XML under var/coverage;
# COV_ARGS= turns it off; below 80 % the run fails (measured total: docs/operations.md "Coverage")
COV_ARGS ?= --cov --cov-report=term:skip-covered --cov-report=html:var/coverage/html --cov-report=xml:var/coverage/coverage.xml --cov-fail-under=80
test: lint typecheck infra  ## lint and types first, then the whole suite on the real servers
	@$(PY) -m storage migrate >/dev/null
	@mkdir -p var/coverage
	@# a data file per run (pytest-cov erases its own at start): two runs in one tree never mix
	COVERAGE_FILE=$(CURDIR)/var/coverage/.coverage.run$$$$ $(PY) -m pytest -q -p no:cacheprovider $(COV_ARGS) $(PYTEST_ARGS); \
	  rc=$$?; rm -f var/coverage/.coverage.run$$$$*; exit $$rc

test-unit: install
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

test-integration: infra
	$(PY) -m pytest -q tests/integration $(PYTEST_ARGS)

lint: install      ## ruff: style, complexity <= 15, no blind except, simplifications; formatting
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format:
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .

typecheck: install  ## mypy over every package and the tests; strict flags for core/ and the protocol cores
	$(PY) -m mypy

clean:              ## stop everything and remove var/ (data, logs, caches)
	-@deploy/local/stack.sh stop 2>/dev/null
	@if [ -L var/postgres-data ]; then rm -rf "$$(readlink var/postgres-data)"; fi
	rm -rf var

# --- benchmarks and load runs (numbers go to docs/benchmarks.md) ---
bench-aggregator: infra
	$(PY) -m loadtests.bench_aggregator

bench-fanout: infra
	$(PY) -m loadtests.fanout

bench-peer-ws: infra   ## gateway_ws vs Centrifugo v6 (built into var/peers by go install), side by side
	flock /tmp/md-bench.lock $(PY) -m loadtests.bench_peer_ws --connections 1000,5000 --cores 1,2

bench-peer-rest: infra   ## gateway_rest vs a bare uvicorn route (same wrk, CPU per request); ARGS="--servers bare-uvicorn,gateway,bare-granian,gateway-granian"
	$(PY) -m loadtests.bench_peer_rest $(ARGS)

bench-peer-fix: infra    ## fix_gateway vs a QuickFIX/J acceptor (built into var/peers by Maven), same clients; ARGS="--gateways 2"
	$(PY) -m loadtests.bench_peer_fix $(ARGS)

bench-rest: infra
	$(PY) -m loadtests.bench_rest

bench-e2e:          ## on the running stack (make up): latency per hop, seq checks, CPU; ARGS="--duration 5"
	$(PY) -m loadtests.bench_e2e $(ARGS)

clean-topics: infra ## delete the topics killed test/benchmark runs left on the broker (test.*, bench.*); not while tests or benchmarks run
	$(PY) -m loadtests.cleanup

chaos:              ## on the running stack (make up): kill/restart one piece at a time under a verifying client; writes docs/reliability.md; ARGS="--only ws-worker"
	$(PY) -m loadtests.chaos $(ARGS)

load-rest:
	.venv/bin/locust -f loadtests/locust_rest.py --host http://127.0.0.1:8000

load-ws:
	.venv/bin/locust -f loadtests/locust_ws.py --host ws://127.0.0.1:8001

load-rest-headless:
	$(PY) -m loadtests.run_locust rest

load-ws-headless:
	$(PY) -m loadtests.run_locust ws
