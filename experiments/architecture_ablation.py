"""Compute-matched architecture ablation: T5's Table 2 (Raffel et al. 2020, Sec. 3.2) in miniature.

  python -m experiments.architecture_ablation --out=runs/ablation [--budget_flops=1e13] \
      [--seeds=0,1] [--arms=encdec_span,encdec_lm,decoder_prefix_lm,decoder_lm,encoder_mlm]
  python -m experiments.architecture_ablation --out=/tmp/ablation_tiny --tiny

Each arm is a config in experiments/ablation/ that states only its difference from
experiments/ablation/baseline.py. For every seed and arm, in this order:
  1. pretraining on character-level Tiny Shakespeare for the same training FLOPs: train.steps =
     round(budget / research.flops.training_flops_per_step(arm)), so an arm whose step is cheaper
     takes more steps; the validation loss is measured EVAL_POINTS times along the way;
  2. fine-tuning from that workdir (config.init_from: its architecture and character vocabulary)
     on SST-2 (dev accuracy) and on Spanish -> English (sacrebleu BLEU of greedy decoding on the
     test split), with the same steps, batch and lengths for every arm; an encoder-only model
     cannot generate, so it has no translation score (n/a, as T5 leaves cells empty).
Then OUT/report.md (tables, config diffs, conclusions), OUT/loss_vs_flops.png,
OUT/downstream.png and OUT/results.json.

Layout: OUT/<arm>/seed<k>/{pretrain,sst2,spa_eng}/ are research.train workdirs; a stage's
OUT/<arm>/seed<k>/<stage>.json is written when it has finished and been evaluated, and
OUT/<arm>/seed<k>/result.json when all of the arm's stages have. Running the command again
skips what has a record, resumes interrupted workdirs from their last checkpoint (as
train_and_evaluate does), and rewrites the report; adding seeds or arms adds runs. A run stopped
by SIGTERM (research.train checkpoints and returns) ends the ablation until the next rerun. A
different budget, --tiny or changed arm config on the same OUT is refused. A progress line
before every stage names the arm, seed and stage and estimates the time left from the stages
finished so far. JAX's persistent compilation cache lives in OUT/jax_cache.

--workers=N runs N arms at once, each in its own process (its seeds one after another, so that
the later seeds load the first one's compiled programs from the cache; its output goes to
OUT/<arm>/log.txt), and logs each stage as it finishes. The default is one, so that the
report's wall times and MFU are measured on an otherwise idle machine; --tiny, whose stages
are compile-bound, defaults to TINY_WORKERS, and the report says when stages shared the machine.

Runtime of the default (5 arms x 2 seeds: 10 pretrainings of ~820-1460 steps, 10 SST-2 and 8
translation fine-tunings of 100 steps): 31m42s measured on 2 idle CPU cores
(experiments/ablation_report/). --tiny (tiny models, a few steps each, 2 seeds, 28 stages):
1m39s on 2 idle cores with its default three workers (median of 3 runs: 97, 99, 100 s; one
process: 2m19s).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
import ml_collections
import numpy as np
from etils import epath

from research import config_diff, paths
from research.config import ConfigError, ExperimentConfig, UserError, load_config_file
from research.paths import REPO_ROOT
# pylint: enable=wrong-import-position

ARM_DIR = pathlib.Path(__file__).resolve().with_name("ablation")
BASELINE = "baseline"
DEFAULT_ARMS = ("encdec_span", "encdec_lm", "decoder_prefix_lm", "decoder_lm", "encoder_mlm")
DEFAULT_BUDGET = 1e13  # training FLOPs per pretraining run (~880 steps of the decoder-only arms)
TINY_BUDGET = 5e8  # a handful of steps of the tiny models
EVAL_POINTS = 5  # validation-loss measurements along each pretraining run
TASKS = ("sst2", "spa_eng")

# --tiny: the arms shrunk alike (half the layers; width and MLP / 4, so the parameter matching
# of baseline.py still holds: its MLP is narrower by exactly the width), short sequences.
TINY_PRETRAIN = {"model.embed_dim": 32, "model.num_heads": 2, "data.seq_len": 32,
                 "data.batch_size": 8, "train.eval_batches": 2, "train.eval_batch_size": 8,
                 "train.log_every": 1, "optimizer.warmup_steps": 1}
TINY_MLP_DIVISOR = 4
# Tiny runs are compile-bound: without LLVM's optimisations a tiny stage compiles ~2.5x faster
# (measured on the 2-core CPU); the default runs keep them, their steps dominate.
TINY_XLA_FLAGS = "--xla_backend_optimization_level=0"
# --tiny's stages are mostly tracing and compilation, which leave a core idle much of the time:
# on the 2-core CPU, one worker took 2m19s, two 1m48s and three 1m33s-1m40s (idle cores); five
# were no faster than three. Tiny models leave an accelerator's memory room for three.
TINY_WORKERS = 3


@dataclasses.dataclass(frozen=True)
class Finetune:
  """One downstream task: which repository config each family starts from, and the settings
  every arm shares (the pretrained workdir replaces the architecture and tokenizer)."""

  task: str
  label: str  # in tables and plots
  metric: str  # key of train_and_evaluate's result
  metric_label: str
  scale: float  # metric -> the reported unit (accuracy in %)
  configs: dict[str, str]  # family -> configs/<file>
  settings: dict[str, Any]  # "section.key" -> value, every arm
  tiny: dict[str, Any]

  def families(self) -> tuple[str, ...]:
    from research import kinds  # pylint: disable=import-outside-toplevel
    return kinds.KINDS[kinds.TASKS[self.task].kind].FAMILIES


# Shared by both tasks: the same optimizer, steps and batch for every arm; no dropout (a few
# hundred steps do not overfit); one evaluation, at the end.
_COMMON = {"data.tokenizer": "char", "data.vocab_size": 0, "data.batch_size": 32,
           "model.dropout_rate": 0.0, "optimizer.learning_rate": 1e-3,
           "optimizer.end_learning_rate": 1e-4, "optimizer.warmup_steps": 10,
           "optimizer.weight_decay": 0.01, "optimizer.decay_steps": 0, "train.steps": 100,
           "train.eval_every": 0, "train.checkpoint_every": 50, "train.log_every": 10,
           "train.eval_batches": 0, "train.eval_batch_size": 0}
# --tiny reads only the first 2,000 training records of each task (featurising them all would
# take longer than the tiny run itself).
_TINY_COMMON = {"data.batch_size": 8, "data.train_split": "train[:2000]", "train.steps": 2,
                "train.checkpoint_every": 2, "train.log_every": 1, "optimizer.warmup_steps": 1}

FINETUNES = {
    "sst2": Finetune(
        "sst2", "SST-2", "eval/accuracy", "dev accuracy (%)", 100.0,
        {"encoder": "sst2_bert.py", "decoder": "sst2_gpt.py", "encoder_decoder": "sst2_t5.py"},
        # Characters: 128 hold three quarters of the dev sentences whole; "positive" + EOS is
        # 9 tokens for the encoder-decoder to write.
        {**_COMMON, "data.seq_len": 128, "data.eval_split": "validation",
         "task.max_input_len": 128, "task.max_target_len": 10, "task.decoding": "greedy",
         "task.eval_examples": 0, "task.eval_batch_size": 128},
        {**_TINY_COMMON, "data.seq_len": 32, "task.max_input_len": 32,
         "task.eval_examples": 16, "task.eval_batch_size": 16}),
    "spa_eng": Finetune(
        "spa_eng", "Spanish->English", "eval/bleu", "test BLEU", 1.0,
        {"decoder": "spa_eng_gpt.py", "encoder_decoder": "spa_eng_t5.py"},
        # The same text for both generating families: a 64-character input (template and the
        # Spanish sentence cut to ~45 characters) and a 48-character English target; the
        # decoder holds both in its 112 positions.
        {**_COMMON, "data.seq_len": 112, "data.eval_split": "test", "task.max_input_len": 64,
         "task.max_target_len": 48, "task.decoding": "greedy", "task.eval_examples": 400,
         "task.eval_batch_size": 200},
        {**_TINY_COMMON, "data.seq_len": 36, "task.max_input_len": 28, "task.max_target_len": 8,
         "task.eval_examples": 16, "task.eval_batch_size": 16}),
}

# The rows of T5's Table 2 that the arms reproduce at matched parameters ("P"): the
# encoder-decoder there has L/2 + L/2 layers when matched to an L-layer decoder ("6 layers").
T5_NAMES = {("encoder_decoder", "span_corruption"): "Enc-dec, 6 layers (P, M/2), denoising",
            ("encoder_decoder", "prefix_lm"): "Enc-dec, 6 layers (P, M/2), LM",
            ("decoder", "prefix_lm"): "Prefix LM (P, M), LM",
            ("decoder", "causal_lm"): "Language model (P, M), LM"}
# Pairs (better, worse) that those rows order on GLUE in Table 2: denoising beats the LM
# objective, and the decoder-only language model is last. The encoder-decoder trained as an LM
# and the prefix LM are about a point apart there, so that pair is no expectation.
T5_ORDER = ((("encoder_decoder", "span_corruption"), ("encoder_decoder", "prefix_lm")),
            (("encoder_decoder", "span_corruption"), ("decoder", "prefix_lm")),
            (("encoder_decoder", "span_corruption"), ("decoder", "causal_lm")),
            (("encoder_decoder", "prefix_lm"), ("decoder", "causal_lm")),
            (("decoder", "prefix_lm"), ("decoder", "causal_lm")))


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


def available_arms() -> list[str]:
  return sorted(p.stem for p in ARM_DIR.glob("*.py") if p.stem not in (BASELINE, "__init__"))


def arm_path(arm: str) -> pathlib.Path:
  path = ARM_DIR / f"{arm}.py"
  if arm == BASELINE or not path.is_file():
    raise UserError(f"--arms: no arm {arm!r}; the arms are {available_arms()} "
                    f"(files in {ARM_DIR.relative_to(REPO_ROOT)})")
  return path


def _set(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> None:
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value


def pretrain_config_dict(arm: str, seed: int, tiny: bool) -> ml_collections.ConfigDict:
  """The arm's config with the seed (initialisation, objective noise and data order) applied,
  shrunk with --tiny; train.steps is set later from the budget."""
  config = load_config_file(str(arm_path(arm)))
  if tiny:  # half the layers (4 -> 2, 2 + 2 -> 1 + 1): compilation dominates tiny runs
    config.model.num_layers = max(1, config.model.num_layers // 2)
    config.model.num_decoder_layers = max(0, config.model.num_decoder_layers // 2)
    config.model.mlp_dim //= TINY_MLP_DIVISOR
    _set(config, TINY_PRETRAIN)
  _set(config, {"train.seed": seed, "data.shuffle_seed": seed})
  return config


def with_steps(config: ml_collections.ConfigDict, steps: int, tiny: bool) -> ExperimentConfig:
  points = 2 if tiny else EVAL_POINTS
  every = max(1, steps // points)
  _set(config, {"train.steps": steps, "train.eval_every": every,
                "train.checkpoint_every": every, "train.keep_checkpoints": 2,
                "optimizer.decay_steps": 0})
  return ExperimentConfig.from_config_dict(config)


def finetune_config(task: str, family: str, init_from: epath.Path, seed: int,
                    tiny: bool) -> ExperimentConfig:
  """The fine-tuning config of `task` for a pretrained workdir of `family`."""
  spec = FINETUNES[task]
  config = load_config_file(str(REPO_ROOT / "configs" / spec.configs[family]))
  _set(config, spec.settings)
  if tiny:
    _set(config, spec.tiny)
  _set(config, {"train.seed": seed, "data.shuffle_seed": seed})
  config.init_from = str(init_from)
  return ExperimentConfig.from_config_dict(config)


def stages_of(family: str) -> list[str]:
  return ["pretrain"] + [t for t in TASKS if family in FINETUNES[t].families()]


# ---------------------------------------------------------------------------------------------
# Plans: what a budget means for each arm
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
  arm: str
  family: str
  objective: str
  parameters: int
  vocab_size: int
  flops_per_step: int
  steps: int
  batch_size: int
  seq_len: int
  diff: tuple[str, ...]  # config_diff lines against baseline.py

  @property
  def training_flops(self) -> int:
    return self.steps * self.flops_per_step

  @property
  def tokens(self) -> int:
    return self.steps * self.batch_size * self.seq_len


def make_plan(arm: str, config: ExperimentConfig, budget: float, workdir: epath.Path) -> Plan:
  """Resolves the arm's vocabulary (building its tokenizer in `workdir`, where training finds
  it again) and counts its parameters and training FLOPs per step."""
  from research import flops as flops_lib  # pylint: disable=import-outside-toplevel
  from research import models, train  # pylint: disable=import-outside-toplevel
  exp = train.build_experiment(config, workdir)
  resolved = exp.config
  per_step = flops_lib.training_flops_per_step(resolved)
  diff = config_diff.format_diff(config_diff.diff_files(str(ARM_DIR / f"{BASELINE}.py"),
                                                        str(arm_path(arm))))
  return Plan(arm=arm, family=resolved.model.family, objective=resolved.objective.name,
              parameters=models.parameter_count(exp.abstract_state.params),
              vocab_size=resolved.model.vocab_size, flops_per_step=per_step,
              steps=max(1, round(budget / per_step)), batch_size=resolved.data.batch_size,
              seq_len=resolved.data.seq_len, diff=tuple(diff))


def load_or_make_plan(out: epath.Path, arm: str, budget: float, tiny: bool,
                      workdir: epath.Path) -> Plan:
  """OUT/<arm>/plan.json, made on the first run; a later run refuses an arm whose config file
  (or the baseline) has changed since, as its finished runs would be reported for the new one."""
  config = ExperimentConfig.from_config_dict(pretrain_config_dict(arm, 0, tiny))
  path = out / arm / "plan.json"
  saved = read_json(path)
  if saved is None:
    plan = make_plan(arm, config, budget, workdir)
    write_json(path, {**dataclasses.asdict(plan), "config": config.to_dict()})
    return plan
  before = ExperimentConfig.from_config_dict(saved.pop("config"))
  changes = config_diff.format_diff(config_diff.diff(before, config))
  if changes:
    raise UserError(f"the config of arm {arm} changed since {out} ran it "
                    f"({'; '.join(changes)}); restore it, or pass another --out")
  return Plan(**{**saved, "diff": tuple(saved["diff"])})


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


def write_json(path: epath.Path, value: Any) -> None:
  """Written whole or not at all (paths.write_atomic): an interrupted write never looks
  finished."""
  paths.write_atomic(path, json.dumps(value, indent=2, sort_keys=True, default=float) + "\n")


def read_json(path: epath.Path) -> Any:
  return json.loads(path.read_text()) if path.exists() else None


def check_settings(out: epath.Path, settings: dict) -> None:
  """Refuses an OUT made with another budget, --tiny or fine-tuning settings: its finished
  runs would be skipped although they measure something else."""
  path = out / "ablation.json"
  saved = read_json(path)
  if saved is None:
    write_json(path, settings)
    return
  for key in ("budget_flops", "tiny", "finetune"):
    if saved.get(key) != settings[key]:
      raise UserError(f"{out} holds an ablation with other settings ({key}: "
                      f"{saved.get(key)!r} there, {settings[key]!r} now); rerun with the same "
                      "flags to continue it, or pass another --out")


def metrics_records(workdir: epath.Path) -> list[dict]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loss_curve(records: list[dict]) -> list[tuple[int, float]]:
  """(step, eval/loss) of a run, the last measurement of a step kept (a resumed run repeats
  the steps after its last checkpoint)."""
  curve = {r["step"]: r["eval/loss"] for r in records if "eval/loss" in r}
  return sorted(curve.items())


def mean_mfu(records: list[dict]) -> float | None:
  """Mean of the logged train/mfu, leaving out the first window: it holds the compilation."""
  values = [r["train/mfu"] for r in records if "train/mfu" in r][1:]
  return float(np.mean(values)) if values else None


def latest_checkpoint(workdir: epath.Path) -> int | None:
  """The last step checkpointed in a research.train workdir (an unfinished save's temporary
  folder is not a step), or None."""
  directory = workdir / "checkpoints"
  steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if (
      directory.is_dir()) else []
  return max(steps, default=None)


class Interrupted(Exception):
  """A run returned before its last step: research.train checkpoints and stops on SIGTERM."""


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
  """The progress line: which arm, seed and stage runs, and the time left, estimated from the
  stages finished so far (in this process or recorded by an earlier one)."""

  def __init__(self, todo: list[tuple[str, int, str]], known: dict[tuple[str, str], list[float]],
               workers: int = 1):
    self.todo = todo  # (arm, seed, stage) still to run, in order
    self.known = known  # (arm, stage) -> seconds of finished ones
    self.workers = workers  # stages running at once: the time left is shared among them
    self.started = time.perf_counter()
    self.done = 0

  def estimate(self, arm: str, stage: str) -> float | None:
    same = self.known.get((arm, stage))
    if same:
      return float(np.mean(same))
    kind = [s for (_, st), seconds in self.known.items() if st == stage for s in seconds]
    if kind:
      return float(np.mean(kind))
    every = [s for seconds in self.known.values() for s in seconds]
    return float(np.mean(every)) if every else None

  def time_left(self, remaining: list[tuple[str, int, str]]) -> str:
    estimates = [self.estimate(a, st) for a, _, st in remaining]
    if any(e is None for e in estimates):
      return "time left: known after the first stage"
    return f"about {format_seconds(sum(estimates) / self.workers)} left"

  def line(self, arm: str, seed: int, stage: str, detail: str) -> str:
    return (f"[ablation {self.done + 1}/{len(self.todo)}] {arm} seed {seed}: {stage} "
            f"({detail}); {format_seconds(time.perf_counter() - self.started)} elapsed, "
            f"{self.time_left(self.todo[self.done:])}")

  def finished_line(self, arm: str, seed: int, stage: str, seconds: float,
                    remaining: list[tuple[str, int, str]]) -> str:
    """After finished(): for stages run by workers, which report when a stage ends."""
    return (f"[ablation {self.done}/{len(self.todo)}] {arm} seed {seed}: {stage} done in "
            f"{format_seconds(seconds)}; {format_seconds(time.perf_counter() - self.started)} "
            f"elapsed, {self.time_left(remaining)}")

  def finished(self, arm: str, stage: str, seconds: float) -> None:
    self.known.setdefault((arm, stage), []).append(seconds)
    self.done += 1

  def skipped(self, count: int) -> None:
    self.done += count


def run_stage(config: ExperimentConfig, workdir: epath.Path) -> tuple[dict, float, bool]:
  """(final evaluation, seconds, whether it resumed) of one research.train run."""
  from research import train  # pylint: disable=import-outside-toplevel
  resumed = latest_checkpoint(workdir) is not None
  start = time.perf_counter()
  result = train.train_and_evaluate(config, str(workdir))
  seconds = time.perf_counter() - start
  reached = latest_checkpoint(workdir)
  if reached != config.train.steps:
    raise Interrupted(f"{workdir} stopped at step {reached} of {config.train.steps}")
  return result, seconds, resumed


def pretrain_record(plan: Plan, workdir: epath.Path, result: dict, seconds: float,
                    resumed: bool) -> dict:
  records = metrics_records(workdir)
  return {"stage": "pretrain", "steps": plan.steps, "flops_per_step": plan.flops_per_step,
          "training_flops": plan.training_flops, "tokens": plan.tokens,
          "eval_loss": result.get("eval/loss"), "eval_accuracy": result.get("eval/accuracy"),
          "curve": loss_curve(records), "mfu": mean_mfu(records), "wall_s": seconds,
          "resumed": resumed}


def finetune_record(task: str, config: ExperimentConfig, result: dict, seconds: float,
                    resumed: bool) -> dict:
  spec = FINETUNES[task]
  value = result.get(spec.metric)
  return {"stage": task, "metric": spec.metric,
          "value": None if value is None else spec.scale * float(value),
          "eval_loss": result.get("eval/loss"), "examples": result.get("eval/examples"),
          "steps": config.train.steps, "batch_size": config.data.batch_size, "wall_s": seconds,
          "resumed": resumed}


def run_arm_seed(arm: str, seed: int, plan: Plan, directory: epath.Path, tiny: bool,
                 progress: Progress, log, concurrent: int = 1) -> dict[str, dict]:
  """Every stage of one arm and seed, skipping those with a record; returns the records.
  `concurrent`: how many arm-seeds run at once (--workers), kept in each record because it
  makes the stage's wall time and MFU those of a shared machine."""
  records = {}
  for stage in stages_of(plan.family):
    path = directory / f"{stage}.json"
    records[stage] = read_json(path)
    if records[stage] is not None:
      continue
    workdir = directory / stage
    if stage == "pretrain":
      config = with_steps(pretrain_config_dict(arm, seed, tiny), plan.steps, tiny)
      log(progress.line(arm, seed, stage, f"{plan.steps} steps, {plan.training_flops:.2e} FLOPs"))
      result, seconds, resumed = run_stage(config, workdir)
      records[stage] = pretrain_record(plan, workdir, result, seconds, resumed)
    else:
      config = finetune_config(stage, plan.family, directory / "pretrain", seed, tiny)
      log(progress.line(arm, seed, stage, f"fine-tuning, {config.train.steps} steps"))
      result, seconds, resumed = run_stage(config, workdir)
      records[stage] = finetune_record(stage, config, result, seconds, resumed)
    records[stage]["concurrent"] = concurrent
    write_json(path, records[stage])
    progress.finished(arm, stage, seconds)
  return records


