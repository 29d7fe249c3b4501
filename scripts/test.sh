#!/usr/bin/env bash
# Set up and run the default test suite (slow checks are marked and left to benchmarks).
# Two pytest workers: the tests are dominated by single-threaded XLA compilation. The workers and
# the training CLIs the tests start share one JAX persistent compilation cache, made new for each
# run of the suite: many tests compile the same shrunk programs again in a new process (measured
# on tests/test_reliability.py + tests/test_train.py: 221 s with it, 318 s without). Every
# program goes in, however fast it compiled: a shrunk training CLI compiles ~20 that take under
# 0.5 s (its warm run: 3.8 -> 3.2 CPU-s; tests/test_workdir_safety.py 52.5 -> 48.0 CPU-s, with
# TEST_CPU_REPORT; Zen 5, shared cores).
# xdist's default scheduling first sends each worker a run of ~30 consecutive tests, which keeps
# the tests of tests/test_ablation.py's 200-s module fixture on one worker; --dist loadgroup with
# xdist_group marks did not (xdist 3.8 ran tests of one group on both workers and the fixture was
# built twice). The XLA flags of the test processes are in tests/xla_flags.py.
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
cache=$(mktemp -d -t jax-test-cache.XXXXXX)
trap 'rm -rf "$cache"' EXIT
export JAX_COMPILATION_CACHE_DIR="$cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
set +e
.venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no test" >&2
  exit 1
fi
exit "$rc"
