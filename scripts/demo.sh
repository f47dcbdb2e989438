#!/usr/bin/env bash
# The main job: `cargowatch demo` on embedded defaults (in-process broker, SQLite, simulated
# fleet, engine, API and desk page). Needs only Python >= 3.11. Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap-python.sh
exec .venv/bin/cargowatch demo "$@"
