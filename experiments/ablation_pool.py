"""Running the architecture ablation's stages: the progress line with its estimate of the time
left, and the pool of worker processes (--workers) with their logs.

A stage is named (arm, where, kind): where says which run ("flops1e12 seed0", "flops1e12 lr0.002")
and kind what it costs alike ("pretrain@flops1e12", "sst2"), which is what the estimate averages.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import signal
import subprocess
import time

import numpy as np
from etils import epath

from research import paths
from research.paths import REPO_ROOT

Stage = tuple[str, str, str]  # (arm, where, kind)


def format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
  """The progress line: which arm, run and stage runs, and the time left, estimated from the
  stages finished so far (in this process or recorded by an earlier one)."""

  def __init__(self, todo: list[Stage], known: dict[tuple[str, str], list[float]],
               workers: int = 1):
    self.todo = todo  # stages still to run, in order
    self.known = known  # (arm, kind) -> seconds of finished ones
    self.workers = workers  # stages running at once: the time left is shared among them
    self.started = time.perf_counter()
    self.done = 0

  def estimate(self, arm: str, kind: str) -> float | None:
    same = self.known.get((arm, kind))
    if same:
      return float(np.mean(same))
    alike = [s for (_, k), seconds in self.known.items() if k == kind for s in seconds]
    if alike:
      return float(np.mean(alike))
    every = [s for seconds in self.known.values() for s in seconds]
    return float(np.mean(every)) if every else None

  def time_left(self, remaining: list[Stage]) -> str:
    estimates = [self.estimate(arm, kind) for arm, _, kind in remaining]
    if any(e is None for e in estimates):
      return "time left: known after the first stage"
    return f"about {format_seconds(sum(estimates) / self.workers)} left"

  def _elapsed(self) -> str:
    return format_seconds(time.perf_counter() - self.started)

  def line(self, arm: str, where: str, kind: str, detail: str) -> str:
    return (f"[ablation {self.done + 1}/{len(self.todo)}] {arm} {where}: {kind} ({detail}); "
            f"{self._elapsed()} elapsed, {self.time_left(self.todo[self.done:])}")

  def finished_line(self, arm: str, where: str, kind: str, seconds: float,
                    remaining: list[Stage]) -> str:
    """After finished(): for stages run by workers, which report when a stage ends."""
    return (f"[ablation {self.done}/{len(self.todo)}] {arm} {where}: {kind} done in "
            f"{format_seconds(seconds)}; {self._elapsed()} elapsed, {self.time_left(remaining)}")

  def finished(self, arm: str, kind: str, seconds: float) -> None:
    self.known.setdefault((arm, kind), []).append(seconds)
    self.done += 1

  def skipped(self, count: int) -> None:
    self.done += count


class WorkerLogs:
  """OUT/<arm>/log.txt of the worker processes. A worker's output goes to a file descriptor,
  so with OUT on cloud storage it is written to a local file (starting from the log already
  there) and uploaded when the worker ends."""

  def __init__(self, out: epath.Path):
    self.out = out
    self._staging = None
    if paths.is_url(out):
      import tempfile  # pylint: disable=import-outside-toplevel
      self._staging = pathlib.Path(tempfile.mkdtemp(prefix="ablation-logs-"))

  def remote(self, arm: str) -> epath.Path:
    return self.out / arm / "log.txt"

  def local(self, arm: str) -> pathlib.Path:
    if self._staging is None:
      return pathlib.Path(self.remote(arm))
    local = self._staging / f"{arm}.txt"
    if not local.exists():
      remote = self.remote(arm)
      local.write_bytes(remote.read_bytes() if remote.exists() else b"")
    return local

  def done(self, arm: str) -> None:
    if self._staging is not None:
      self.remote(arm).write_bytes(self.local(arm).read_bytes())

  def close(self) -> None:
    if self._staging is not None:
      import shutil  # pylint: disable=import-outside-toplevel
      shutil.rmtree(self._staging, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class WorkerJob:
  """One worker process: an arm's pending stages, run by `command` (argv) from the
  repository root, and the records it writes as each of them finishes."""

  arm: str
  command: list[str]
  records: list[tuple[str, str, epath.Path]]  # (where, kind, record path)


def _read_record(path: epath.Path) -> dict | None:
  return json.loads(path.read_text()) if path.exists() else None


def run_in_workers(out: epath.Path, jobs: list[WorkerJob], workers: int, progress: Progress,
                   log) -> tuple[list[str], bool]:
  """Runs the jobs in `workers` processes at a time, each one's output in OUT/<arm>/log.txt.
  Logs each stage as its record appears. SIGTERM or Ctrl-C is passed on to the workers
  (research.train checkpoints and returns); the caller then writes the report. Returns
  (failed, interrupted)."""
  queue = list(jobs)
  running, failed, gone = {}, [], set()  # gone: arms whose worker failed
  seen = set()  # (arm, where, kind) whose record this process has reported
  stop = []

  def request_stop(signum, frame):
    del frame
    stop.append(signum)
    for process, _ in running.values():
      process.send_signal(signal.SIGTERM)

  def report_new_records(job: WorkerJob) -> None:
    for where, kind, path in job.records:
      key = (job.arm, where, kind)
      if key in seen:
        continue
      record = _read_record(path)
      if record is None:
        continue
      seen.add(key)
      progress.finished(job.arm, kind, record["wall_s"])
      remaining = [t for t in progress.todo if t not in seen and t[0] not in gone]
      log(progress.finished_line(job.arm, where, kind, record["wall_s"], remaining))

  previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
  logs = WorkerLogs(out)
  try:
    while (queue and not stop) or running:
      while queue and not stop and len(running) < workers:
        job = queue.pop(0)
        with open(logs.local(job.arm), "a", encoding="utf-8") as log_file:
          running[job.arm] = (subprocess.Popen(job.command, cwd=REPO_ROOT, stdout=log_file,
                                               stderr=subprocess.STDOUT), job)
        log(f"[ablation] {job.arm}: started (output in {job.arm}/log.txt)")
      time.sleep(0.2)
      for arm, (process, job) in list(running.items()):
        report_new_records(job)
        if process.poll() is None:
          continue
        del running[arm]
        logs.done(arm)
        if process.returncode != 0 and not stop:
          gone.add(arm)
          lines = logs.local(arm).read_text(errors="replace").strip().splitlines()
          failed.append(f"{arm}: {lines[-1] if lines else 'no output'} (exit status "
                        f"{process.returncode}; {out / arm / 'log.txt'})")
          log(f"[ablation] {failed[-1]}")
          progress.skipped(sum((arm, where, kind) not in seen
                               for where, kind, _ in job.records))
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    logs.close()
  if stop:
    log("[ablation] stopped; rerun the same command to continue from there")
  return failed, bool(stop)
