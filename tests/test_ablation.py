"""experiments/architecture_ablation.py: the --tiny ablation end to end (sweep, budgets, seeds,
report with intervals and trends, every arm), skipping and resuming on a rerun, bad input, and
the pieces: plans, hooks, records and the report (experiments/ablation_writeup.py). The executor
the runs go through is tested in tests/test_executor.py."""

import dataclasses
import json
import pathlib
import shutil
import time

import jax
import numpy as np
import pytest

from experiments import ablation_pool, ablation_spec, ablation_writeup
from experiments import architecture_ablation as ablation
from experiments.ablation_spec import Plan, Results, budget_tag, seed_dir
from research import models, objectives, train
from research.config import ExperimentConfig, UserError
from research.paths import REPO_ROOT
from xla_flags import cli_env
from tests import cli

TAGS = ("flops2.5e8", "flops5e8")  # ablation.TINY_BUDGETS as directory names


def run_cli(*args):
  return cli.run("experiments.architecture_ablation", args, env=cli_env(), timeout=900)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("ablation") / "out"
  start = time.perf_counter()
  result = run_cli(f"--out={out}", "--tiny")
  return out, result, time.perf_counter() - start


def section(report: str, title: str) -> str:
  return report.split(f"\n## {title}", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> list[list[str]]:
  """The cells of a markdown table's rows (header and rule left out)."""
  rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
  return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]


def test_tiny_ablation_writes_the_report_plots_and_every_arm(tiny_run):
  out, result, seconds = tiny_run
  assert result.returncode == 0, result.stderr[-3000:]
  print(f"tiny ablation: {seconds:.0f} s")
  report = (out / "report.md").read_text()
  for png in ("trends.png", "loss_vs_flops.png", "downstream.png"):
    assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"({png})" in report
  # Every arm at every budget, mean ± spread over the two seeds.
  rows = {(r[0], r[1]): r for r in table_rows(section(report, "Results"))}
  assert sorted(rows) == sorted((a, t[5:]) for a in ablation.DEFAULT_ARMS for t in TAGS)
  assert "±" in rows[("decoder_lm", "5e8")][6]  # pretraining loss
  assert rows[("encoder_mlm", "5e8")][8] == "n/a"  # no translation from an encoder-only model
  # The sweep: each arm's rates, the lowest final loss chosen and carried to both budgets.
  sweep = {r[0]: r for r in table_rows(section(report, "Learning-rate sweep"))}
  assert sorted(sweep) == sorted(ablation.DEFAULT_ARMS)
  for arm in ablation.DEFAULT_ARMS:
    losses = {}
    for rate_dir in (out / arm / TAGS[0]).glob("lr*"):
      record = json.loads((rate_dir / "pretrain.json").read_text())
      losses[record["learning_rate"]] = record["eval_loss"]
    assert len(losses) == len(ablation.TINY_LR_SWEEP)
    chosen = json.loads((out / arm / "lr.json").read_text())["learning_rate"]
    assert chosen == min(losses, key=losses.get)
    assert f"**{chosen:.3g}: {losses[chosen]:.4f}**" in sweep[arm]
    for tag in TAGS:
      for seed in (0, 1):
        record = json.loads((out / arm / tag / f"seed{seed}" / "result.json").read_text())
        assert record["pretrain"]["learning_rate"] == chosen and record["pretrain"]["curve"]
        if tag == TAGS[-1]:  # --tiny fine-tunes at its largest budget only
          assert record["sst2"]["value"] is not None
          assert (record.get("spa_eng") is None) == (arm == "encoder_mlm")
        else:
          assert "sst2" not in record
        # The sweep's chosen run is seed 0's at the smallest budget, not run again.
        assert bool(record["pretrain"].get("from_sweep")) == (tag == TAGS[0] and seed == 0)
  # Paired seeds: every arm read the same text in the same order.
  plans = {arm: json.loads((out / arm / "plan.json").read_text())
           for arm in ablation.DEFAULT_ARMS}
  assert len({plan["data_order"] for plan in plans.values()}) == 1
  assert "the same in every arm" in report
  # Compute matched: every arm within one step's FLOPs of each budget.
  for arm, plan in plans.items():
    for budget in ablation.TINY_BUDGETS:
      steps = max(1, round(budget / plan["flops_per_step"]))
      assert abs(steps * plan["flops_per_step"] - budget) <= plan["flops_per_step"], arm
  # Conclusions: T5's five orderings point by point, with intervals where fine-tuned.
  conclusions = section(report, "Conclusions")
  sst2 = conclusions.split("### SST-2", 1)[1].split("###", 1)[0]
  orderings = table_rows(sst2)
  assert len(orderings) == len(ablation.T5_ORDER)
  for row in orderings:
    assert row[1] == "—", row
    assert row[2].split(":")[0] in ("reproduced", "reversed", "not resolved"), row
    assert "[" in row[2] and row[2].endswith("n=2")
  assert "Differences whose interval excludes zero" in sst2
  assert "## Trends against pretraining FLOPs" in report
  summary = json.loads((out / "results.json").read_text())
  assert len(summary["arms"]["decoder_lm"]["budgets"][TAGS[1]]["sst2"]["seeds"]) == 2
  assert "**encdec_lm** (T5: Enc-dec, 6 layers (P, M/2), LM): `objective.name:" in report
  # --tiny runs TINY_WORKERS runs at once in worker processes (experiments/executor.py), each
  # run's output in <workdir>.log; this process reports every run as it ends, with the time
  # left and its last loss.
  assert all((out / arm / TAGS[0] / "seed1" / "pretrain.log").exists()
             for arm in ablation.DEFAULT_ARMS)
  done = [line for line in result.stderr.splitlines() if " done in " in line]
  runs = len(ablation.TINY_BUDGETS) * len(ablation.TINY_SEEDS)  # of each arm
  seeds = len(ablation.TINY_SEEDS)  # fine-tuned at the largest budget
  total = sum(len(ablation.TINY_LR_SWEEP) + runs - 1 +  # the sweep's chosen run is reused
              seeds * (2 if arm != "encoder_mlm" else 1) for arm in ablation.DEFAULT_ARMS)
  assert len(done) == total and done[-1].startswith(f"[runs {total}/{total} done")
  assert "left" in done[1] and "last loss" in done[1]
  assert f"up to {ablation.TINY_WORKERS} arms ran at once (--workers)" in report


