#!/usr/bin/env bash
# Runs the whole suite: starts the real servers the tests use (PostgreSQL, MariaDB, moto's S3
# server, on loopback; installed from Debian's packages when missing), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh up
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
