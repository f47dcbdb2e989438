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
exec .venv/bin/pytest "$@"
