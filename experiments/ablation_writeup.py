"""The architecture ablation's report: OUT/report.md (tables, sweep, trends, conclusions with
paired bootstrap intervals, T5's orderings point by point), its plots and OUT/results.json,
written from the records alone (experiments/ablation_spec.Results)."""

from __future__ import annotations

import dataclasses
import itertools
import pathlib

import numpy as np
from etils import epath

from experiments import ablation_plots
from experiments import ablation_stats as stats_lib
from experiments.ablation_spec import (FINETUNES, T5_NAMES, T5_ORDER, TASKS, Metric, Results,
                                       budget_tag, format_flops, metrics_of,
                                       stages_of)
from research import machine as machine_lib
from research import paths
from research.paths import REPO_ROOT

PLOTS = {"trends.png": "every metric against pretraining FLOPs, with each arm's trend",
         "loss_vs_flops.png": "training loss along pretraining, final validation loss",
         "downstream.png": "downstream at the largest budget"}


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return lines


def seed_values(results: Results, metric: Metric, arm: str, budget: float) -> dict[int, float]:
  """seed -> the metric's value (finite ones) of the arm at the budget."""
  return stats_lib.finite({seed: metric.value(record)
                           for seed, record in results.records(arm, budget).items()})


def stat(results: Results, metric: Metric, arm: str, budget: float) -> stats_lib.Stat:
  return stats_lib.Stat(tuple(seed_values(results, metric, arm, budget).values()))


def machine() -> str:
  """The CPU model and kind (AMX / AVX-512 / AVX2) or the accelerator, and JAX's version."""
  described = machine_lib.describe()
  return f"{machine_lib.summary(described)}, JAX {described['jax']}"


def shared_machine_note(results: Results) -> str:
  """Says so when stages ran several at a time (--workers): their wall times and MFU then
  measure a shared machine, not the arm alone."""
  most = max((stage.get("concurrent", 1) for record in results.runs.values()
              for stage in record.values() if isinstance(stage, dict)), default=1)
  if most <= 1:
    return ""
  return (f"; up to {most} arms ran at once (--workers), so wall times and MFU are those of a "
          "shared machine and do not compare arms")


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def command_lines(out: epath.Path, results: Results) -> list[str]:
  shown = out
  if not paths.is_url(out) and pathlib.Path(out).is_relative_to(REPO_ROOT):
    shown = pathlib.Path(out).relative_to(REPO_ROOT)
  settings = results.settings
  flags = (f"--out={shown} --budgets={','.join(format_flops(b) for b in results.budgets)} "
           f"--seeds={','.join(map(str, results.seeds))} "
           f"--lr_sweep={','.join(f'{m:g}' for m in settings['lr_sweep'])} "
           f"--arms={','.join(results.arms)}" + (" --tiny" if settings["tiny"] else ""))
  return [
      "# Architecture ablation: compute-matched pretraining, then fine-tuning",
      "",
      "T5 (Raffel et al. 2020), Section 3.2 and Table 2, in miniature: each arm is pretrained "
      f"on {corpus_phrase(results)} for the same training FLOPs, at several budgets, with a "
      "learning rate tuned for it, then, at the largest budget, fine-tuned with the same steps "
      "and batch on SST-2 and on Spanish->English translation.",
      "",
      f"    python -m experiments.architecture_ablation {flags}",
      ""]


def corpus_phrase(results: Results) -> str:
  if results.settings["tiny"]:
    return "character-level Tiny Shakespeare"
  return ("one corpus of the bundled corpora's training splits with one shared SentencePiece "
          "vocabulary (experiments/ablation_corpus.py)")


