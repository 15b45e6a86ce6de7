# The two commands a fresh clone needs: `make up` (run the platform) and `make test` (run the tests).
# Every target installs what it needs first: the virtualenv, pinned dependencies, generated gRPC code.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMPS := .stamps
PROTOS := $(shell find protos -name '*.proto' 2>/dev/null)

.PHONY: setup protos up down status logs demo test fuzz lint format bench clean help

help:
	@echo "make up | down | status | logs | demo | test | fuzz | lint | bench | protos | clean"

setup: $(STAMPS)/deps $(STAMPS)/protos

$(STAMPS)/deps: pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@mkdir -p $(STAMPS) && touch $@

# Generated code is not committed: it is produced here, from protos/, whenever a .proto changes.
$(STAMPS)/protos: $(STAMPS)/deps $(PROTOS) tools/gen_protos.py
	$(PY) tools/gen_protos.py
	@touch $@

protos: $(STAMPS)/deps
	$(PY) tools/gen_protos.py
	@mkdir -p $(STAMPS) && touch $(STAMPS)/protos

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

# `cdp up` prints on this terminal why it cannot start (a port taken, a service that exited) and exits 1.
up: setup
	@$(PY) -m cdp.cli up

down:
	@if [ -x $(PY) ]; then $(PY) -m cdp.cli down; else echo "nothing was running"; fi

# `cdp status` exits 3 unless every server is SERVING; make turns any failed recipe into its own exit code, 2.
status: setup
	@$(PY) -m cdp.cli status

demo: up
	$(PY) -m cdp.cli demo

logs:
	@mkdir -p data/logs && tail -n 40 -F data/logs/*.log

test: setup node_modules/.package-lock.json
	$(PY) -m pytest -q -p no:cacheprovider

# The fuzz tests with many more cases than `make test` tries (FUZZ_EXAMPLES per test); the counts are printed.
FUZZ_EXAMPLES ?= 1500
fuzz: setup node_modules/.package-lock.json
	CDP_TEST_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider -m fuzz --timeout=3600

lint: setup node_modules/.package-lock.json
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy cdp services tests bench tools
	npx --no-install buf lint
	npx --no-install buf format -d --exit-code

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	$(PY) -m bench.eventlog
	$(PY) -m bench.events
	$(PY) -m bench.ingest
	$(PY) -m bench.ingest.csv_onboarding
	$(PY) -m bench.identity
	$(PY) -m bench.runtime
	$(PY) -m bench.idle
	$(PY) -m bench.segments.latency
	$(PY) -m bench.segments --backends sqlite,postgres
	$(PY) -m bench.governance

clean: down
	rm -rf $(VENV) $(STAMPS) node_modules data cdp/common cdp/ingest cdp/identity cdp/segments cdp/activation cdp/governance cdp/ops
