"""Test setup: 8 fake CPU devices and the test suite's XLA flags (tests/xla_flags.py), set
before jax is imported anywhere."""

import os

from xla_flags import xla_flags

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {xla_flags(8)}".strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