def run_ablation(out: epath.Path, arms: list[str], seeds: list[int], budget: float,
                 tiny: bool, log=print, workers: int = 1, worker_of: int = 0) -> dict[str, Any]:
  """Runs (or resumes, or skips) every stage of every arm and seed, seed by seed, then writes
  the report. Returns {"plans": {arm: Plan}, "results": {(arm, seed): record},
  "failed": [message, ...], "interrupted": whether a run was stopped (SIGTERM)}.

  workers > 1 runs that many arm-seeds at once, each in its own process (run_in_workers).
  worker_of = N > 0: this process is one of N such workers; it runs its stages and writes no
  report."""
  for arm in arms:
    arm_path(arm)  # every name checked before anything runs
  settings = {"budget_flops": budget, "tiny": tiny,
              "finetune": {t: {**f.settings, **(f.tiny if tiny else {})}
                           for t, f in FINETUNES.items()}}
  out.mkdir(parents=True, exist_ok=True)
  check_settings(out, settings)
  seed_dir = lambda arm, seed: out / arm / f"seed{seed}"
  plans = {arm: load_or_make_plan(out, arm, budget, tiny, seed_dir(arm, seeds[0]) / "pretrain")
           for arm in arms}
  todo, known = [], {}
  for seed in seeds:
    for arm in arms:
      for stage in stages_of(plans[arm].family):
        record = read_json(seed_dir(arm, seed) / f"{stage}.json")
        if record is None:
          todo.append((arm, seed, stage))
        else:
          known.setdefault((arm, stage), []).append(record["wall_s"])
  progress = Progress(todo, known, workers)
  failed, interrupted = [], False
  pending = [(arm, seed) for seed in seeds for arm in arms  # seed by seed: an interrupted
             if not (seed_dir(arm, seed) / "result.json").exists()]  # one has whole comparisons
  if workers > 1:
    failed, interrupted = run_in_workers(out, pending, plans, settings, workers, progress, log)
  else:
    try:
      for arm, seed in pending:
        directory = seed_dir(arm, seed)
        try:
          records = run_arm_seed(arm, seed, plans[arm], directory, tiny, progress, log,
                                 max(1, worker_of))
        except FloatingPointError as e:  # a diverged run: the other arms still run
          failed.append(f"{arm} seed {seed}: {e}")
          log(f"[ablation] {arm} seed {seed} failed: {e}")
          progress.skipped(sum(not (directory / f"{stage}.json").exists()
                               for stage in stages_of(plans[arm].family)))
          continue
        write_json(directory / "result.json", {"arm": arm, "seed": seed, **records})
    except Interrupted as e:
      interrupted = True
      log(f"[ablation] stopped: {e}; rerun the same command to continue from there")
  results = {(arm, seed): read_json(seed_dir(arm, seed) / "result.json")
             for seed in seeds for arm in arms}
  results = {key: record for key, record in results.items() if record is not None}
  if not worker_of:
    write_report(out, arms, seeds, plans, results, settings, failed)
  return {"plans": plans, "results": results, "failed": failed, "interrupted": interrupted}


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


