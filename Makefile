# The two commands a new user needs: `make demo` and `make test`. Both set up first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DAGSTER_HOME ?= $(CURDIR)/.cache/dagster_home
DEV_PORT ?= 3000
# MLflow's local store of the ML examples (when MLFLOW_TRACKING_URI names no server)
export PIPELINE_MLFLOW_DIR ?= $(CURDIR)/.cache/mlruns

.PHONY: setup home demo test dev validate bench services-up services-down kafka-up kafka-down \
	spark-up spark-down clean

# The Dagster instance for demo and dev: runs stay visible in the UI across sessions.
home:
	@mkdir -p $(DAGSTER_HOME)
	@[ -f $(DAGSTER_HOME)/dagster.yaml ] || cp instance/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

setup:
	@bash scripts/setup.sh

demo: setup home
	@$(VENV)/bin/pipeline validate configs
	@DAGSTER_HOME=$(DAGSTER_HOME) $(VENV)/bin/pipeline run configs/orders_enrichment.json --show 5

test: setup
	@bash scripts/test.sh

# Ctrl-C or SIGTERM (to make, or to the process) stops it with everything it started
dev: setup home
	@DAGSTER_HOME=$(DAGSTER_HOME) $(PY) scripts/dev.py $(VENV)/bin/dg dev -h 127.0.0.1 -p $(DEV_PORT)

validate: setup
	@$(VENV)/bin/pipeline validate configs

# every figure of bench/RESULTS.md; run it alone on the machine (about 30 minutes)
bench: setup
	@$(PY) bench/overhead_bench.py
	@$(PY) bench/run_bench.py --scale 0.25 --runs 5
	@$(PY) bench/run_bench.py --scale 1 --runs 3
	@$(PY) bench/load_bench.py
	@$(PY) bench/stream_bench.py
	@$(PY) bench/dq_bench.py
	@$(PY) bench/ml_bench.py

# PostgreSQL, MariaDB and an S3 server (moto) on loopback, as the tests use them
services-up: setup
	@bash scripts/services.sh up

services-down:
	@bash scripts/services.sh down

# A single-node Kafka broker (KRaft) on 127.0.0.1:29092, data in a temp directory
kafka-up: setup
	@bash scripts/kafka.sh up

kafka-down:
	@bash scripts/kafka.sh down

# A Spark standalone master and one worker on loopback: SPARK_MASTER=spark://127.0.0.1:57077
spark-up: setup
	@bash scripts/spark.sh up

spark-down:
	@bash scripts/spark.sh down

clean:
	rm -rf .cache/sample-data .cache/output .cache/dagster_home
