#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs Mosquitto, PostgreSQL 15 + TimescaleDB +
# PostGIS and Chromium (scripts/install-services.sh), the Python environment, then runs lint
# (ruff), the type checker (mypy) and pytest. The tests start their own private Mosquitto and
# TimescaleDB on free ports and stop them afterwards. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-services.sh
bash scripts/bootstrap-python.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy  # which packages, how strict: [tool.mypy] in pyproject.toml
# Two workers (CARGOWATCH_TEST_WORKERS), each with its own private services; a file's tests stay
# on one worker, so a module's fixtures (a fleet run, a serve process) are built once.
exec .venv/bin/pytest -n "${CARGOWATCH_TEST_WORKERS:-2}" --dist loadfile "$@"