def test_rerun_skips_everything_finished(tiny_run):
  out = tiny_run[0]
  records = {p: p.stat().st_mtime_ns for p in out.glob("*/flops*/*/*.json")}
  assert len(records) > 30
  result = run_cli(f"--out={out}", "--tiny")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "[ablation" not in result.stderr  # no progress line: no run started
  assert {p: p.stat().st_mtime_ns for p in out.glob("*/flops*/*/*.json")} == records


def test_an_interrupted_stage_resumes_from_its_workdir(tiny_run):
  out = tiny_run[0]
  # The stage's record was lost after its run checkpointed its last step: the rerun runs
  # this stage alone, and training resumes at that checkpoint (only the evaluation is left).
  # In this process (--workers=1): its progress line comes before the stage.
  directory = out / "decoder_lm" / TAGS[1] / "seed1"
  before = json.loads((directory / "spa_eng.json").read_text())
  (directory / "spa_eng.json").unlink()
  (directory / "spa_eng.run.json").unlink()  # the executor's mark of a finished run, too
  (directory / "result.json").unlink()
  result = run_cli(f"--out={out}", "--tiny", "--workers=1")
  assert result.returncode == 0, result.stderr[-3000:]
  progress = [line for line in result.stderr.splitlines() if line.startswith("[ablation")]
  assert len(progress) == 1, progress
  assert progress[0].startswith(f"[ablation 1/1] decoder_lm {TAGS[1]} seed1: spa_eng")
  assert "resumed from" in result.stderr
  after = json.loads((directory / "spa_eng.json").read_text())
  assert after["resumed"] and after["value"] == pytest.approx(before["value"])
  assert (directory / "result.json").exists()


@pytest.mark.parametrize("flags, key", [(["--lr_sweep=1,3"], "lr_sweep"),
                                        (["--budgets=1e8,5e8"], "sweep_budget")])
