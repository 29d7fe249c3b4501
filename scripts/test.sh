#!/usr/bin/env bash
# Set up and run the default test suite (slow checks are marked and left to benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
set +e
.venv/bin/python -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no test" >&2
  exit 1
fi
exit "$rc"