def setup_lines(results: Results) -> list[str]:
  orders = {plan.data_order for plan in results.plans.values()}
  same_data = ("the same in every arm (a digest of seed 0's first pretraining batches as text, "
               "plan.json data_order)" if len(orders) == 1 else
               "NOT the same in every arm (plan.json data_order differs): differences are "
               "paired in initialisation only")
  return [
      f"- Budgets: {', '.join(format_flops(b) for b in results.budgets)} training FLOPs per "
      "pretraining run (research/flops.py: matmul FLOPs, 3x the forward pass); steps = "
      "round(budget / FLOPs per step), so an arm whose step is cheaper (the encoder-decoder "
      "with short span-corruption targets) takes more steps. The encoder-decoder LM pads both "
      "its prefix and its continuation to the full sequence length, so about half of its "
      "positions, and FLOPs, are padding.",
      "- Matched: parameters (about the same count in every arm, as T5's \"P\" arms) and "
      "training FLOPs; not matched: FLOPs per token (the encoder-decoder, with half the "
      "layers on each side, spends about half the decoder-only model's on each token, T5's "
      "\"M/2\").",
      "- Learning rate: each arm's own, chosen by the sweep below at "
      f"{format_flops(results.budgets[0])} FLOPs (lowest final validation loss of its own "
      "objective, one seed) and used at every budget. Fine-tuning uses one rate per task, the "
      "same for every arm (experiments/ablation_spec.py FINETUNES).",
      f"- Seeds: {', '.join(map(str, results.seeds))}. Seed k sets initialisation, objective "
      f"noise and data order; the pretraining data order was {same_data}, and seed k's "
      "fine-tuning uses seed k in every arm. Tables give mean ± sample standard "
      "deviation over the seeds that finished.",
      f"- Statistics (experiments/ablation_stats.py): a difference between two arms is the "
      f"mean over shared seeds of the per-seed difference, with a {stats_lib.LEVEL:.0%} "
      f"percentile bootstrap interval over seeds ({stats_lib.RESAMPLES:,} resamples, fixed "
      "rng); with few seeds the interval is narrow and excludes zero only when (nearly) every "
      "seed agrees. The conclusions state only differences whose interval excludes zero.",
      "- Fine-tuning runs at the largest budget only (at every budget it would triple the "
      "run), so the fine-tuned scores have no trend against FLOPs; the SST-2 linear probe of "
      "the frozen features, measured at every budget (when the yardsticks ran), is the "
      "downstream measure that has one.",
      "- MFU: mean of train/mfu over the pretraining log (the first window, which holds "
      "compilation, left out), against the peak research/flops.py uses (on CPUs a matmul "
      "measured at start-up).",
      f"- Machine of the last run: {machine()}; wall times are those of the runs that "
      "finished each stage" + shared_machine_note(results) + ".",
      ""]


def sweep_lines(results: Results) -> list[str]:
  header = ["arm", *(f"× {m:g}" for m in results.settings["lr_sweep"]), "chosen"]
  rows = []
  for arm in results.arms:
    sweep = results.sweeps.get(arm, {})
    cells = []
    for rate in sorted(sweep):
      record = sweep[rate]
      text = (f"{rate:.3g}: diverged" if record.get("diverged") else
              f"{rate:.3g}: {record['eval_loss']:.4f}")
      cells.append(f"**{text}**" if results.chosen.get(arm) == rate else text)
    cells += ["—"] * (len(header) - 2 - len(cells))
    chosen = results.chosen.get(arm)
    edge = ""
    if chosen is not None and len(sweep) > 1 and chosen in (min(sweep), max(sweep)):
      edge = " (at the edge of the sweep: a rate beyond it might do better)"
    rows.append([arm, *cells, "—" if chosen is None else f"{chosen:.3g}{edge}"])
  seed = min(results.seeds)
  return ["## Learning-rate sweep", "",
          "Final pretraining validation loss (own objective) at "
          f"{format_flops(results.budgets[0])} FLOPs, seed {seed}, for each multiple of the arm "
          "config's rate; the chosen rate (bold) is carried to every budget, and its run is "
          "also seed "
          f"{seed}'s at this budget.", "", *markdown_table(header, rows), ""]