def test_other_settings_on_the_same_out_are_refused(tiny_run, flags, key):
  out = tiny_run[0]
  result = run_cli(f"--out={out}", "--tiny", *flags)
  assert result.returncode == 2
  assert f"holds an ablation with other settings ({key}" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flags, message", [
    (["--arms=decoder_lm,nope"], "no arm 'nope'"),
    (["--seeds=0,x"], "--seeds must be integers"),
    (["--budgets=1e9,-1"], "--budgets needs distinct positive numbers"),
    (["--lr_sweep=1,x"], "--lr_sweep must be numbers"),
    (["--workers=-2"], "--workers must be a positive"),
])
def test_bad_flags_are_one_error_line(tmp_path, flags, message):
  result = run_cli(f"--out={tmp_path / 'out'}", "--tiny", *flags)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
  assert not (tmp_path / "out" / "decoder_lm").exists()


# ---------------------------------------------------------------------------------------------
# Pieces, without training
# ---------------------------------------------------------------------------------------------


def arm_config(arm: str, tiny: bool = False) -> ExperimentConfig:
  config = ExperimentConfig.from_config_dict(ablation.pretrain_config_dict(arm, 0, tiny))
  # Tiny Shakespeare's 65 characters, pad/eos/unk, and the objective's own tokens.
  vocab = 68 + len(objectives.required_special_tokens(config.objective))
  return dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=vocab))


@pytest.mark.parametrize("tiny", [False, True])
def test_arms_match_in_parameters(tiny):
  counts = {}
  for arm in ablation.DEFAULT_ARMS:
    config = arm_config(arm, tiny)
    model, _, _ = train.build_model_and_loss(config)
    params = jax.eval_shape(lambda rng, m=model, c=config: train.init_params(m, c, rng),
                            jax.random.key(0))
    # Without the (tied) token embeddings, which grow with the objective's special tokens.
    counts[arm] = (models.parameter_count(params) -
                   config.model.vocab_size * config.model.embed_dim)
  # The same matrices in the blocks of every arm (norm scales aside); the encoder adds its MLM
  # head's E x E transform, 2% of the default size, 4% of the tiny one.
  assert max(counts.values()) / min(counts.values()) < (1.05 if tiny else 1.03), counts
  assert abs(counts["encdec_span"] / counts["decoder_lm"] - 1) < 0.003, counts


def test_every_arm_states_only_a_few_differences():
  kinds = set()
  for arm in ablation.available_arms():
    # A block-choice arm (decoder_lm_qk_norm, ...) is one choice apart from decoder_lm (the
    # local/global pattern with its window).
    parent, most = ("decoder_lm", 2) if arm.startswith("decoder_lm_") else ("baseline", 4)
    lines = ablation.config_diff.format_diff(ablation.config_diff.diff_files(
        str(ablation.ARM_DIR / f"{parent}.py"), str(ablation.arm_path(arm))))
    assert len(lines) <= most, (arm, lines)
    config = arm_config(arm)
    kinds.add((config.model.family, config.objective.name))
  assert set(ablation.T5_NAMES) <= kinds and ("encoder", "masked_lm") in kinds


def test_finetune_configs_fit_every_family(tmp_path):
  for task, spec in ablation.FINETUNES.items():
    for family in spec.families():
      for tiny in (False, True):
        config = ablation.finetune_config(task, family, tmp_path / "pre", 3, tiny)
        assert config.model.family == family and config.task.name == task
        assert config.train.seed == 3 and config.init_from == str(tmp_path / "pre")
        assert config.train.steps == (2 if tiny else ablation_spec.FINETUNE_STEPS[task])
  assert ablation.stages_of("encoder") == ["pretrain", "sst2"]
  with pytest.raises(UserError, match="no arm 'baseline'"):
    ablation.arm_path("baseline")


