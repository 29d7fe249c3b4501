#!/usr/bin/env bash
# Set up and run the default test suite (slow checks are marked and left to benchmarks).
# Three pytest workers on the 2 cores: the tests are dominated by single-threaded XLA
# compilation and by subprocess start-up, which leave a core idle part of the time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
# Prepare the bundled corpora and task datasets once, so that parallel workers never race to
# build them.
.venv/bin/python -c "
from research.config import DataConfig
from research.data import corpora, tasks
corpora.prepared_builder(DataConfig())
for name in tasks.BUILDERS:
  tasks.prepared_builder(name, corpora.data_dir(DataConfig()))
"
set +e
.venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-3}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no test" >&2
  exit 1
fi
exit "$rc"
