"""XLA_FLAGS of the test processes and of the CLIs the tests start.

The tests run tiny models, for which nearly all the time is XLA's CPU compilation, most of it
LLVM optimising the generated code (-O3). At -O0 the same programs compile 2-4x faster (a
1-layer encoder-decoder's sharded step and its single-device reference: 81 s -> 28 s on an
AVX2-only 2-core CPU) and compute the same operations; only how fast the code runs changes,
which tests do not measure. Training runs, benchmarks and the quick start keep XLA's default.
"""

import os

TEST_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
  return f"--xla_force_host_platform_device_count={devices} {TEST_FLAGS}"


def cli_env(devices: int = 1) -> dict[str, str]:
  """The environment of a CLI a test starts: this one's, on `devices` fake CPU devices."""
  return dict(os.environ, XLA_FLAGS=xla_flags(devices))