def test_records_and_progress():
  records = [{"step": 1, "train/mfu": 0.01, "train/loss": 5.0},
             {"step": 2, "train/mfu": 0.3, "train/loss": 4.0, "eval/loss": 3.0},
             {"step": 4, "train/mfu": 0.5, "train/loss": 3.5, "eval/loss": 2.5},
             {"step": 4, "train/loss": 3.4, "eval/loss": 2.4}]  # a resumed run did step 4 again
  assert ablation.loss_curve(records) == [(1, 5.0), (2, 4.0), (4, 3.4)]
  assert ablation.loss_curve(records, "eval/loss") == [(2, 3.0), (4, 2.4)]
  assert ablation.mean_mfu(records) == pytest.approx(0.4)  # the compiling window left out
  progress = ablation_pool.Progress([("a", "flops1e12 seed0", "pretrain@flops1e12"),
                                     ("a", "flops1e12 seed0", "sst2")], {})
  assert "known after the first stage" in progress.line("a", "flops1e12 seed0",
                                                        "pretrain@flops1e12", "x")
  progress.finished("a", "pretrain@flops1e12", 90.0)
  line = progress.line("a", "flops1e12 seed0", "sst2", "y")
  assert line.startswith("[ablation 2/2] a flops1e12 seed0: sst2 (y)")
  assert "about 1m30s left" in line  # no sst2 finished yet: every stage's mean
  assert ablation.choose_rate({1e-3: {"eval_loss": 2.0}, 2e-3: {"eval_loss": 1.9},
                               4e-3: {"eval_loss": None, "diverged": "nan"}}) == 2e-3
  assert ablation.choose_rate({4e-3: {"eval_loss": None}}) is None
  assert [budget_tag(b) for b in (1e12, 3e12, 2.5e8, 1.5e13)] == [
      "flops1e12", "flops3e12", "flops2.5e8", "flops1.5e13"]


def fake_plan(arm: str, family: str, objective: str) -> Plan:
  return Plan(arm=arm, family=family, objective=objective, parameters=800_000, vocab_size=68,
              flops_per_step=10**10, batch_size=16, seq_len=128, learning_rate=2e-3, diff=(),
              data_order="same")


KINDS = {"span": ("encoder_decoder", "span_corruption"), "lm": ("decoder", "causal_lm"),
         "prefix": ("decoder", "prefix_lm"), "mlm": ("encoder", "masked_lm")}


def fake_results(sst2_means: dict[str, float], seeds=(0, 1, 2, 3), budgets=(1e12, 1e13),
                 yardsticks=False, wobble=()) -> Results:
  """Records whose SST-2 score is the arm's mean plus what the seed does to every arm (a
  spread of several points), plus, for the arms in `wobble`, +1 and -1 point on alternate
  seeds; BLEU the same for every arm."""
  rng = np.random.default_rng(0)
  seed_effect = {seed: 5.0 * rng.normal() for seed in seeds}
  plans = {arm: fake_plan(arm, *KINDS[arm]) for arm in sst2_means}
  runs = {}
  for arm, mean in sst2_means.items():
    for budget in budgets:
      for seed in seeds:
        pretrain = {"eval_loss": 2.0 - 0.1 * np.log10(budget / 1e12), "mfu": 0.2,
                    "wall_s": 60.0, "curve": [[50, 2.5], [100, 2.0]]}
        if yardsticks:
          pretrain["yardsticks"] = {"bits per character": {
              "value": 2.0 + (0.5 if arm == "lm" else 0.0) + 1e-5 * rng.normal(),
              "higher_is_better": False}}
        record = {"pretrain": pretrain, "sst2": {
            "value": mean + seed_effect[seed] + (arm in wobble) * (-1) ** seed,
            "wall_s": 30.0}}
        if arm != "mlm":
          record["spa_eng"] = {"value": 1.0 + seed_effect[seed] / 10, "wall_s": 30.0}
        runs[(arm, budget, seed)] = record
  settings = {"budgets": list(budgets), "lr_sweep": [0.5, 1.0, 2.0], "tiny": False,
              "finetune": {"sst2": {}, "spa_eng": {}}}
  sweeps = {arm: {1e-3: {"eval_loss": 2.1}, 2e-3: {"eval_loss": 2.0},
                  4e-3: {"eval_loss": None, "diverged": "loss is nan"}} for arm in plans}
  return Results(list(plans), list(budgets), list(seeds), plans, settings, runs, sweeps,
                 {arm: 2e-3 for arm in plans})


