#!/usr/bin/env bash
# Runs the whole suite. Services the tests need are started here (later issues add
# PostgreSQL, MariaDB, Kafka, the S3 server); today the suite needs Spark only.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
