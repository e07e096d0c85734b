#!/usr/bin/env bash
# Create .venv (if missing) and install graft with its test tools. Safe to re-run.
# TORCH_SPEC picks the torch build: the default pins the CPU wheel this project's machines carry; on a GPU box use
# e.g. TORCH_SPEC='torch' (or the CUDA index of your choice) before running this.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first and alone: a looser spec pulled in by another package would fetch a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || python -m pip install -q "$TORCH_SPEC"
# The dev extra holds the test tools and what the tests read back: build (the wheel smoke), optuna-dashboard,
# optuna-integration, mlflow-skinny and wandb (graft[tracking]). uv installs them much faster when it is there.
if command -v uv >/dev/null; then
  uv pip install -q --python .venv/bin/python -e '.[dev]'
else
  python -m pip install -q -e '.[dev]'
fi

# FigStep renders in FreeMonoBold (Debian fonts-freefont-ttf); graft falls back to another bold monospace font
# with a warning when it is missing, so this step is best effort.
if [[ ! -f /usr/share/fonts/truetype/freefont/FreeMonoBold.ttf ]] && command -v apt-get >/dev/null \
   && [[ $(id -u) -eq 0 ]]; then
  (apt-get update -qq && apt-get install -y -qq fonts-freefont-ttf) >/dev/null 2>&1 \
    || echo "note: could not install fonts-freefont-ttf; FigStep will use a fallback font" >&2
fi

# `graft search`'s scale-out test starts a throwaway PostgreSQL server (initdb/pg_ctl of Debian's postgresql);
# best effort here, but scripts/test.sh then requires it wherever this script could install it (as root).
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! command -v initdb >/dev/null \
   && command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1 \
    || echo "note: could not install postgresql; the PostgreSQL scale-out test cannot run" >&2
fi