def test_conclusions_state_resolved_differences_and_t5s_orderings(tmp_path):
  # span 5 points above lm: reproduced although each seed moves every arm by several points
  # (paired, that cancels); prefix as span on average but +1 / -1 on alternate seeds: span >
  # prefix not resolved; prefix > lm reproduced.
  results = fake_results({"span": 65.0, "prefix": 65.0, "lm": 60.0, "mlm": 70.0},
                         wobble=("prefix",))
  report = ablation_writeup.write_report(tmp_path, results).read_text()
  sst2 = section(report, "Conclusions").split("### SST-2", 1)[1].split("###", 1)[0]
  verdicts = {row[0]: [cell.split(":")[0] for cell in row[1:]] for row in table_rows(sst2)}
  assert verdicts == {"span > prefix": ["not resolved"] * 2, "span > lm": ["reproduced"] * 2,
                      "prefix > lm": ["reproduced"] * 2}
  assert "1e12 FLOPs | 1e13 FLOPs" in sst2
  resolved = sst2.split("excludes zero:", 1)[1]
  assert "span > lm (+5.0 [+5.0, +5.0], n=4)" in resolved and "mlm > span (+5.0" in resolved
  assert "span > prefix" not in resolved and "prefix > span" not in resolved
  assert "At the largest budget: 2 reproduced, 0 reversed, 1 not resolved." in sst2
  # BLEU: every arm the same: nothing resolved.
  bleu = section(report, "Conclusions").split("### Spanish", 1)[1]
  assert bleu.count("no two arms told apart") == 2
  # The sweep table marks the chosen rate and a diverged one; the trend of the loss is the
  # fake's -0.1 per tenfold FLOPs.
  sweep = {row[0]: row for row in table_rows(section(report, "Learning-rate sweep"))}
  assert sweep["span"][1:] == ["0.001: 2.1000", "**0.002: 2.0000**", "0.004: diverged",
                               "0.002"]
  trends = {row[0]: row for row in table_rows(section(report, "Trends against pretraining FLOPs"))}
  assert trends["span"][1] == "-0.100" and trends["mlm"][3] == "n/a"


def test_reversed_orderings_and_yardsticks(tmp_path):
  results = fake_results({"span": 60.0, "lm": 63.0}, yardsticks=True)
  report = ablation_writeup.write_report(tmp_path, results).read_text()
  sst2 = section(report, "Conclusions").split("### SST-2", 1)[1].split("###", 1)[0]
  assert [row[0] for row in table_rows(sst2)] == ["span > lm"]
  assert table_rows(sst2)[0][1].startswith("reversed: -3.0 [-3.0, -3.0], n=4")
  # A yardstick in the pretraining records: a column, a trend, and comparisons in its own
  # direction (lower bits per character is better).
  assert "| bits per character |" in section(report, "Results").splitlines()[2]
  yard = section(report, "Conclusions").split("### bits per character", 1)[1]
  assert table_rows(yard)[0][1].startswith("reproduced: +0.500 [")


def test_report_of_partial_results(tmp_path):
  results = fake_results({"span": 65.0, "mlm": 60.0}, seeds=(0, 1))
  del results.runs[("mlm", 1e12, 1)], results.runs[("mlm", 1e13, 0)], results.runs[("mlm", 1e13, 1)]
  results.failed.append("mlm flops1e13 seed0: non-finite loss")
  results.chosen.pop("mlm")
  report = ablation_writeup.write_report(tmp_path, results).read_text()
  rows = {(r[0], r[1]): r for r in table_rows(section(report, "Results"))}
  assert rows[("mlm", "1e13")][6:9] == ["—", "—", "n/a"] and rows[("mlm", "1e12")][2] == "—"
  assert "| mlm | 1e13 | 0 | not run or unfinished |" in report
  assert "(—: under two seeds" not in report  # mlm is in none of T5's orderings
  assert "## Failed runs" in report and np.isclose(json.loads(
      (tmp_path / "results.json").read_text())["arms"]["span"]["budgets"]["flops1e12"]["sst2"][
          "mean"], np.mean([r["sst2"]["value"] for k, r in results.runs.items()
                            if k[:2] == ("span", 1e12)]))
  assert (tmp_path / "trends.png").exists() and (tmp_path / "downstream.png").exists()


