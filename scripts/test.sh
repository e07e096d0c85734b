#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the linter and the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
ruff check .
# As root, scripts/setup.sh installs PostgreSQL: its scale-out test must then run, never skip.
if [[ $(id -u) -eq 0 ]]; then export GRAFT_REQUIRE_POSTGRES=${GRAFT_REQUIRE_POSTGRES:-1}; fi
python -m pytest -q "$@"
