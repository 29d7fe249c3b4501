"""The architecture ablation's plots: pretraining curves, every metric against training FLOPs
with each arm's fitted trend, and the downstream scores at the largest budget."""

from __future__ import annotations

import contextlib

import numpy as np
from etils import epath

from experiments import ablation_stats as stats_lib
from experiments.ablation_spec import Metric, Results
from research import paths

_STYLES = ["-", "--", ":", "-."]


@contextlib.contextmanager
def _figure(path: epath.Path, *args, **kwargs):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(*args, **kwargs)
  try:
    yield fig, axes, plt.get_cmap("tab10")
    fig.tight_layout()
    with paths.local_output(path) as local:
      fig.savefig(local, dpi=120)
  finally:
    plt.close(fig)


def plot_losses(path: epath.Path, results: Results) -> None:
  """Training loss along every pretraining run (one line per budget and seed), and its final
  validation loss (a dot)."""
  with _figure(path, figsize=(7.5, 4.5)) as (_, ax, colors):
    for i, arm in enumerate(results.arms):
      flops_per_step = results.plans[arm].flops_per_step
      first = True
      for budget in results.budgets:
        for j, (seed, record) in enumerate(sorted(results.records(arm, budget).items())):
          del seed
          pretrain = record["pretrain"]
          if not pretrain.get("curve"):
            continue
          steps, losses = zip(*pretrain["curve"])
          ax.plot(np.asarray(steps) * flops_per_step, losses, _STYLES[j % len(_STYLES)],
                  linewidth=1, color=colors(i % 10),
                  label=f"{arm} ({results.plans[arm].objective})" if first else None)
          if pretrain.get("eval_loss") is not None:
            ax.plot(steps[-1] * flops_per_step, pretrain["eval_loss"], "o",  # the last step
                    markersize=3, color=colors(i % 10))
          first = False
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("loss per target token")
    ax.set_title("Pretraining at every budget: training loss, dot: final validation loss;\n"
                 "each arm's own objective (not comparable across objectives); style: seed",
                 fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)


def plot_trends(path: epath.Path, results: Results, metrics: list[Metric]) -> None:
  """One panel per metric: every seed's value at every budget against training FLOPs (log),
  and each arm's least-squares line in log FLOPs."""
  # Every panel spans every budget: a metric measured at one budget only (fine-tuning) would
  # otherwise get an axis as wide as its seeds' FLOPs differ (parts per thousand), all offsets.
  every = [results.plans[arm].training_flops(b) for arm in results.arms for b in results.budgets]
  with _figure(path, 1, len(metrics), figsize=(4.2 * len(metrics) + 1, 4.2)) as (
      fig, axes, colors):
    for ax, metric in zip(np.atleast_1d(axes), metrics):
      for i, arm in enumerate(results.arms):
        plan = results.plans[arm]
        if not metric.applies(plan.family):
          continue
        xs, ys = [], []
        for budget in results.budgets:
          for record in results.records(arm, budget).values():
            value = metric.value(record)
            if value is not None:
              xs.append(plan.training_flops(budget))
              ys.append(value)
        if not xs:
          continue
        ax.plot(xs, ys, ".", color=colors(i % 10), markersize=6, label=arm)
        trend = stats_lib.fit_trend(xs, ys)
        if trend is not None:
          grid = np.geomspace(min(xs), max(xs), 20)
          ax.plot(grid, trend.at(grid), "-", color=colors(i % 10), linewidth=1)
      ax.set_xscale("log")
      ax.set_xlim(min(every) / 1.4, max(every) * 1.4)
      ax.set_xticks(results.budgets, [f"{b:.3g}" for b in results.budgets], minor=False)
      ax.set_xticks([], minor=True)
      ax.set_xlabel("pretraining FLOPs")
      ax.set_title(metric.label, fontsize=9)
      ax.grid(alpha=0.3)
    first = np.atleast_1d(axes)[0]
    if first.get_legend_handles_labels()[0]:
      first.legend(fontsize=7)
    fig.suptitle("Against pretraining FLOPs: dots are seeds, lines least squares in log FLOPs",
                 fontsize=10)


def plot_downstream(path: epath.Path, results: Results, metrics: list[Metric],
                    budget: float) -> None:
  """Bars of the comparable metrics at one budget: mean ± sd over seeds, dots per seed."""
  metrics = [m for m in metrics if m.across_arms]
  arms = results.arms
  with _figure(path, 1, len(metrics), figsize=(4.5 * len(metrics) + 1, 4.2)) as (
      fig, axes, colors):
    for ax, metric in zip(np.atleast_1d(axes), metrics):
      for i, arm in enumerate(arms):
        if not metric.applies(results.plans[arm].family):
          ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=9)
          continue
        values = [v for r in results.records(arm, budget).values()
                  if (v := metric.value(r)) is not None]
        if not values:
          continue
        stat = stats_lib.Stat(tuple(values))
        ax.bar(i, stat.mean, color=colors(i % 10), yerr=stat.sd or 0.0, capsize=4, alpha=0.85)
        ax.plot([i] * stat.n, stat.values, "k.", markersize=5)
      ax.set_xlim(-0.6, len(arms) - 0.4)
      ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]), top=max(ax.get_ylim()[1], 1.0))
      ax.set_xticks(np.arange(len(arms)), arms, rotation=30, ha="right", fontsize=8)
      ax.set_title(metric.label, fontsize=10)
      ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"At the largest budget, {budget:.3g} FLOPs (mean ± sd over seeds; dots: "
                 "seeds)", fontsize=10)