def test_the_pretrain_and_yardstick_hooks(tmp_path):
  # What a runner of several seeds in one program plugs in: it gets every seed's job at once
  # and reports each; the yardsticks land in the record.
  calls = []

  def together(jobs, start, done):
    calls.append([job.seed for job in jobs])
    for job in jobs:
      start(job)
    for job in jobs:
      done(job, ablation.StageRun({"eval/loss": 1.5 + job.seed}, 4.0, False))

  hooks = ablation.Hooks(pretrain=together, yardsticks=lambda job: {"probe": 0.5 + job.seed})
  plans = {"decoder_lm": fake_plan("decoder_lm", "decoder", "causal_lm")}
  run = ablation.Ablation(tmp_path, ["decoder_lm"], [1e11, 1e12], [0, 1, 2], [1.0, 2.0], True,
                          plans, hooks)
  jobs = [(run.job("decoder_lm", 1e12, seed, 2e-3, seed_dir(tmp_path, "decoder_lm", 1e12, seed)
                   / "pretrain", f"seed{seed}"), seed_dir(tmp_path, "decoder_lm", 1e12, seed) /
           "pretrain.json") for seed in (0, 1, 2)]
  ablation.write_json(jobs[1][1], {"eval_loss": 9.0, "wall_s": 1.0})  # finished before
  lines = []
  progress = ablation_pool.Progress([("decoder_lm", f"seed{s}", "pretrain@flops1e12")
                                     for s in (0, 2)], {})
  records = run.pretrain(jobs, progress, lines.append)
  assert calls == [[0, 2]] and progress.done == 2 and len(lines) == 2
  assert [records[job]["eval_loss"] for job, _ in jobs] == [1.5, 9.0, 3.5]
  saved = json.loads(jobs[2][1].read_text())
  assert saved["yardsticks"] == {"probe": 2.5} and saved["steps"] == 100
  assert saved["workdir"] == "decoder_lm/flops1e12/seed2/pretrain"
  # The sweep at the smallest budget: a rate that diverged is recorded and not chosen; a
  # seed's run that diverged is a failure, unrecorded, so that a rerun tries it again.
  def diverge_at_high_rates(jobs, start, done):
    for job in jobs:
      start(job)
      done(job, FloatingPointError("loss is nan") if job.learning_rate > 3e-3 else
           ablation.StageRun({"eval/loss": 2.0}, 1.0, False))

  measured = []
  run.hooks = ablation.Hooks(pretrain=diverge_at_high_rates,
                             yardsticks=lambda job: measured.append(job.learning_rate) or {
                                 "probe": 0.75})
  assert run.sweep("decoder_lm", ablation_pool.Progress([], {}), lines.append) == 2e-3
  sweep_record = lambda rate: json.loads(
      (tmp_path / "decoder_lm" / "flops1e11" / f"lr{rate}" / "pretrain.json").read_text())
  assert sweep_record("0.004")["diverged"] == "loss is nan"
  # The yardsticks of the chosen rate's run only (it is also seed 0's run at this budget).
  assert measured == [2e-3] and sweep_record("0.002")["yardsticks"] == {"probe": 0.75}
  assert sweep_record("0.004")["yardsticks"] == {}
  failed = run.run_budget("decoder_lm", 1e13, 4e-3, ablation_pool.Progress([], {}),
                          lines.append)
  assert failed == [f"decoder_lm flops1e13 seed{seed}: loss is nan" for seed in (0, 1, 2)]
  assert not (tmp_path / "decoder_lm" / "flops1e13").exists()
  # The stages of the smallest budget: the sweep's rates, then the seeds but the sweep's.
  stages = run.stages("decoder_lm", 1e11)
  assert [where for where, kind, _ in stages if kind.startswith("pretrain")] == [
      "flops1e11 lr0.002", "flops1e11 lr0.004", "flops1e11 seed1", "flops1e11 seed2"]


