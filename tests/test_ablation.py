"""experiments/architecture_ablation.py: the --tiny ablation end to end (report, plots, every
arm), skipping and resuming on a rerun, bad input, and the pieces of the report."""

import dataclasses
import json
import pathlib
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from experiments import architecture_ablation as ablation
from research import models, objectives, train
from research.config import ExperimentConfig, UserError
from research.paths import REPO_ROOT
from xla_flags import cli_env


def run_cli(*args):
  env = cli_env()
  return subprocess.run([sys.executable, "-m", "experiments.architecture_ablation", *args],
                        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("ablation") / "out"
  start = time.perf_counter()
  result = run_cli(f"--out={out}", "--tiny")
  return out, result, time.perf_counter() - start


def results_table(report: str) -> list[str]:
  section = report.split("## Results", 1)[1].split("\n## ", 1)[0]
  return [line for line in section.splitlines() if line.startswith("| ")][1:]  # no header


def test_tiny_ablation_writes_the_report_plots_and_every_arm(tiny_run):
  out, result, seconds = tiny_run
  assert result.returncode == 0, result.stderr[-3000:]
  print(f"tiny ablation: {seconds:.0f} s")
  report = (out / "report.md").read_text()
  for png in ("loss_vs_flops.png", "downstream.png"):
    assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"({png})" in report
  rows = {row.split(" | ")[0][2:]: row.split(" | ") for row in results_table(report)}
  assert sorted(rows) == sorted(ablation.DEFAULT_ARMS)
  assert rows["encoder_mlm"][9] == "n/a"  # no translation from an encoder-only model
  assert "±" in rows["decoder_lm"][7]  # two seeds: mean ± spread
  for arm in ablation.DEFAULT_ARMS:
    for seed in (0, 1):
      record = json.loads((out / arm / f"seed{seed}" / "result.json").read_text())
      assert record["pretrain"]["curve"] and record["sst2"]["value"] is not None
      assert (record.get("spa_eng") is None) == (arm == "encoder_mlm")
  # Compute matched: every arm within one step's FLOPs of the budget.
  summary = json.loads((out / "results.json").read_text())
  for arm, values in summary["arms"].items():
    plan = values["plan"]
    assert abs(plan["steps"] * plan["flops_per_step"] - ablation.TINY_BUDGET) <= (
        plan["flops_per_step"]), arm
    assert len(values["sst2"]["values"]) == 2
  assert "**encdec_lm** (T5: Enc-dec, 6 layers (P, M/2), LM): `objective.name:" in report
  assert "not comparable across objectives" in report
  # --tiny runs TINY_WORKERS arms at once, each process logging to OUT/<arm>/log.txt; this
  # process reports every stage as its record appears, with the time left.
  assert f"[ablation] {ablation.DEFAULT_ARMS[0]} seeds 0,1: started" in result.stderr
  assert all((out / arm / "log.txt").exists() for arm in ablation.DEFAULT_ARMS)
  done = [line for line in result.stderr.splitlines() if " done in " in line]
  assert len(done) == 28 and done[-1].startswith("[ablation 28/28]")
  assert "left" in done[1]
  assert f"up to {ablation.TINY_WORKERS} arm-seeds ran at once (--workers)" in report


def test_rerun_skips_everything_finished(tiny_run):
  out = tiny_run[0]
  records = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/*.json")}
  start = time.perf_counter()
  result = run_cli(f"--out={out}", "--tiny")
  seconds = time.perf_counter() - start
  assert result.returncode == 0, result.stderr[-3000:]
  assert "[ablation" not in result.stderr
  assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/*.json")} == records
  assert seconds < 60, seconds  # imports and the report only (~5 s on 2 idle cores)


def test_an_interrupted_stage_resumes_from_its_workdir(tiny_run):
  out = tiny_run[0]
  # The stage's record was lost after its run checkpointed its last step: the rerun runs
  # this stage alone, and training resumes at that checkpoint (only the evaluation is left).
  # In this process (--workers=1): its progress line comes before the stage.
  seed_dir = out / "decoder_lm" / "seed1"
  before = json.loads((seed_dir / "spa_eng.json").read_text())
  (seed_dir / "spa_eng.json").unlink()
  (seed_dir / "result.json").unlink()
  result = run_cli(f"--out={out}", "--tiny", "--workers=1")
  assert result.returncode == 0, result.stderr[-3000:]
  progress = [line for line in result.stderr.splitlines() if line.startswith("[ablation")]
  assert len(progress) == 1 and progress[0].startswith("[ablation 1/1] decoder_lm seed 1: spa_eng")
  assert "resumed from" in result.stderr
  after = json.loads((seed_dir / "spa_eng.json").read_text())
  assert after["resumed"] and after["value"] == pytest.approx(before["value"])
  assert (seed_dir / "result.json").exists()


def test_other_settings_on_the_same_out_are_refused(tiny_run):
  out = tiny_run[0]
  result = run_cli(f"--out={out}", "--tiny", "--budget_flops=1e9")
  assert result.returncode == 2
  assert "holds an ablation with other settings (budget_flops" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flags, message", [
    (["--arms=decoder_lm,nope"], "no arm 'nope'"),
    (["--seeds=0,x"], "--seeds must be integers"),
    (["--budget_flops=-1"], "--budget_flops must be a positive"),
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
    lines = ablation.config_diff.format_diff(ablation.config_diff.diff_files(
        str(ablation.ARM_DIR / "baseline.py"), str(ablation.arm_path(arm))))
    assert len(lines) <= 4, (arm, lines)
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
        assert config.train.steps == (2 if tiny else 100)
  assert ablation.stages_of("encoder") == ["pretrain", "sst2"]
  with pytest.raises(UserError, match="no arm 'baseline'"):
    ablation.arm_path("baseline")


def test_records_stats_and_progress():
  records = [{"step": 1, "train/mfu": 0.01}, {"step": 2, "train/mfu": 0.3, "eval/loss": 3.0},
             {"step": 4, "train/mfu": 0.5, "eval/loss": 2.5},
             {"step": 4, "eval/loss": 2.4}]  # a resumed run measured step 4 again
  assert ablation.loss_curve(records) == [(2, 3.0), (4, 2.4)]
  assert ablation.mean_mfu(records) == pytest.approx(0.4)  # the compiling window left out
  stat = ablation.Stat((1.0, 3.0))
  assert stat.format(2) == "2.00 ± 1.41" and ablation.Stat((2.0,)).format(1) == "2.0"
  assert ablation.Stat(()).format(1) == "—"
  progress = ablation.Progress([("a", 0, "pretrain"), ("a", 0, "sst2")], {})
  assert "known after the first stage" in progress.line("a", 0, "pretrain", "x")
  progress.finished("a", "pretrain", 90.0)
  line = progress.line("a", 0, "sst2", "y")
  assert line.startswith("[ablation 2/2] a seed 0: sst2 (y)") and "about 1m30s left" in line


def fake_plan(arm: str, family: str, objective: str) -> "ablation.Plan":
  return ablation.Plan(arm=arm, family=family, objective=objective, parameters=800_000,
                       vocab_size=68, flops_per_step=10**10, steps=1000, batch_size=16,
                       seq_len=128, diff=())


def test_conclusions_name_the_winner_and_check_t5s_order():
  plans = {"span": fake_plan("span", "encoder_decoder", "span_corruption"),
           "lm": fake_plan("lm", "decoder", "causal_lm"),
           "prefix": fake_plan("prefix", "decoder", "prefix_lm"),
           "mlm": fake_plan("mlm", "encoder", "masked_lm")}
  sst2 = {"span": (70.0, 72.0), "lm": (60.0, 61.0), "prefix": (75.0, 76.0), "mlm": (65.0, 66.0)}
  stats = {arm: {"plan": plan, "sst2": ablation.Stat(sst2[arm]),
                 "spa_eng": ablation.Stat(() if arm == "mlm" else (1.0, 1.2))}
           for arm, plan in plans.items()}
  lines = ablation.conclusions(list(plans), stats)
  assert lines[0].startswith("- SST-2 (dev accuracy (%)): **prefix** is best; ranking: prefix")
  assert "exceeds the seed spread" in lines[0]
  # T5 on GLUE: span > prefix (reversed here), span > lm, prefix > lm (both hold here).
  assert "2 of 3 hold here (span > lm; prefix > lm)" in lines[0]
  assert "reversed here: prefix > span" in lines[0]
  assert "tied with" in lines[1] and "tied: " in lines[1]


def test_report_of_partial_results(tmp_path):
  plans = {"span": fake_plan("span", "encoder_decoder", "span_corruption"),
           "mlm": fake_plan("mlm", "encoder", "masked_lm")}
  record = {"pretrain": {"eval_loss": 2.0, "curve": [[500, 2.5], [1000, 2.0]], "mfu": 0.2,
                         "wall_s": 60.0},
            "sst2": {"value": 70.0, "wall_s": 30.0}, "spa_eng": {"value": 1.5, "wall_s": 30.0}}
  settings = {"budget_flops": 1e13, "tiny": False, "finetune": {"sst2": {}, "spa_eng": {}}}
  report = ablation.write_report(tmp_path, list(plans), [0, 1], plans, {("span", 0): record},
                                 settings, ["mlm seed 0: non-finite loss"]).read_text()
  rows = {row.split(" | ")[0][2:]: row.split(" | ") for row in results_table(report)}
  assert rows["span"][8:10] == ["70.0", "1.50"] and rows["mlm"][8:10] == ["—", "n/a"]
  assert "| mlm | 1 | not run or unfinished |" in report
  assert "## Failed runs" in report and np.isclose(
      json.loads((tmp_path / "results.json").read_text())["arms"]["span"]["sst2"]["mean"], 70.0)
  assert pathlib.Path(tmp_path / "downstream.png").exists()


def test_a_run_stopped_before_its_last_step_stops_the_ablation(tmp_path, monkeypatch):
  # research.train checkpoints and returns normally on SIGTERM: that is no finished stage.
  def stopped_at_step_3(config, workdir):
    (pathlib.Path(workdir) / "checkpoints" / "3").mkdir(parents=True)
    (pathlib.Path(workdir) / "checkpoints" / "4.orbax-checkpoint-tmp").mkdir()
    return {"eval/loss": 1.0}

  monkeypatch.setattr(train, "train_and_evaluate", stopped_at_step_3)
  config = ablation.with_steps(ablation.pretrain_config_dict("decoder_lm", 0, True), 5, True)
  with pytest.raises(ablation.Interrupted, match="stopped at step 3 of 5"):
    ablation.run_stage(config, tmp_path / "run")
  assert ablation.latest_checkpoint(tmp_path / "run") == 3
  assert ablation.latest_checkpoint(tmp_path / "none") is None


def test_workers_report_stages_and_failures(tmp_path, monkeypatch):
  # run_in_workers with a stand-in for the worker command: arm "ok" writes its two stage
  # records, arm "bad" fails with a message; both run at once.
  fake = tmp_path / "fake_python"
  fake.write_text(textwrap.dedent("""\
      #!/bin/sh
      for a in "$@"; do case $a in --out=*) out=${a#--out=};; --arms=*) arm=${a#--arms=};; esac; done
      if [ "$arm" = bad ]; then echo "error: bad seed 0: loss is nan"; exit 2; fi
      mkdir -p "$out/ok/seed0"
      for stage in pretrain sst2; do echo '{"wall_s": 1.0}' > "$out/ok/seed0/$stage.json"; done
      """))
  fake.chmod(0o755)
  monkeypatch.setattr(sys, "executable", str(fake))
  out = tmp_path / "out"
  for arm in ("ok", "bad"):
    (out / arm).mkdir(parents=True)
  plans = {arm: fake_plan(arm, "encoder", "masked_lm") for arm in ("ok", "bad")}
  # An earlier run finished bad's pretraining: not reported again, not in the count.
  ablation.write_json(out / "bad" / "seed0" / "pretrain.json", {"wall_s": 5.0})
  todo = [("ok", 0, "pretrain"), ("ok", 0, "sst2"), ("bad", 0, "sst2")]
  progress = ablation.Progress(todo, {}, workers=2)
  lines = []
  failed, interrupted = ablation.run_in_workers(
      out, [("ok", 0), ("bad", 0)], plans, {"budget_flops": 1e9, "tiny": True}, 2, progress,
      lines.append)
  assert not interrupted
  assert len(failed) == 1 and failed[0].startswith("bad: error: bad seed 0: loss is nan")
  assert "exit status 2" in failed[0]
  done = [line for line in lines if " done in " in line]
  assert len(done) == 2 and done[-1].startswith("[ablation 2/3] ok seed 0: sst2 done in 1s")
  assert progress.done == 3  # the failed arm's last stage counted as skipped
