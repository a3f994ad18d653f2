#!/usr/bin/env bash
# The main job on the embedded default: SQLite, a local folder of studies, an in-process worker.
# Extra arguments go to `radtriage demo` (e.g. --images ../shared/data/cxr/nih --limit 20).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/radtriage demo "$@"