def fake_corpus(directory: pathlib.Path) -> pathlib.Path:
  """What ablation_corpus.build leaves that the runner reads: stats.json and tokenizer/."""
  (directory / "tokenizer").mkdir(parents=True)
  (directory / "tokenizer" / "manifest.json").write_text("{}")
  (directory / "stats.json").write_text(json.dumps({"train": {"documents": 90},
                                                    "validation": {"documents": 10}}))
  return directory


def test_a_moved_out_keeps_its_plans(tmp_path):
  # OUT/<arm>/plan.json records the arm's config, corpus path included; a copy of OUT elsewhere
  # (to add seeds on another disk) is the same run, while a changed arm config is still refused.
  old, new = tmp_path / "old", tmp_path / "new"
  fake_corpus(old / "corpus")
  config = ablation.pretrain_config_dict("decoder_lm", 0, False, corpus=old / "corpus")
  plan = fake_plan("decoder_lm", "decoder", "causal_lm")
  ablation.write_json(old / "decoder_lm" / "plan.json", {**dataclasses.asdict(plan),
                                                         "config": config.to_dict()})
  shutil.copytree(old, new)
  assert ablation.load_or_make_plan(new, "decoder_lm", False, tmp_path / "w",
                                    corpus=new / "corpus") == plan
  config.model.num_layers += 1
  ablation.write_json(new / "decoder_lm" / "plan.json", {**dataclasses.asdict(plan),
                                                         "config": config.to_dict()})
  with pytest.raises(UserError, match="the config of arm decoder_lm changed.*num_layers"):
    ablation.load_or_make_plan(new, "decoder_lm", False, tmp_path / "w", corpus=new / "corpus")


def test_seeds_per_program_groups_the_seeds_of_an_arm_and_budget(tmp_path, monkeypatch):
  # --seeds_per_program=K: seeds of one arm, budget and rate go K at a time to one multiseed
  # program; the sweep's rates (one job each) and a group that diverged run one by one. The
  # arms pretrain on the shared corpus: each workdir gets its vocabulary before it is used.
  corpus = fake_corpus(tmp_path / "corpus")
  plans = {"decoder_lm": fake_plan("decoder_lm", "decoder", "causal_lm")}
  run = ablation.Ablation(tmp_path, ["decoder_lm"], [1e11, 1e12], [0, 1, 2, 3, 4], [1.0, 2.0],
                          False, plans, corpus=corpus)
  job = lambda budget, seed, rate=2e-3: (run.job("decoder_lm", budget, seed, rate, seed_dir(
      tmp_path, "decoder_lm", budget, seed) / "pretrain", f"seed{seed}"), seed_dir(
          tmp_path, "decoder_lm", budget, seed) / "pretrain.json")
  jobs = [job(1e12, seed) for seed in range(5)] + [job(1e11, 0, 2e-3), job(1e11, 0, 4e-3)]
  assert jobs[0][0].config.data.dataset == "text_files"
  assert jobs[0][0].config.data.files == str(corpus)
  assert jobs[0][0].config.data.tokenizer == "sentencepiece"
  groups = ablation.seed_groups([j for j, _ in jobs], 2)
  assert [[(j.budget, j.seed, j.learning_rate) for j in g] for g in groups] == [
      [(1e12, 0, 2e-3), (1e12, 1, 2e-3)], [(1e12, 2, 2e-3), (1e12, 3, 2e-3)],
      [(1e12, 4, 2e-3)], [(1e11, 0, 2e-3)], [(1e11, 0, 4e-3)]]
  together, alone = [], []

  def program(group):
    from research import multiseed  # pylint: disable=import-outside-toplevel
    config, seeds = multiseed.split_seeds([j.config for j in group])  # what the runner passes
    assert config.train.steps == group[0].config.train.steps
    together.append(seeds)
    if 3 in seeds:
      raise FloatingPointError("loss is nan at step 7")
    return [ablation.StageRun({"eval/loss": 1.0 + j.seed}, 2.0, False) for j in group]

  def one(config, workdir):
    alone.append(config.train.seed)
    return ablation.StageRun({"eval/loss": 1.0 + config.train.seed}, 4.0, False)

  monkeypatch.setattr(ablation, "run_seeds_together", program)
  monkeypatch.setattr(ablation, "run_stage", one)
  run.hooks = ablation.default_hooks(True, 2)
  lines = []
  records = run.pretrain(jobs, ablation_pool.Progress([], {}), lines.append)
  assert together == [[0, 1], [2, 3]]
  assert alone == [2, 3, 4, 0, 0]  # the diverged pair, the fifth seed, the sweep's two rates
  assert [records[j]["eval_loss"] for j, _ in jobs] == [1.0, 2.0, 3.0, 4.0, 5.0, 1.0, 1.0]
  assert all((j.workdir / "tokenizer" / "manifest.json").exists() for j, _ in jobs)
  assert sum(line.startswith("[ablation") and "pretrain@flops1e12" in line
             for line in lines) == 5  # each job's progress line once


