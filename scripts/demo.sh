#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run `graft demo` on the generated tiny example. Extra arguments go to graft demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
graft demo "$@"
