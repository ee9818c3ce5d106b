# crm-ledger: `make demo` and `make test` set up everything they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := .demo
SEED ?= 7

.PHONY: demo test lint unit venv cdnow bench clean pg-start pg-stop kafka-start kafka-stop

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[postgres,dev]'
	touch $(STAMP)

# The package's bytecode, as a regular (non-editable) install writes it: Python reads .pyc
# files even where PYTHONDONTWRITEBYTECODE keeps it from writing them, and every command
# would otherwise compile the package from source first (about 0.15 s of each run).
venv: $(STAMP)
	@$(BIN)/python -m compileall -q -j 0 src > /dev/null

## demo: generate an 18-month multi-channel history, import it into SQLite, show a customer
demo: venv
	rm -rf $(DEMO) $(DEMO).keys
	$(BIN)/crm-ledger --data-dir $(DEMO) generate --seed $(SEED) --out $(DEMO)/events.jsonl --split-at 2025-01-01
	$(BIN)/crm-ledger --data-dir $(DEMO) init
	$(BIN)/crm-ledger --data-dir $(DEMO) import $(DEMO)/events.backfill.jsonl
	$(BIN)/crm-ledger --data-dir $(DEMO) audit checkpoint
	$(BIN)/crm-ledger --data-dir $(DEMO) import $(DEMO)/events.later.jsonl
	$(BIN)/crm-ledger --data-dir $(DEMO) audit checkpoint
	$(BIN)/crm-ledger --data-dir $(DEMO) customer show C000142 --as-of checkpoint:1
	$(BIN)/crm-ledger --data-dir $(DEMO) customer show C000142
	$(BIN)/crm-ledger --data-dir $(DEMO) timeline C000142 --limit 8
	$(BIN)/crm-ledger --data-dir $(DEMO) ltv --top 5
	$(BIN)/crm-ledger --data-dir $(DEMO) compare loyalty-north --truth $(DEMO)/events.truth.json --chart $(DEMO)/loyalty-north.png
	@echo
	@echo "The demo ledger is in $(DEMO). Look around with, for example:"
	@echo "  export CRM_LEDGER_DATA_DIR=$(DEMO)"
	@echo "  $(BIN)/crm-ledger customer find \"ada me\""
	@echo "  $(BIN)/crm-ledger history C000142 --as-of checkpoint:1"
	@echo "The web console on the demo:"
	@echo "  $(BIN)/crm-ledger --data-dir $(DEMO) users add alice --role admin"
	@echo "  $(BIN)/crm-ledger --data-dir $(DEMO) serve    # then http://127.0.0.1:8600/"

## lint: ruff, mypy (strict on src/), import-linter contracts, sizes, schema compatibility
lint: venv
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_sizes.py --strict
	$(BIN)/crm-ledger schemas check > /dev/null

cdnow: venv
	$(BIN)/python scripts/fetch_cdnow.py --dest .cache/cdnow

## test: lint, then the whole suite against SQLite and a real PostgreSQL server
test: lint cdnow
	@scripts/chromium.sh >/dev/null
	@url=$$(scripts/pg_test_server.sh start) || exit 1; \
	CRM_LEDGER_TEST_DATABASE_URL="$$url" CRM_LEDGER_CDNOW_DIR=.cache/cdnow $(BIN)/pytest -q; rc=$$?; \
	scripts/pg_test_server.sh stop; exit $$rc

pg-start:
	@scripts/pg_test_server.sh start

pg-stop:
	@scripts/pg_test_server.sh stop

kafka-start:
	@scripts/kafka_server.sh start

kafka-stop:
	@scripts/kafka_server.sh stop

## bench: ledger writes (SQLite and PostgreSQL), Kafka ingest, projection replay, CLV fit
bench: venv
	@url=$$(scripts/pg_test_server.sh start) || exit 1; \
	$(BIN)/python scripts/bench_ledger.py --database-url "$$url"; rc=$$?; \
	scripts/pg_test_server.sh stop; [ $$rc = 0 ] || exit $$rc; \
	$(BIN)/python scripts/bench_ingest.py && $(BIN)/python scripts/bench_replay.py && \
	$(MAKE) cdnow && $(BIN)/python scripts/bench_clv.py

clean:
	scripts/pg_test_server.sh stop
	scripts/kafka_server.sh stop
	rm -rf $(VENV) .cache $(DEMO) $(DEMO).keys .pytest_cache .mypy_cache .ruff_cache .hypothesis
