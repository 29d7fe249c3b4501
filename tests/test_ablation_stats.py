"""experiments/ablation_stats.py on data whose answer is known."""

import numpy as np
import pytest

from experiments import ablation_stats as stats


def test_a_clear_difference_resolves_and_a_zero_mean_one_does_not():
  rng = np.random.default_rng(1)
  base = {seed: 50.0 + 3.0 * rng.normal() for seed in range(5)}  # what each seed does to both
  better = {seed: value + 5.0 + 0.01 * rng.normal() for seed, value in base.items()}
  diff = stats.paired_difference(better, base)
  assert diff.mean == pytest.approx(5.0, abs=0.02) and diff.sign == 1
  assert 4.9 < diff.low < 5.0 < diff.high < 5.1  # paired: the seed's own spread cancels
  assert stats.paired_difference(base, better).sign == -1
  # Differences of +1 and -1 (mean zero): the interval holds zero.
  noisy = {seed: base[seed] + (1.0 if seed % 2 else -1.0) for seed in range(4)}
  diff = stats.paired_difference(noisy, {s: base[s] for s in range(4)})
  assert diff.mean == pytest.approx(0.0) and diff.low < 0 < diff.high and diff.sign == 0


def test_unpaired_seeds_non_finite_values_and_one_seed_are_left_out():
  a = {0: 1.0, 1: 2.0, 2: float("nan"), 3: 4.0}
  b = {0: 0.0, 1: 0.0, 2: 0.0, 5: 0.0}
  diff = stats.paired_difference(a, b)
  assert diff.seeds == (0, 1) and diff.mean == pytest.approx(1.5)
  assert stats.paired_difference({0: 1.0}, {0: 0.0}) is None
  assert stats.paired_difference({0: 1.0}, {0: 0.0}, min_seeds=1).mean == 1.0


def test_the_interval_is_deterministic_and_the_percentile_bootstrap():
  d = [0.3, 1.1, 2.0, -0.4, 0.9, 1.5]
  assert stats.bootstrap_interval(d) == stats.bootstrap_interval(d)
  low, high = stats.bootstrap_interval(d)
  assert min(d) < low < np.mean(d) < high < max(d)
  # Three seeds: about the range of the per-seed differences (see the module docstring).
  low, high = stats.bootstrap_interval([1.0, 2.0, 3.0])
  assert low == pytest.approx(1.0, abs=0.34) and high == pytest.approx(3.0, abs=0.34)


def test_trend_recovers_a_line_in_log_flops():
  flops = [1e12, 1e12, 3e12, 3e12, 1e13, 1e13]
  values = [2.0 - 0.25 * np.log10(f / 1e12) for f in flops]
  trend = stats.fit_trend(flops, values)
  assert trend.slope == pytest.approx(-0.25) and trend.points == 6
  assert trend.at(1e14) == pytest.approx(1.5)
  assert stats.fit_trend([1e12, 1e12], [1.0, 2.0]) is None  # one budget: no slope
  assert stats.fit_trend([1e12, 1e13, 1e14], [1.0, None, float("nan")]) is None


def test_stat_formats_mean_and_spread():
  assert stats.Stat((1.0, 3.0)).format(2) == "2.00 ± 1.41"
  assert stats.Stat((2.0,)).format(1) == "2.0" and stats.Stat(()).format(1) == "—"
