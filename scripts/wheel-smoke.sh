#!/usr/bin/env bash
# Build graft's wheel and run it from a throwaway virtual environment outside the checkout: what `pip install graft`
# users get must hold the CLI and the shipped search spaces. Fast: the wheel is built without an isolated build
# environment, installed with --no-deps, and the dependencies come from the project's .venv (a .pth line), so
# nothing is downloaded. Usage: bash scripts/wheel-smoke.sh (after scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Built from a copy of the checkout's files (tracked and not ignored): no stale build/ folder can leak into it.
mkdir "$WORK/src"
git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - | tar -xf - -C "$WORK/src"
"$PY" -m build --wheel --no-isolation --outdir "$WORK/dist" "$WORK/src" >"$WORK/build.log" 2>&1 \
  || { cat "$WORK/build.log" >&2; exit 1; }
WHEEL=$(ls "$WORK"/dist/graft-*.whl)
"$PY" -m venv --without-pip "$WORK/venv"
DEPS=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
SITE=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The project's installed dependencies, after the new environment's own site-packages (so the wheel's graft wins;
# .pth files in DEPS, such as an editable graft, are not processed from a plain path entry).
echo "$DEPS" >"$SITE/zz-graft-deps.pth"
"$PY" -m pip --python "$WORK/venv/bin/python" install -q --no-deps "$WHEEL" 2>/dev/null \
  || "$PY" -m pip install -q --no-deps --target "$SITE" "$WHEEL"

cd "$WORK"  # outside the checkout, with nothing of it on the path
unset PYTHONPATH
where=$("$WORK/venv/bin/python" -c 'import graft; print(graft.__file__)')
[[ $where == "$SITE"/* ]] || { echo "wheel smoke: graft imported from $where, not the wheel" >&2; exit 1; }
"$WORK/venv/bin/graft" --help >/dev/null
spaces=$("$WORK/venv/bin/graft" search --list-spaces)
for name in global layerwise blockwise smooth attn_mlp layerwise_groups; do
  grep -q "$name" <<<"$spaces" || { echo "wheel smoke: shipped space $name missing from the wheel" >&2; exit 1; }
done
"$WORK/venv/bin/python" - <<'PY'
from graft.search.spaces import resolve
from graft.search.space import SearchSpace

space = SearchSpace.from_yaml(resolve("layerwise"))  # a shipped space loads by name from the installed wheel
assert space.sampler == "cmaes", space.sampler
PY
"$WORK/venv/bin/graft" examples "$WORK/examples" -q >/dev/null  # the shipped example configs, copied out
"$WORK/venv/bin/python" - "$WORK/examples" <<'PY'
import sys
from pathlib import Path

from graft.search.config import SearchEvalConfig

config = SearchEvalConfig.from_yaml(Path(sys.argv[1]) / "search" / "eval.yaml")  # points at the wheel's fixtures
assert Path(config.data).is_file(), config.data
PY
echo "wheel smoke: $(basename "$WHEEL") installs and runs outside the checkout (graft --help, --list-spaces, examples)"