def run_in_workers(out: epath.Path, pending: list[tuple[str, int]], plans: dict[str, Plan],
                   settings: dict, workers: int, progress: Progress,
                   log) -> tuple[list[str], bool]:
  """Runs the pending arm-seeds in `workers` processes at a time, one process per arm (its
  seeds in turn, so that the later ones load the first one's programs from the compilation
  cache): `python -m experiments.architecture_ablation --arms=ARM --seeds=... --worker_of=N`,
  its output in OUT/<arm>/log.txt. Logs each stage as its record appears. SIGTERM or Ctrl-C is
  passed on to the workers (research.train checkpoints and returns); the caller then writes
  the report. Returns (failed, interrupted)."""
  import signal  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  queue = list(dict.fromkeys(arm for arm, _ in pending))  # arms in order of first appearance
  seeds_of = {arm: [seed for a, seed in pending if a == arm] for arm in queue}
  running, failed, gone = {}, [], set()  # gone: arms whose worker failed
  # (arm, seed, stage) with a record: those of earlier runs, then as the workers write them.
  todo = set(progress.todo)
  seen = {(arm, seed, stage) for arm, seed in pending for stage in stages_of(plans[arm].family)
          if (arm, seed, stage) not in todo}
  stop = []

  def request_stop(signum, frame):
    del frame
    stop.append(signum)
    for process in running.values():
      process.send_signal(signal.SIGTERM)

  previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
  logs = WorkerLogs(out)
  try:
    while (queue and not stop) or running:
      while queue and not stop and len(running) < workers:
        arm = queue.pop(0)
        seeds = ",".join(map(str, seeds_of[arm]))
        command = [sys.executable, "-m", "experiments.architecture_ablation", f"--out={out}",
                   f"--arms={arm}", f"--seeds={seeds}",
                   f"--budget_flops={settings['budget_flops']!r}", f"--worker_of={workers}"]
        command += ["--tiny"] if settings["tiny"] else []
        with open(logs.local(arm), "a", encoding="utf-8") as log_file:
          running[arm] = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log_file,
                                          stderr=subprocess.STDOUT)
        log(f"[ablation] {arm} seeds {seeds}: started (output in {arm}/log.txt)")
      time.sleep(0.2)
      for arm, process in list(running.items()):
        for seed in seeds_of[arm]:
          for stage in stages_of(plans[arm].family):
            record = read_json(out / arm / f"seed{seed}" / f"{stage}.json")
            if (arm, seed, stage) in seen or record is None:
              continue
            seen.add((arm, seed, stage))
            progress.finished(arm, stage, record["wall_s"])
            remaining = [t for t in progress.todo if t not in seen and t[0] not in gone]
            log(progress.finished_line(arm, seed, stage, record["wall_s"], remaining))
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
          progress.skipped(sum((arm, seed, stage) not in seen for seed in seeds_of[arm]
                               for stage in stages_of(plans[arm].family)))
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    logs.close()
  if stop:
    log("[ablation] stopped; rerun the same command to continue from there")
  return failed, bool(stop)


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stat:
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

  def format(self, digits: int, unit: str = "") -> str:
    if not self.values:
      return "—"
    if self.sd is None:
      return f"{self.mean:.{digits}f}{unit}"
    return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}{unit}"