def results_lines(results: Results, metrics: list[Metric]) -> list[str]:
  header = ["arm", "budget", "rate", "parameters", "steps", "tokens seen",
            *(m.label for m in metrics), "wall min (pretrain / fine-tune)", "MFU (%)"]
  rows = []
  for arm in results.arms:
    plan = results.plans[arm]
    for budget in results.budgets:
      records = results.records(arm, budget)
      cells = [stat(results, m, arm, budget).format(m.digits) if m.applies(plan.family)
               else "n/a" for m in metrics]
      pretrain_wall = stats_lib.Stat(tuple(r["pretrain"]["wall_s"] / 60
                                           for r in records.values()))
      finetune_wall = stats_lib.Stat(tuple(sum(r[t]["wall_s"] for t in TASKS if r.get(t)) / 60
                                           for r in records.values()))
      mfu = stats_lib.Stat(tuple(100 * r["pretrain"]["mfu"] for r in records.values()
                                 if r["pretrain"].get("mfu") is not None))
      rate = results.chosen.get(arm)
      rows.append([arm, format_flops(budget), "—" if rate is None else f"{rate:.3g}",
                   f"{plan.parameters:,}", f"{plan.steps(budget):,}",
                   f"{plan.tokens(budget):,}", *cells,
                   f"{pretrain_wall.format(1)} / {finetune_wall.format(1)}", mfu.format(2)])
  return ["## Results", "", *markdown_table(header, rows), "",
          *(f"![{caption}]({name})" for name, caption in PLOTS.items()), ""]


def trend_lines(results: Results, metrics: list[Metric]) -> list[str]:
  if len(results.budgets) < 2:
    return []
  rows = []
  for arm in results.arms:
    plan = results.plans[arm]
    cells = []
    for metric in metrics:
      xs, ys = [], []
      for budget in results.budgets:
        for value in seed_values(results, metric, arm, budget).values():
          xs.append(plan.training_flops(budget))
          ys.append(value)
      trend = stats_lib.fit_trend(xs, ys) if metric.applies(plan.family) else None
      cells.append("n/a" if not metric.applies(plan.family) else
                   "—" if trend is None else f"{trend.slope:+.{metric.digits}f}")
    rows.append([arm, *cells])
  return ["## Trends against pretraining FLOPs", "",
          "Slope of the least-squares line of each metric on log10(training FLOPs), over every "
          "seed at every budget: the change per tenfold compute (trends.png).", "",
          *markdown_table(["arm", *(m.label for m in metrics)], rows), ""]


def arm_of_kind(results: Results) -> dict[tuple[str, str], str]:
  kinds = {}
  for arm in results.arms:
    plan = results.plans[arm]
    kinds.setdefault((plan.family, plan.objective), arm)
  return kinds


def oriented(results: Results, metric: Metric, better: str, worse: str,
             budget: float) -> stats_lib.Difference | None:
  """better - worse, signed so that a positive difference means `better` did better."""
  a = seed_values(results, metric, better, budget)
  b = seed_values(results, metric, worse, budget)
  return stats_lib.paired_difference(a, b) if metric.higher_is_better else (
      stats_lib.paired_difference(b, a))


VERDICTS = {1: "reproduced", -1: "reversed", 0: "not resolved"}


def t5_order_lines(results: Results, metric: Metric) -> tuple[list[str], dict[str, int]]:
  """The table of T5's orderings at every budget, and the tally at the largest."""
  kinds = arm_of_kind(results)
  rows, tally = [], {v: 0 for v in VERDICTS.values()}
  for better, worse in T5_ORDER:
    if better not in kinds or worse not in kinds:
      continue
    a, b = kinds[better], kinds[worse]
    cells = []
    for budget in results.budgets:
      diff = oriented(results, metric, a, b, budget)
      if diff is None:
        cells.append("—")
        continue
      verdict = VERDICTS[diff.sign]
      cells.append(f"{verdict}: {diff.format(metric.digits)}")
      if budget == results.budgets[-1]:
        tally[verdict] += 1
    rows.append([f"{a} > {b}", *cells])
  if not rows:
    return [], tally
  header = ["T5 (better > worse)", *(f"{format_flops(b)} FLOPs" for b in results.budgets)]
  return markdown_table(header, rows) + ["", "(—: under two seeds with a score.)"], tally


