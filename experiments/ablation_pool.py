"""The architecture ablation's progress line before each stage, with its estimate of the time
left from the stages finished so far. Where the stages run (this process, a pool of worker
processes, a Ray cluster) is experiments/executor.py.

A stage is named (arm, where, kind): where says which run ("flops1e12 seed0", "flops1e12 lr0.002")
and kind what it costs alike ("pretrain@flops1e12", "sst2"), which is what the estimate averages.
"""

from __future__ import annotations

import time

import numpy as np

from experiments.executor import format_seconds

Stage = tuple[str, str, str]  # (arm, where, kind)
__all__ = ["Progress", "Stage", "format_seconds"]


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
