"""Statistics of the architecture ablation: seed spreads, paired bootstrap intervals, trends.

Arms are compared PAIRED over seeds: seed k of every arm reads the same pretraining text in the
same order (experiments/architecture_ablation.py checks it) and fine-tunes with seed k, so the
per-seed difference between two arms removes what the seed does to both. The interval
of a difference is a percentile bootstrap over seeds: resample the seeds with replacement,
average their differences, take the 2.5th and 97.5th percentiles. With few seeds it is narrow
(with n seeds there are only C(2n-1, n) distinct resamples; with 3 seeds it spans about the
smallest to the largest per-seed difference, so it excludes zero only when every seed agrees
on the sign): read it as what these seeds show, and add seeds before trusting a close call.
The random numbers come from a fixed seed, so a report is the same every time it is written.

Trends are least-squares lines of a metric against log10(training FLOPs), over every seed's
point at every budget.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95
RNG_SEED = 0  # fixed: the same records always give the same intervals


@dataclasses.dataclass(frozen=True)
class Stat:
  """Values of one quantity over seeds."""

  values: tuple[float, ...]

  @property
  def n(self) -> int:
    return len(self.values)

  @property
  def mean(self) -> float | None:
    return float(np.mean(self.values)) if self.values else None

  @property
  def sd(self) -> float | None:
    """Sample standard deviation over seeds (None below two seeds)."""
    return float(np.std(self.values, ddof=1)) if self.n >= 2 else None

  def format(self, digits: int) -> str:
    if not self.values:
      return "—"
    if self.sd is None:
      return f"{self.mean:.{digits}f}"
    return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"


def finite(values: Mapping[int, float | None]) -> dict[int, float]:
  """The seeds whose value is a finite number."""
  return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


def bootstrap_interval(differences: Sequence[float], level: float = LEVEL,
                       resamples: int = RESAMPLES, seed: int = RNG_SEED) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean of `differences` (one per seed)."""
  d = np.asarray(differences, np.float64)
  if d.size == 0:
    raise ValueError("no differences to resample")
  rng = np.random.default_rng(seed)
  means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)  # (resamples,)
  tail = 100 * (1 - level) / 2
  low, high = np.percentile(means, [tail, 100 - tail])
  return float(low), float(high)


@dataclasses.dataclass(frozen=True)
class Difference:
  """mean over the shared seeds of a[seed] - b[seed], and its bootstrap interval."""

  mean: float
  low: float
  high: float
  seeds: tuple[int, ...]

  @property
  def sign(self) -> int:
    """+1 when the interval lies above zero, -1 below it, 0 when it holds zero."""
    return 1 if self.low > 0 else -1 if self.high < 0 else 0

  def format(self, digits: int) -> str:
    return (f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}], "
            f"n={len(self.seeds)}")


def paired_difference(a: Mapping[int, float | None], b: Mapping[int, float | None],
                      min_seeds: int = 2) -> Difference | None:
  """a - b paired over the seeds both have finite values for; None with fewer than
  `min_seeds` such seeds (one seed says nothing about the spread)."""
  a, b = finite(a), finite(b)
  seeds = tuple(sorted(set(a) & set(b)))
  if len(seeds) < min_seeds:
    return None
  d = [a[s] - b[s] for s in seeds]
  low, high = bootstrap_interval(d)
  return Difference(float(np.mean(d)), low, high, seeds)


@dataclasses.dataclass(frozen=True)
class Trend:
  """value ~ intercept + slope * log10(FLOPs), fitted by least squares."""

  slope: float  # change per tenfold FLOPs
  intercept: float
  points: int

  def at(self, flops: float | np.ndarray) -> float | np.ndarray:
    return self.intercept + self.slope * np.log10(flops)


def fit_trend(flops: Sequence[float], values: Sequence[float | None]) -> Trend | None:
  """The least-squares line through the finite points; None without two distinct FLOPs."""
  points = [(math.log10(f), v) for f, v in zip(flops, values)
            if v is not None and math.isfinite(v) and f > 0]
  if len({x for x, _ in points}) < 2:
    return None
  x, y = np.array(points).T
  slope, intercept = np.polyfit(x, y, 1)
  return Trend(float(slope), float(intercept), len(points))