def collect(results: dict, arm: str, seeds: list[int], pick) -> Stat:
  values = []
  for seed in seeds:
    record = results.get((arm, seed))
    value = pick(record) if record is not None else None
    if value is not None and math.isfinite(value):
      values.append(float(value))
  return Stat(tuple(values))


def _task_value(task: str):
  return lambda record: (record.get(task) or {}).get("value")


def _wall(stages):
  def pick(record):
    times = [record[s]["wall_s"] for s in stages if record.get(s)]
    return sum(times) if times else None
  return pick


def summary(arms: list[str], seeds: list[int], plans: dict[str, Plan],
            results: dict) -> dict[str, dict[str, Any]]:
  """Per arm: the plan's figures and a Stat per measured quantity."""
  out = {}
  for arm in arms:
    plan = plans[arm]
    out[arm] = {
        "plan": plan,
        "pretrain_loss": collect(results, arm, seeds, lambda r: r["pretrain"]["eval_loss"]),
        "mfu": collect(results, arm, seeds, lambda r: r["pretrain"]["mfu"]),
        "pretrain_wall": collect(results, arm, seeds, _wall(["pretrain"])),
        "finetune_wall": collect(results, arm, seeds, _wall(TASKS)),
        **{task: collect(results, arm, seeds, _task_value(task)) for task in TASKS},
    }
  return out