def resolved_lines(results: Results, metric: Metric) -> list[str]:
  """Every pair of arms whose difference's interval excludes zero, budget by budget."""
  lines = []
  arms = [a for a in results.arms if metric.applies(results.plans[a].family)]
  for budget in results.budgets:
    found = []
    for a, b in itertools.combinations(arms, 2):
      diff = oriented(results, metric, a, b, budget)
      if diff is None or diff.sign == 0:
        continue
      winner, loser = (a, b) if diff.sign > 0 else (b, a)
      shown = diff if diff.sign > 0 else stats_lib.Difference(-diff.mean, -diff.high, -diff.low,
                                                               diff.seeds)
      found.append(f"{winner} > {loser} ({shown.format(metric.digits)})")
    scored = sum(len(seed_values(results, metric, a, budget)) >= 2 for a in arms)
    lines.append(f"- {format_flops(budget)} FLOPs: " + (
        "; ".join(found) if found else "no two arms told apart" if scored >= 2 else
        "fewer than two arms with two seeds' scores"))
  return lines


def conclusion_lines(results: Results, metrics: list[Metric]) -> list[str]:
  lines = ["## Conclusions", "",
           "Differences are (better − worse) in the metric's unit, mean over seeds with the "
           f"{stats_lib.LEVEL:.0%} bootstrap interval and the number of paired seeds. "
           "Pretraining losses of different objectives are not compared.", ""]
  for metric in metrics:
    if not metric.across_arms:
      continue
    table, tally = t5_order_lines(results, metric)
    lines += [f"### {metric.label}", "",
              f"T5's Table 2 orderings (GLUE; the expectation for every task here), point by "
              f"point. At the largest budget: {tally['reproduced']} reproduced, "
              f"{tally['reversed']} reversed, {tally['not resolved']} not resolved.", ""]
    lines += table + ["", "Differences whose interval excludes zero:", ""]
    lines += resolved_lines(results, metric) + [""]
  return lines


def context_lines(results: Results) -> list[str]:
  size = np.mean([results.plans[a].parameters for a in results.arms]) / 1e6
  return [
      "What T5 found (Table 2): the full encoder-decoder with the denoising objective is "
      "best on every task, and on GLUE the denoising objective beats the LM objective for "
      "every architecture. Among the rows these arms reproduce (P parameters), GLUE orders "
      "them: encoder-decoder with denoising first, the prefix LM and the encoder-decoder "
      "trained as an LM about a point apart, the decoder-only language model last by several "
      "points. Two differences: T5 trained every arm for the same steps, so its L/2 + L/2 "
      "encoder-decoder also used half the FLOPs (M/2), while here the FLOPs are matched and "
      f"that arm takes more steps; and these models are ~{size:.2g}M parameters trained for "
      "minutes on one small corpus, so BLEU stays in single digits and a classifier head "
      "learns SST-2 in fewer fine-tuning steps than an encoder-decoder learns to write the "
      "label word.",
      "",
      "Pretraining validation losses are per target token of each arm's own objective (span "
      "corruption predicts sentinels and ~15% of the tokens, masked LM 15% of the "
      "tokens seeing both sides, the LM objectives a continuation): they are not "
      "comparable across objectives, only along one arm's trend, or between arms with the "
      "same objective and family.", ""]


def per_seed_lines(results: Results, metrics: list[Metric]) -> list[str]:
  rows = []
  for arm in results.arms:
    plan = results.plans[arm]
    for budget in results.budgets:
      for seed in results.seeds:
        record = results.runs.get((arm, budget, seed))
        if record is None:
          rows.append([arm, format_flops(budget), str(seed), "not run or unfinished",
                       *[""] * (len(metrics) + 1)])
          continue
        cells = []
        for metric in metrics:
          value = metric.value(record)
          cells.append("n/a" if not metric.applies(plan.family) else
                       "—" if value is None else f"{value:.{metric.digits + 1}f}")
        stages = [s for s in stages_of(plan.family) if record.get(s)]
        wall = sum(record[s]["wall_s"] for s in stages) / 60
        notes = [n for n, flag in (("resumed: last part only",
                                    any(record[s].get("resumed") for s in stages)),
                                   ("pretraining = the sweep's run",
                                    record["pretrain"].get("from_sweep"))) if flag]
        rows.append([arm, format_flops(budget), str(seed), *cells,
                     f"{wall:.1f}" + (f" ({'; '.join(notes)})" if notes else "")])
  return ["## Per seed", "", *markdown_table(["arm", "budget", "seed", *(m.label for m in metrics),
                                               "wall min"], rows), ""]