def test_the_yardsticks_of_the_default_runs(tmp_path, monkeypatch):
  # The measurements themselves are tested on fixtures whose answer is known
  # (tests/test_ablation_corpus.py); here: which workdir each arm's hook measures, with how many
  # probe examples, which arms get bits per character (those that predict text left to right:
  # a causal or prefix LM), and the units the report reads.
  from experiments import ablation_yardsticks  # pylint: disable=import-outside-toplevel
  calls = []

  def probe(workdir, train_examples):
    calls.append(("probe", workdir, train_examples))
    return {"accuracy": len(workdir) / 1000}  # differs per arm

  def bits(workdir):
    calls.append(("bits", workdir))
    return {"bits_per_char": len(workdir) / 10}

  monkeypatch.setattr(ablation_yardsticks, "linear_probe", probe)
  monkeypatch.setattr(ablation_yardsticks, "bits_per_char", bits)
  hooks = ablation.default_hooks(False, 1)
  assert hooks.pretrain is ablation.pretrain_each
  assert ablation.default_hooks(True, 1).yardsticks is ablation.no_yardsticks
  for arm in ablation.DEFAULT_ARMS:
    calls.clear()
    config = ablation.with_steps(ablation.pretrain_config_dict(arm, 0, True), 5)
    job = ablation.PretrainJob(arm, 1e12, 0, 2e-3, config, tmp_path / arm, "seed0")
    got = hooks.yardsticks(job)
    workdir = str(job.workdir)
    objective = job.config.objective.name
    left_to_right = objective in ("causal_lm", "prefix_lm")
    assert calls == [("probe", workdir, ablation.PROBE_EXAMPLES)] + (
        [("bits", workdir)] if left_to_right else []), arm
    assert got["linear probe accuracy (%)"] == pytest.approx(100 * len(workdir) / 1000), arm
    if left_to_right:
      assert got["bits per character"] == {"value": pytest.approx(len(workdir) / 10),
                                           "higher_is_better": False}, arm
    else:
      assert set(got) == {"linear probe accuracy (%)"}, arm


def test_a_run_stopped_before_its_last_step_stops_the_ablation(tmp_path, monkeypatch):
  # research.train checkpoints and returns normally on SIGTERM: that is no finished stage.
  def stopped_at_step_3(config, workdir):
    (pathlib.Path(workdir) / "checkpoints" / "3").mkdir(parents=True)
    (pathlib.Path(workdir) / "checkpoints" / "4.orbax-checkpoint-tmp").mkdir()
    return {"eval/loss": 1.0}

  monkeypatch.setattr(train, "train_and_evaluate", stopped_at_step_3)
  config = ablation.with_steps(ablation.pretrain_config_dict("decoder_lm", 0, True), 5)
  with pytest.raises(ablation.Interrupted, match="stopped at step 3 of 5"):
    ablation.run_stage(config, tmp_path / "run")
  assert ablation.latest_checkpoint(tmp_path / "run") == 3
  assert ablation.latest_checkpoint(tmp_path / "none") is None


def test_the_learning_rate_scales_the_whole_schedule():
  config = ablation.pretrain_config_dict("decoder_lm", 0, False, learning_rate=4e-3)
  base = ablation.pretrain_config_dict("decoder_lm", 0, False)
  assert config.optimizer.learning_rate == 4e-3
  assert config.optimizer.end_learning_rate == pytest.approx(
      base.optimizer.end_learning_rate * 4e-3 / base.optimizer.learning_rate)
