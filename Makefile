# The two commands a new user needs: `make demo` and `make test`. Both set up first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export DAGSTER_HOME ?= $(CURDIR)/.cache/dagster_home

.PHONY: setup demo test dev validate bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@mkdir -p $(DAGSTER_HOME)
	@$(VENV)/bin/pipeline validate configs
	@$(VENV)/bin/pipeline run configs/orders_enrichment.json

test: setup
	@bash scripts/test.sh

dev: setup
	@mkdir -p $(DAGSTER_HOME)
	$(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

validate: setup
	@$(VENV)/bin/pipeline validate configs

bench: setup
	@$(PY) bench/run_bench.py

clean:
	rm -rf .cache/sample-data .cache/output .cache/dagster_home
