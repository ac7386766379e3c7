# The two commands a new machine needs (Python 3.11 and a reachable RabbitMQ):
#   make demo   set up, then run the main job on the embedded defaults and show its result
#   make test   set up, then run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint dev bench bench-backfill

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Runs of the demo land in this Dagster instance, so `make dev` shows them afterwards.
DAGSTER_HOME_DIR ?= $(CURDIR)/data/runtime/dagster_home

demo: install
	scripts/ensure-broker
	DAGSTER_HOME=$(DAGSTER_HOME_DIR) scripts/dagster-home
	DAGSTER_HOME=$(DAGSTER_HOME_DIR) $(BIN)/invsync demo

test: install
	scripts/ensure-broker
	scripts/ensure-chromium
	$(BIN)/ruff check invsync_pipeline invsync_pipeline_tests bench
	$(BIN)/pytest -n 2 --dist loadfile --durations=15

lint: install
	$(BIN)/ruff check invsync_pipeline invsync_pipeline_tests bench
	$(BIN)/ruff format --check invsync_pipeline invsync_pipeline_tests bench

# The same runtime dir and broker namespace as the demo, so its sensors watch the demo's queues.
dev: install
	scripts/ensure-broker
	DAGSTER_HOME=$(DAGSTER_HOME_DIR) scripts/dagster-home
	DAGSTER_HOME=$(DAGSTER_HOME_DIR) INVSYNC_NAMESPACE=$${INVSYNC_NAMESPACE-demo.} $(BIN)/dagster dev -w workspace.yaml

bench: install
	scripts/ensure-broker
	$(BIN)/python bench/drain.py
	$(BIN)/python bench/outbox.py
	$(BIN)/python bench/sync_lag.py
	$(BIN)/python bench/reconcile.py
	$(BIN)/python bench/fuzz_contract.py

# Separate: it generates 26 GB of history first (about 25 minutes) in a temporary dir.
bench-backfill: install
	scripts/ensure-broker
	$(BIN)/python bench/backfill.py
