#!/usr/bin/env bash
# Runs the whole suite: lint (ruff, and import-linter's contracts; both pinned in
# pyproject.toml), then the programs of the real servers the tests start (PostgreSQL,
# MariaDB, a Pushgateway from Debian's packages when missing), then pytest with line
# coverage. Any lint finding fails the run, as a failing test does.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "lint: ruff check"
.venv/bin/ruff check pipeline_defs pipeline_defs_tests bench
# the rooms and the direction of imports (the contracts in pyproject.toml)
echo "lint: import-linter contracts"
.venv/bin/lint-imports --no-cache
# the servers' programs (Debian packages); each test session starts, owns and stops its own
# servers (pipeline_defs_tests/servers.py), never adopting one that answers on a port
bash scripts/services.sh install
# line coverage of pipeline_defs/, in this process and every Python process it starts
# (configured under [tool.coverage] in pyproject.toml); the report ends with the total
# (the data stays outside the working tree, where every process finds it by COVERAGE_FILE)
export COVERAGE_FILE=${TMPDIR:-/tmp}/pipeline_defs-coverage/data
rm -rf "$(dirname "$COVERAGE_FILE")" && mkdir -p "$(dirname "$COVERAGE_FILE")"
# two workers (pytest-xdist), a test file at a time each, the longest files first (the order
# conftest.py gives): most of an end-to-end test is waiting for servers, JVMs and daemon ticks,
# so two of them overlap on the 2 cores (37 -> 28 min measured); every worker starts and owns
# its own servers. PYTEST_WORKERS=0 runs the suite in this one process.
# the 25 slowest tests at the end; `fail_under` ([tool.coverage.report]) fails the run below
# the floor set from the measured line-and-branch figure
workers=${PYTEST_WORKERS:-2}
parallel=()
[ "$workers" != 0 ] && parallel=(-n "$workers" --dist loadfile --no-loadscope-reorder)
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 --cov \
  --cov-report=term "${parallel[@]}" "$@"
