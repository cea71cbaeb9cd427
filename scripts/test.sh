#!/usr/bin/env bash
# Runs the whole suite: lint (ruff, pinned in pyproject.toml), then the real servers the tests
# use (PostgreSQL, MariaDB, moto's S3 server, a Pushgateway, on loopback; installed from
# Debian's packages when missing), then pytest with line coverage. Any lint finding fails the
# run, as a failing test does.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "lint: ruff check"
.venv/bin/ruff check pipeline_defs pipeline_defs_tests bench
bash scripts/services.sh up
# line coverage of pipeline_defs/, in this process and every Python process it starts
# (configured under [tool.coverage] in pyproject.toml); the report ends with the total
# (the data stays outside the working tree, where every process finds it by COVERAGE_FILE)
export COVERAGE_FILE=${TMPDIR:-/tmp}/pipeline_defs-coverage/data
rm -rf "$(dirname "$COVERAGE_FILE")" && mkdir -p "$(dirname "$COVERAGE_FILE")"
exec .venv/bin/python -m pytest -q -p no:cacheprovider --cov --cov-report=term "$@"