def applicable(plan: Plan, task: str) -> bool:
  return plan.family in FINETUNES[task].families()


def conclusions(arms: list[str], stats: dict) -> list[str]:
  """Sentences drawn from the numbers: the winner of each task and how the order compares with
  T5's Table 2."""
  lines = []
  for task in TASKS:
    spec = FINETUNES[task]
    scored = [(stats[a][task].mean, a) for a in arms if stats[a][task].values]
    if not scored:
      lines.append(f"- {spec.label}: no results yet.")
      continue
    scored.sort(reverse=True)
    ranking = ", ".join(f"{a} ({stats[a][task].format(1 if spec.scale > 1 else 2)})"
                        for _, a in scored)
    best, runner = scored[0][1], scored[1][1] if len(scored) > 1 else None
    sentence = f"- {spec.label} ({spec.metric_label}): **{best}** is best; ranking: {ranking}."
    if runner is not None:
      gap = scored[0][0] - scored[1][0]
      spread = max(stats[best][task].sd or 0.0, stats[runner][task].sd or 0.0)
      if gap == 0:
        sentence += f" It is tied with {runner}."
      elif stats[best][task].sd is None:
        sentence += " One seed only: no spread to judge the gaps by."
      elif gap <= spread:
        sentence += (f" Its lead over {runner} ({gap:.2f}) is within the seed spread "
                     f"({spread:.2f}), so the two are not told apart.")
      else:
        sentence += f" Its lead over {runner} ({gap:.2f}) exceeds the seed spread ({spread:.2f})."
    kinds = {(stats[a]["plan"].family, stats[a]["plan"].objective): a for a in arms
             if stats[a][task].values}
    agree, disagree, ties = [], [], []
    for better, worse in T5_ORDER:
      if better in kinds and worse in kinds:
        a, b = kinds[better], kinds[worse]
        gap = stats[a][task].mean - stats[b][task].mean
        spread = max(stats[a][task].sd or 0.0, stats[b][task].sd or 0.0)
        noise = " (within the seed spread)" if abs(gap) <= spread else ""
        if gap > 0:
          agree.append(f"{a} > {b}{noise}")
        elif gap < 0:
          disagree.append(f"{b} > {a}{noise}")
        else:
          ties.append(f"{a} = {b}")
    tested = len(agree) + len(disagree) + len(ties)
    if tested:
      sentence += (f" Of the orderings T5's Table 2 shows on GLUE among these arms (the "
                   f"expectation for both tasks), {len(agree)} of {tested} hold here" +
                   (f" ({'; '.join(agree)})" if agree else "") +
                   (f"; reversed here: {'; '.join(disagree)}" if disagree else "") +
                   (f"; tied: {'; '.join(ties)}" if ties else "") + ".")
    lines.append(sentence)
  return lines


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return lines


