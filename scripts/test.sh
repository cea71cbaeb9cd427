#!/usr/bin/env bash
# Runs the whole suite: lint (ruff, pinned in pyproject.toml), then the real servers the tests
# use (PostgreSQL, MariaDB, moto's S3 server, on loopback; installed from Debian's packages
# when missing), then pytest. Any lint finding fails the run, as a failing test does.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "lint: ruff check"
.venv/bin/ruff check pipeline_defs pipeline_defs_tests bench
bash scripts/services.sh up
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
