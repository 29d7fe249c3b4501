"""Test setup: 8 fake CPU devices and the test suite's XLA flags (tests/xla_flags.py), set
before jax is imported anywhere."""

import os

from xla_flags import xla_flags

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {xla_flags(8)}".strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
  """`TEST_CPU_REPORT=<folder>`: CPU seconds per test into that folder (tests/cpu_report.py)."""
  if os.environ.get("TEST_CPU_REPORT"):
    from cpu_report import CpuReport  # pylint: disable=import-outside-toplevel  # only when asked
    config.pluginmanager.register(CpuReport(os.environ["TEST_CPU_REPORT"]), "cpu_report")