def plot_losses(path: epath.Path, arms: list[str], seeds: list[int], plans: dict[str, Plan],
                results: dict) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  colors = plt.get_cmap("tab10")
  styles = ["-", "--", ":", "-."]
  for i, arm in enumerate(arms):
    for j, seed in enumerate(seeds):
      record = results.get((arm, seed))
      if record is None or not record["pretrain"]["curve"]:
        continue
      steps, losses = zip(*record["pretrain"]["curve"])
      ax.plot(np.asarray(steps) * plans[arm].flops_per_step, losses, styles[j % len(styles)],
              marker="o", markersize=3, color=colors(i % 10),
              label=f"{arm} ({plans[arm].objective})" if j == 0 else None)
  ax.set_xlabel("training FLOPs")
  ax.set_ylabel("validation loss per target token")
  ax.set_title("Pretraining: each arm's own objective (losses of different objectives\n"
               "are not comparable); one line per seed", fontsize=10)
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  fig.tight_layout()
  with paths.local_output(path) as local:
    fig.savefig(local, dpi=120)
  plt.close(fig)


def plot_downstream(path: epath.Path, arms: list[str], seeds: list[int], stats: dict) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, len(TASKS), figsize=(4.5 * len(TASKS) + 1, 4.2))
  colors = plt.get_cmap("tab10")
  x = np.arange(len(arms))
  for ax, task in zip(np.atleast_1d(axes), TASKS):
    spec = FINETUNES[task]
    for i, arm in enumerate(arms):
      stat = stats[arm][task]
      if not applicable(stats[arm]["plan"], task):
        ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=9)
        continue
      if not stat.values:
        continue
      ax.bar(i, stat.mean, color=colors(i % 10), yerr=stat.sd or 0.0, capsize=4, alpha=0.85)
      ax.plot([i] * stat.n, stat.values, "k.", markersize=5)
    ax.set_xlim(-0.6, len(arms) - 0.4)
    ax.set_ylim(bottom=0.0, top=max(ax.get_ylim()[1], 1.0))
    ax.set_xticks(x, arms, rotation=30, ha="right", fontsize=8)
    ax.set_title(f"{spec.label}: {spec.metric_label}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
  fig.suptitle(f"Downstream after compute-matched pretraining (mean ± sd over seeds "
               f"{', '.join(map(str, seeds))}; dots: seeds)", fontsize=10)
  fig.tight_layout()
  with paths.local_output(path) as local:
    fig.savefig(local, dpi=120)
  plt.close(fig)


def machine() -> str:
  import jax  # pylint: disable=import-outside-toplevel
  kinds = sorted({d.device_kind for d in jax.devices()})
  return (f"{os.cpu_count()} CPU cores, JAX {jax.__version__} on {len(jax.devices())} x "
          f"{', '.join(kinds)}")


def shared_machine_note(results: dict) -> str:
  """Says so when stages ran several at a time (--workers): their wall times and MFU then
  measure a shared machine, not the arm alone."""
  most = max((stage.get("concurrent", 1) for record in results.values()
              for stage in record.values() if isinstance(stage, dict)), default=1)
  if most <= 1:
    return ""
  return (f"; up to {most} arm-seeds ran at once (--workers), so wall times and MFU are "
          "those of a shared machine and do not compare arms")


def write_report(out: epath.Path, arms: list[str], seeds: list[int], plans: dict[str, Plan],
                 results: dict, settings: dict, failed: list[str] = ()) -> epath.Path:
  """OUT/report.md, the two plots and OUT/results.json from the records."""
  stats = summary(arms, seeds, plans, results)
  plot_losses(out / "loss_vs_flops.png", arms, seeds, plans, results)
  plot_downstream(out / "downstream.png", arms, seeds, stats)
  budget = settings["budget_flops"]
  shown_out = out
  if not paths.is_url(out) and pathlib.Path(out).is_relative_to(REPO_ROOT):
    shown_out = pathlib.Path(out).relative_to(REPO_ROOT)
  flags = f"--out={shown_out} --budget_flops={budget:g} --seeds={','.join(map(str, seeds))} " \
          f"--arms={','.join(arms)}" + (" --tiny" if settings["tiny"] else "")
  lines = [
      "# Architecture ablation: compute-matched pretraining, then fine-tuning",
      "",
      "T5 (Raffel et al. 2020), Section 3.2 and Table 2, in miniature: each arm is pretrained "
      "on character-level Tiny Shakespeare for the same training FLOPs, then fine-tuned with "
      "the same steps and batch on SST-2 and on Spanish->English translation.",
      "",
      f"    python -m experiments.architecture_ablation {flags}",
      "",
      f"- Budget: {budget:.3g} training FLOPs per pretraining run (research/flops.py: matmul "
      "FLOPs, 3x the forward pass); steps = round(budget / FLOPs per step), so an arm whose "
      "step is cheaper (the encoder-decoder with short span-corruption targets) takes more "
      "steps. The encoder-decoder LM pads both its prefix and its continuation to the full "
      "sequence length, so about half of its positions, and FLOPs, are padding.",
      "- Matched: parameters (about the same count in every arm, as T5's \"P\" arms) and "
      "training FLOPs; not matched: FLOPs per token (the encoder-decoder, with half the "
      "layers on each side, spends about half the decoder-only model's on each token, T5's "
      "\"M/2\").",
      f"- Seeds: {', '.join(map(str, seeds))} (each seed sets initialisation, objective noise "
      "and data order of pretraining and fine-tuning); figures are mean ± sample standard "
      "deviation over the seeds that finished.",
      "- Tokens seen: input tokens (batch x sequence length per step).",
      "- MFU: mean of train/mfu over the pretraining log (the first window, which holds "
      "compilation, left out), against the peak research/flops.py uses (on CPUs a matmul "
      "measured at start-up).",
      f"- Machine of the last run: {machine()}; wall times are those of the runs that "
      "finished each stage" + shared_machine_note(results) + ".",
      "",
      "## Results",
      "",
  ]
  header = ["arm", "architecture", "objective", "parameters", "training FLOPs", "steps",
            "tokens seen", "pretraining val loss (own objective)", "SST-2 dev acc (%)",
            "spa->eng BLEU",
            "wall min (pretrain / fine-tune)", "MFU (%)"]
  rows = []
  for arm in arms:
    plan, s = plans[arm], stats[arm]
    cells = []
    for task in TASKS:
      cells.append(s[task].format(1 if FINETUNES[task].scale > 1 else 2)
                   if applicable(plan, task) else "n/a")
    walls = (f"{Stat(tuple(v / 60 for v in s['pretrain_wall'].values)).format(1)} / "
             f"{Stat(tuple(v / 60 for v in s['finetune_wall'].values)).format(1)}")
    mfu = Stat(tuple(100 * v for v in s["mfu"].values)).format(2)
    rows.append([arm, plan.family, plan.objective, f"{plan.parameters:,}",
                 f"{plan.training_flops:.3g}", f"{plan.steps:,}", f"{plan.tokens:,}",
                 s["pretrain_loss"].format(3), *cells, walls, mfu])
  lines += markdown_table(header, rows)
  lines += ["", "![validation loss against training FLOPs](loss_vs_flops.png)", "",
            "![downstream metrics](downstream.png)", "", "## Conclusions", ""]
  lines += conclusions(arms, stats)
  lines += [
      "",
      "What T5 found (Table 2): the full encoder-decoder with the denoising objective is "
      "best on every task, and on GLUE the denoising objective beats the LM objective for "
      "every architecture. Among the rows these arms reproduce (P parameters), GLUE orders "
      "them: encoder-decoder with denoising first, the prefix LM and the encoder-decoder "
      "trained as an LM about a point apart, the decoder-only language model last by several "
      "points. Two differences: T5 trained every arm for the same steps, so its L/2 + L/2 "
      "encoder-decoder also used half the FLOPs (M/2), while here the FLOPs are matched and "
      "that arm takes more steps; and these models are "
      f"~{np.mean([plans[a].parameters for a in arms]) / 1e6:.2g}M parameters trained for "
      "minutes on one small corpus, with a character vocabulary that lacks most of Spanish's "
      "accented letters, so BLEU stays near 0-5 and gaps of a few accuracy points can be "
      "noise: read the seed spread first.",
      "",
      "Pretraining validation losses are per target token of each arm's own objective (span "
      "corruption predicts sentinels and ~15% of the characters, masked LM 15% of the "
      "characters seeing both sides, the LM objectives a continuation): they are not "
      "comparable across objectives, only along one arm's curve, or between arms with the "
      "same objective and family."]
  lines += ["", "## Per seed", ""]
  seed_rows = []
  for arm in arms:
    for seed in seeds:
      record = results.get((arm, seed))
      if record is None:
        seed_rows.append([arm, str(seed), "not run or unfinished", "", "", "", ""])
        continue
      cells = []
      for task in TASKS:
        value = (record.get(task) or {}).get("value")
        cells.append("n/a" if not applicable(plans[arm], task) else
                     "—" if value is None else f"{value:.2f}")
      wall = sum(record[s]["wall_s"] for s in stages_of(plans[arm].family))
      mfu = record["pretrain"]["mfu"]
      resumed = any(record[s].get("resumed") for s in stages_of(plans[arm].family))
      loss = record["pretrain"]["eval_loss"]
      seed_rows.append([arm, str(seed), "—" if loss is None else f"{loss:.4f}", *cells,
                        f"{wall / 60:.1f}" + (" (resumed: last part only)" if resumed else ""),
                        "—" if mfu is None else f"{100 * mfu:.2f}"])
  lines += markdown_table(["arm", "seed", "pretraining val loss", "SST-2 acc (%)",
                           "spa->eng BLEU", "wall min", "MFU (%)"], seed_rows)
  lines += ["", "## Arms: differences from experiments/ablation/baseline.py", "",
            "(`python -m research.config_diff experiments/ablation/baseline.py "
            "experiments/ablation/<arm>.py`; defaults resolved. The runner also sets "
            "train.steps from the budget, the seed, and when to evaluate and checkpoint" +
            ("; --tiny shrinks every arm alike" if settings["tiny"] else "") + ".)", ""]
  for arm in arms:
    plan = plans[arm]
    row = T5_NAMES.get((plan.family, plan.objective), "not in T5's Table 2")
    lines += [f"- **{arm}** (T5: {row}): " + ("no difference (the baseline)" if not plan.diff
                                              else "; ".join(f"`{d}`" for d in plan.diff))]
  lines += ["", "## Fine-tuning", "",
            "Every arm: init_from its pretraining workdir (architecture and character "
            "vocabulary), a new optimizer, the settings below over configs/sst2_{bert,gpt,t5}.py "
            "and configs/spa_eng_{gpt,t5}.py (by family: encoder = classifier on the first "
            "token, decoder = classifier on the EOS / prompt and continuation, encoder-decoder "
            "= text to text: it writes the label word, and any other text counts as wrong, as in "
            "T5). The SST-2 dev split holds 444 positive and 428 negative sentences: always "
            "answering positive scores 50.9%.", ""]
  for task, values in settings["finetune"].items():
    lines.append(f"- {FINETUNES[task].label}: " +
                 ", ".join(f"{k}={v!r}" for k, v in sorted(values.items())))
  if failed:
    lines += ["", "## Failed runs (rerun the command to retry)", ""] + [f"- {f}" for f in failed]
  report = out / "report.md"
  report.write_text("\n".join(lines) + "\n")
  write_json(out / "results.json", {
      "settings": settings, "seeds": seeds,
      "arms": {arm: {"plan": dataclasses.asdict(plans[arm]),
                     **{k: {"mean": v.mean, "sd": v.sd, "values": list(v.values)}
                        for k, v in stats[arm].items() if isinstance(v, Stat)}}
               for arm in arms}})
  return report


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def enable_compilation_cache(directory: epath.Path) -> None:
  """JAX's persistent compilation cache: the seeds of an arm compile the same programs (the
  seed enters them as an argument), and a rerun or resume compiles nothing it compiled before;
  on the 2-core CPU a tiny arm's second seed then takes ~5 s instead of ~35 s."""
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_compilation_cache_dir", str(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def parse_seeds(values: list[str]) -> list[int]:
  try:
    seeds = [int(v) for v in values]
  except ValueError:
    raise UserError(f"--seeds must be integers separated by commas, got {','.join(values)}") \
        from None
  if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise UserError(f"--seeds needs distinct non-negative integers, got {values}")
  return seeds


def main(argv) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from research import train  # pylint: disable=import-outside-toplevel
  train.quiet_logs()
  train.reject_positional_args(argv)
  f = flags.FLAGS

  def body():
    if f.tiny and TINY_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
      # before JAX starts its backend, which reads XLA_FLAGS once
      os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TINY_XLA_FLAGS}".strip()
    if not f.out:
      raise UserError("--out=DIR is required (where the runs and the report go)")
    budget = f.budget_flops or (TINY_BUDGET if f.tiny else DEFAULT_BUDGET)
    if not budget > 0 or not math.isfinite(budget):
      raise ConfigError(f"--budget_flops must be a positive number of FLOPs, got {budget}")
    arms = list(f.arms)
    if not arms or len(set(arms)) != len(arms):
      raise UserError(f"--arms needs distinct arm names, got {arms}")
    workers = f.workers or (TINY_WORKERS if f.tiny else 1)
    if workers < 1:
      raise UserError(f"--workers must be a positive number of processes, got {f.workers}")
    if workers > 1:  # this process and its workers (who inherit it) share any accelerator:
      os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # none may take most of its memory
    out = paths.workdir_path(f.out)
    paths.check_bucket(out)  # a missing or refused bucket: one line, before any work
    enable_compilation_cache(out / "jax_cache")
    start = time.perf_counter()
    log = lambda line: print(line, file=sys.stderr, flush=True)
    if f.worker_of:  # one of run_in_workers' processes
      outcome = run_ablation(out, arms, parse_seeds(f.seeds), budget, f.tiny, log,
                             worker_of=f.worker_of)
      if outcome["failed"]:
        raise UserError("; ".join(outcome["failed"]))
      return
    outcome = run_ablation(out, arms, parse_seeds(f.seeds), budget, f.tiny, log, workers)
    print(f"report: {epath.Path(f.out) / 'report.md'} ({len(outcome['results'])} arm-seed "
          f"results, {format_seconds(time.perf_counter() - start)})")
    if outcome["failed"]:
      raise UserError(f"{len(outcome['failed'])} run(s) failed (listed in the report); rerun "
                      "the command to retry them")

  train.run_cli(body)


def define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("out", None, "Directory for the runs, records and the report.")
  flags.DEFINE_float("budget_flops", 0.0, f"Training FLOPs of each pretraining run (0: "
                     f"{DEFAULT_BUDGET:g}, or {TINY_BUDGET:g} with --tiny).")
  flags.DEFINE_list("seeds", ["0", "1"], "Seeds; each arm runs once per seed.")
  flags.DEFINE_list("arms", list(DEFAULT_ARMS), "Arms: files of experiments/ablation/.")
  flags.DEFINE_bool("tiny", False, "Tiny models and a few steps each (tests, a quick look).")
  flags.DEFINE_integer("workers", 0, f"Arm-seeds run at once, each in its own process (0: "
                       f"{TINY_WORKERS} with --tiny, else 1, so that wall times and MFU in the "
                       "report are measured on an otherwise idle machine).")
  flags.DEFINE_integer("worker_of", 0, "Internal: set by --workers for the processes it starts.")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from research import train as _train  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main, flags_parser=_train.parse_flags)
