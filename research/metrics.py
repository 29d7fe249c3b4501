"""Metric reduction and writers (TensorBoard event files + metrics.jsonl)."""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Mapping

import jax
import numpy as np


def summarize(sums: Mapping[str, float], prefix: str = "") -> dict[str, float]:
  """Turns {loss_sum, correct_sum, weight_sum, ...} into means; other entries pass through."""
  sums = {k: float(v) for k, v in sums.items()}
  out = {}
  weight = sums.get("weight_sum", 0.0)
  if "loss_sum" in sums and weight > 0:
    out["loss"] = sums["loss_sum"] / weight
    out["perplexity"] = math.exp(min(out["loss"], 50.0))
  if "correct_sum" in sums and weight > 0:
    out["accuracy"] = sums["correct_sum"] / weight
  for k, v in sums.items():
    if not k.endswith("_sum"):
      out[k] = v
  out["tokens"] = weight
  return {f"{prefix}{k}": v for k, v in out.items()}


def add_sums(total: dict | None, new: Mapping[str, jax.Array]) -> dict:
  new = {k: np.asarray(v, np.float64) for k, v in new.items()}
  if total is None:
    return new
  return {k: total[k] + new[k] for k in total}


class MetricWriter:
  """Writes scalars to TensorBoard and appends one JSON object per step to metrics.jsonl.

  Only process 0 writes; other processes get a writer that does nothing.
  """

  def __init__(self, workdir: str | pathlib.Path, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      workdir = pathlib.Path(workdir)
      self._tb = SummaryWriter(str(workdir / "tensorboard"), flush_secs=30)
      self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)
    record = {"step": int(step), "time": time.time(), **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
