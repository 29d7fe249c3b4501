"""CPU seconds per test, for trimming the suite on shared cores (wall times there say little).

Enabled by `TEST_CPU_REPORT=<folder>` (tests/conftest.py): each pytest process (each xdist
worker) writes `<folder>/<worker>.json` after every test, with per test id the CPU seconds of
setup, call and teardown: this process's user + system time plus that of the children it waited
for (os.times), so the training CLIs a test starts count, and those that tests/cli.py forked. A
module fixture counts in the setup of its first test. Processes nobody here waits for (Ray's
daemons and workers) do not show in os.times; `live` is a rough trace of them: the CPU time
gained during the phase by descendants still alive at its end. `total` is the process's whole
CPU (collection and imports included; the xdist controller's includes its workers').

  TEST_CPU_REPORT=/tmp/cpu bash scripts/test.sh
  .venv/bin/python tests/cpu_report.py /tmp/cpu   # per file, then the tests, largest first
"""

import json
import os
import pathlib
import sys
import time

import pytest

PHASES = ("setup", "call", "teardown")


def _cpu() -> float:
  """This process's CPU seconds plus those of the children it waited for, and of the CLIs that
  tests/cli.py forked from its server (not children of this process)."""
  times = os.times()
  forked = getattr(sys.modules.get("tests.cli"), "forked_cpu_seconds", 0.0)
  return times.user + times.system + times.children_user + times.children_system + forked


def _descendants_cpu() -> dict[int, float]:
  """Own CPU seconds of each live descendant process, by pid (psutil comes with Ray)."""
  try:
    import psutil  # pylint: disable=import-outside-toplevel  # only for this optional report
  except ImportError:
    return {}
  seconds = {}
  for process in psutil.Process().children(recursive=True):
    try:
      times = process.cpu_times()
      seconds[process.pid] = times.user + times.system
    except psutil.Error:
      pass
  return seconds


class CpuReport:
  """A pytest plugin writing per-test CPU seconds to `<folder>/<worker>.json`."""

  def __init__(self, folder: str):
    self.path = pathlib.Path(folder) / f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.json"
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.tests: dict[str, dict[str, float]] = {}

  def _measure(self, item, phase):
    start_cpu, start_wall, start_live = _cpu(), time.monotonic(), _descendants_cpu()
    yield
    end_live = _descendants_cpu()
    entry = self.tests.setdefault(item.nodeid, {"live": 0.0, "wall": 0.0})
    entry[phase] = round(_cpu() - start_cpu, 3)
    entry["wall"] = round(entry["wall"] + time.monotonic() - start_wall, 3)
    entry["live"] = round(entry["live"] + sum(
        seconds - start_live.get(pid, 0.0) for pid, seconds in end_live.items()), 3)
    if phase == "teardown":
      self._write()

  @pytest.hookimpl(hookwrapper=True)
  def pytest_runtest_setup(self, item):
    yield from self._measure(item, "setup")

  @pytest.hookimpl(hookwrapper=True)
  def pytest_runtest_call(self, item):
    yield from self._measure(item, "call")

  @pytest.hookimpl(hookwrapper=True)
  def pytest_runtest_teardown(self, item):
    yield from self._measure(item, "teardown")

  def pytest_sessionfinish(self):
    self._write()

  def _write(self):
    report = {"total": round(_cpu(), 3), "tests": self.tests}
    temporary = self.path.with_suffix(".tmp")
    temporary.write_text(json.dumps(report, indent=1))
    temporary.replace(self.path)


def main(folder: str, top: int = 60):
  tests, total = {}, 0.0
  paths = sorted(pathlib.Path(folder).glob("*.json"))
  workers = [path for path in paths if path.stem.startswith("gw")]
  for path in workers or paths:  # xdist's controller's total holds its workers'
    report = json.loads(path.read_text())
    total += report["total"]
    tests.update(report["tests"])
  cpu = {name: sum(entry.get(phase, 0.0) for phase in PHASES) for name, entry in tests.items()}
  print(f"{len(tests)} tests, {sum(cpu.values()):.0f} CPU-s in tests, {total:.0f} CPU-s in all "
        f"(workers' totals); live descendants {sum(e['live'] for e in tests.values()):.0f} s")
  files = {}
  for name, seconds in cpu.items():
    files[name.split("::")[0]] = files.get(name.split("::")[0], 0.0) + seconds
  for name in sorted(files, key=files.get, reverse=True):
    print(f"{files[name]:8.1f}  {name}")
  for name in sorted(cpu, key=cpu.get, reverse=True)[:top]:
    entry = tests[name]
    print(f"{cpu[name]:8.1f}  setup {entry.get('setup', 0):7.1f}  live {entry['live']:6.1f}  "
          f"{name}")


if __name__ == "__main__":
  main(*sys.argv[1:2], *[int(n) for n in sys.argv[2:3]])
