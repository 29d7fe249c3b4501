#!/usr/bin/env bash
# Creates .venv with Python 3.12 and installs requirements.txt, requirements-tpu.txt (libtpu,
# for research.aot's compile-only TPU target), requirements-ray.txt (Ray, for --executor=ray of
# the experiment runners) and requirements-nodeps.txt (without dependencies). Idempotent: a second run only re-installs when either file changed.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  local candidates=(python3.12)
  # pyenv machines put 3.12 under its versions folder without it being the global version.
  for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do
    candidates+=("$p")
  done
  for p in "${candidates[@]}"; do
    if "$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
      echo "$p"; return 0
    fi
  done
  echo "error: Python 3.12 not found; install it (e.g. 'pyenv install 3.12') and rerun" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  py=$(find_python)
  echo "creating .venv with $py"
  "$py" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-tpu.txt requirements-ray.txt requirements-nodeps.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # (grep drops the pip warnings about this machine's unused local index folders)
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | { grep -v "^WARNING: Location" || true; }
  .venv/bin/python -m pip install -q -r requirements.txt 2>&1 | { grep -v "^WARNING: Location" || true; }
  .venv/bin/python -m pip install -q -r requirements-tpu.txt 2>&1 | { grep -v "^WARNING: Location" || true; }
  .venv/bin/python -m pip install -q -r requirements-ray.txt 2>&1 | { grep -v "^WARNING: Location" || true; }
  .venv/bin/python -m pip install -q --no-deps -r requirements-nodeps.txt 2>&1 | { grep -v "^WARNING: Location" || true; }
  .venv/bin/python -c "import jax, flax, optax, orbax.checkpoint, grain, tensorflow_datasets, ray"
  echo "$want" > "$stamp"
fi