def arm_lines(results: Results) -> list[str]:
  lines = ["## Arms: differences from experiments/ablation/baseline.py", "",
           "(`python -m research.config_diff experiments/ablation/baseline.py "
           "experiments/ablation/<arm>.py`; defaults resolved. The runner also sets "
           "train.steps from the budget, the seed, the learning rate, and when to evaluate and "
           "checkpoint" + ("; --tiny shrinks every arm alike" if results.settings["tiny"]
                           else "") + ".)", ""]
  for arm in results.arms:
    plan = results.plans[arm]
    row = T5_NAMES.get((plan.family, plan.objective), "not in T5's Table 2")
    lines.append(f"- **{arm}** (T5: {row}): " + ("no difference (the baseline)" if not plan.diff
                                                 else "; ".join(f"`{d}`" for d in plan.diff)))
  return lines + [""]


def finetune_lines(results: Results) -> list[str]:
  lines = ["## Fine-tuning", "",
           "Every arm: init_from its pretraining workdir (architecture and vocabulary), a "
           "new optimizer, the settings below over configs/sst2_{bert,gpt,t5}.py "
           "and configs/spa_eng_{gpt,t5}.py (by family: encoder = classifier on the first "
           "token, decoder = classifier on the EOS / prompt and continuation, encoder-decoder "
           "= text to text: it writes the label word, and any other text counts as wrong, as in "
           "T5). The SST-2 dev split holds 444 positive and 428 negative sentences: always "
           "answering positive scores 50.9%.", ""]
  for task, values in results.settings["finetune"].items():
    lines.append(f"- {FINETUNES[task].label}: " +
                 ", ".join(f"{k}={v!r}" for k, v in sorted(values.items())))
  return lines


def failed_lines(results: Results) -> list[str]:
  if not results.failed:
    return []
  return ["", "## Failed runs (rerun the command to retry)", "",
          *(f"- {f}" for f in results.failed)]


# ---------------------------------------------------------------------------------------------
# The whole
# ---------------------------------------------------------------------------------------------


def summary_json(results: Results, metrics: list[Metric]) -> dict:
  arms = {}
  for arm in results.arms:
    per_budget = {}
    for budget in results.budgets:
      per_budget[budget_tag(budget)] = {
          m.key: {"seeds": seed_values(results, m, arm, budget),
                  "mean": stat(results, m, arm, budget).mean,
                  "sd": stat(results, m, arm, budget).sd} for m in metrics}
    arms[arm] = {"plan": dataclasses.asdict(results.plans[arm]),
                 "learning_rate": results.chosen.get(arm),
                 "sweep": {f"{r:g}": rec.get("eval_loss")
                           for r, rec in results.sweeps.get(arm, {}).items()},
                 "budgets": per_budget}
  return {"settings": results.settings, "seeds": results.seeds, "arms": arms}


def write_report(out: epath.Path, results: Results) -> epath.Path:
  """OUT/report.md, its plots and OUT/results.json from the records."""
  import json  # pylint: disable=import-outside-toplevel
  metrics = metrics_of(results.runs)
  ablation_plots.plot_trends(out / "trends.png", results, metrics)
  ablation_plots.plot_losses(out / "loss_vs_flops.png", results)
  ablation_plots.plot_downstream(out / "downstream.png", results, metrics, results.budgets[-1])
  lines = (command_lines(out, results) + setup_lines(results) + sweep_lines(results) +
           results_lines(results, metrics) + trend_lines(results, metrics) +
           conclusion_lines(results, metrics) + context_lines(results) +
           per_seed_lines(results, metrics) + arm_lines(results) + finetune_lines(results) +
           failed_lines(results))
  report = out / "report.md"
  report.write_text("\n".join(lines) + "\n")
  paths.write_atomic(out / "results.json", json.dumps(summary_json(results, metrics), indent=2,
                                                      sort_keys=True, default=float) + "\n")
  return report
