#!/usr/bin/env bash
# The whole test suite: lint, type checks, architecture contracts, then pytest (which starts Orthanc and
# PostgreSQL itself on free loopback ports). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --dev
.venv/bin/ruff check radtriage tests benchmarks
.venv/bin/mypy
.venv/bin/lint-imports
exec .venv/bin/python -m pytest "$@"
