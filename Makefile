# DTQ's front door. `make run` and `make test` set everything up from nothing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PROTO_FILES := $(wildcard protos/dtq/v1/*.proto)

.PHONY: install run test lint protos protos-check format clean bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "DTQ needs Python 3.11+ (set PYTHON=...)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

## run: a coordinator on 127.0.0.1:50051 (SQLite in ./dtq-data) and two demo nodes.
run: install
	@$(PY) scripts/devrun.py

## test: the whole suite in three passes: the default suite (PostgreSQL store tests included),
## the chaos scenarios at small size (make chaos runs them at full size), then the suites that
## exercise the store again with every coordinator on PostgreSQL.
PG_SUITES := $(addprefix tests/server/test_,lifecycle.py submit.py submit_stream.py piles.py \
	dependencies.py schedules.py schedule_firing.py headers.py queue_depth.py restart.py \
	sessions.py handoff.py rate_limits.py strict_types.py watchers.py queue_listing.py \
	nul_characters.py field_fuzz.py cancel_in_flight.py) \
	tests/e2e/test_durability_e2e.py tests/e2e/test_lifecycle_e2e.py tests/e2e/test_large_payloads.py
test: install postgres-bin browser-bin node-deps fuse-lib
	$(PY) -m pytest -m "not chaos" --durations=15
	$(PY) -m pytest -m chaos tests/chaos -p no:randomly
	DTQ_TEST_STORE=postgres $(PY) -m pytest -m "not sqlite_only and not postgres" $(PG_SUITES)

## postgres-bin: the PostgreSQL server binaries the test fixtures start (tests/postgres.py).
## Installs Debian's postgresql when /usr/lib/postgresql has none and DTQ_PG_BIN is unset
## (apt-get: run as root).
.PHONY: postgres-bin
postgres-bin:
	@if [ -z "$(DTQ_PG_BIN)" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	fi

## browser-bin: the headless Chromium the web UI's tests drive (tests/ui, with Playwright).
## Installs Debian's chromium when /usr/bin/chromium is missing (apt-get: run as root);
## Playwright's own browser downloads are never used.
.PHONY: browser-bin
browser-bin:
	@if [ ! -x /usr/bin/chromium ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	fi

## node-deps: Node.js and the packages of the Node.js client and worker that prove the contract
## (tests/contract/js). Installs Debian's nodejs and npm when node is missing (apt-get: as root;
## otherwise those tests skip, or fail under CI), then `npm ci` there when node_modules is
## missing or older than package-lock.json.
JS_DIR := tests/contract/js
.PHONY: node-deps node-bin
node-deps: $(JS_DIR)/node_modules/.installed

node-bin:
	@command -v node >/dev/null && command -v npm >/dev/null || \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				$$(command -v node >/dev/null || echo nodejs) npm; \
		else \
			echo "node-deps: node or npm missing; install Node.js 18+ and npm (root: make node-deps)" >&2; \
		fi

$(JS_DIR)/node_modules/.installed: $(JS_DIR)/package-lock.json | node-bin
	@if command -v npm >/dev/null; then \
		cd $(JS_DIR) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	fi

## fuse-lib: the libfuse that chaos D3 read-only mounts its FUSE filesystem with (through
## mfusepy). Installs Debian's libfuse3-3 when Python finds no libfuse 3 or 2 (apt-get: root
## only; elsewhere the scenario is skipped, saying why).
.PHONY: fuse-lib
fuse-lib:
	@if ! $(PYTHON) -c 'import sys; from ctypes.util import find_library as f; \
			sys.exit(not (f("fuse3") or f("fuse")))'; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfuse3-3; \
		else \
			echo "fuse-lib: no libfuse and not root: chaos D3 read-only will be skipped" >&2; \
		fi; \
	fi

## lint: ruff, mypy, buf lint and a check that generated code matches protos/.
lint: install protos-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd protos && ../$(BIN)/buf lint

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## protos: regenerate dtq/v1 from protos/ (the only way that code is written).
protos: install
	rm -rf dtq/v1
	mkdir -p dtq/v1
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_FILES)
	touch dtq/v1/__init__.py

protos-check: install
	@rm -rf .protos-check && mkdir -p .protos-check/dtq/v1
	@$(PY) -m grpc_tools.protoc -Iprotos --python_out=.protos-check --pyi_out=.protos-check \
		--grpc_python_out=.protos-check $(PROTO_FILES)
	@touch .protos-check/dtq/v1/__init__.py
	@diff -r -x __pycache__ .protos-check/dtq/v1 dtq/v1 >/dev/null || \
		{ echo "dtq/v1 is out of date with protos/: run 'make protos'" >&2; rm -rf .protos-check; exit 1; }
	@rm -rf .protos-check
	@echo "protos: generated code matches protos/"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache dtq-data

## bench: P1-P3 figures for DTQ on this machine (BENCH_SIZE=small for a smoke run).
BENCH_SIZE ?= full
bench: install
	$(PY) -m bench.run --size $(BENCH_SIZE)

## bench-postgres: P1-P3 with every coordinator on PostgreSQL (a server the run starts, with
## fsync on; a fresh database per coordinator).
.PHONY: bench-postgres
bench-postgres: install postgres-bin
	$(PY) -m bench.run --size $(BENCH_SIZE) --postgres --only P1,P2,P3

## bench-affinity: P1, P2, P3 pipelined and 64 in flight with the coordinator left to the
## scheduler and pinned to one CPU (taskset), alternately; what pinning buys and costs here.
.PHONY: bench-affinity
bench-affinity: install
	$(PY) -m bench.affinity --size $(BENCH_SIZE)

## chaos: every fault scenario at full size (10,000-task F1 seeds, 10-minute soak, 5-minute
## feature soaks on both stores; ~30 min), then one table row per scenario and a summary
## line. DTQ_CHAOS_SEED=N replays a soak.
.PHONY: chaos
chaos: install fuse-lib
	DTQ_CHAOS_SIZE=full $(PY) -m pytest -m chaos tests/chaos -p no:randomly -p no:cacheprovider

## bench-peers: P1, P2 and one-call enqueue on Huey, Dramatiq and Celery (their own venv, a Redis
## this starts on loopback) and DTQ, interleaved, plus DTQ's pipelined enqueue against the peers'
## one-call rate; one table of DTQ / best-peer ratios.
## Installs Debian's redis-server when missing (apt-get: run as root). BENCH_SIZE=small: quick.
PEERS_VENV ?= .bench/peers-venv
.PHONY: bench-peers
bench-peers: install $(PEERS_VENV)/.installed
	@command -v redis-server >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }
	$(PY) -m bench.compare --size $(BENCH_SIZE) --peers-python $(PEERS_VENV)/bin/python

$(PEERS_VENV)/.installed: bench/peers/requirements.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet -r bench/peers/requirements.txt
	@touch $@
