"""Compute-matched architecture ablation: T5's Table 2 (Raffel et al. 2020, Sec. 3.2) in miniature.

  python -m experiments.architecture_ablation --out=runs/ablation [--budgets=3e11,1e12,3e12] \
      [--seeds=0,1,2] [--lr_sweep=0.5,1,2] [--seeds_per_program=1] [--workers=1] \
      [--arms=encdec_span,encdec_lm,decoder_prefix_lm,decoder_lm,encoder_mlm]
  python -m experiments.architecture_ablation --out=/tmp/ablation_tiny --tiny

Each arm is a config in experiments/ablation/ that states only its difference from
experiments/ablation/baseline.py. Every arm pretrains on one corpus with one vocabulary: the
training splits of the bundled corpora and a shared 4096-piece SentencePiece vocabulary
(experiments/ablation_corpus.py), built once in OUT/corpus (~70 s the first time) and copied
into every pretraining workdir before it is used (--tiny keeps the configs' character-level Tiny
Shakespeare: the vocabulary alone would take most of its time). For every arm:
  1. a learning-rate sweep at the SMALLEST budget: one pretraining per --lr_sweep multiplier of
     the arm's optimizer.learning_rate (the whole schedule scaled, its end rate too), with the
     first seed; the rate of the lowest final validation loss is carried to every budget
     (OUT/<arm>/lr.json). One seed, because the sweep multiplies the cheapest budget's cost by
     the number of rates while its seeds would multiply it again, and with one seed the rates
     are compared paired (same initialisation and data order). The chosen rate's sweep run is
     also that seed's run at the smallest budget (the same config and seed), so the choice
     favours that one run's pretraining loss a little; downstream scores are not selected on;
  2. at every budget and seed: pretraining on that corpus for that many training FLOPs:
     train.steps = round(budget / research.flops.training_flops_per_step(arm)),
     so an arm whose step is cheaper takes more steps; the training loss is logged along the
     way and the validation loss measured at the end (with_steps); then its yardsticks
     (Hooks.yardsticks; not with --tiny; of the sweep's runs, only the chosen one's): the
     SST-2 linear-probe accuracy of its frozen features, and bits per character of the
     corpus's validation text for the arms that predict left to right
     (experiments/ablation_yardsticks.py);
  3. at the largest budget, fine-tuning from that workdir (config.init_from: its architecture
     and the shared vocabulary) on SST-2 (dev accuracy, 600 steps) and on Spanish -> English
     (sacrebleu BLEU of greedy decoding on the test split, 800 steps), with the same steps,
     batch, lengths and learning rate for every arm (ablation_spec.FINETUNE_STEPS: what it
     took to leave chance); an encoder-only model cannot generate, so it has no translation
     score (n/a, as T5 leaves cells empty). The smaller budgets are not fine-tuned (it would
     triple the run); their downstream measure is the linear probe of step 2.
Then OUT/report.md (sweep, results per budget, trends against FLOPs, paired differences with
bootstrap intervals, T5's orderings point by point: experiments/ablation_writeup.py), its plots
(experiments/ablation_plots.py) and OUT/results.json.

Paired seeds: seed k sets the initialisation, the objective's noise and the data order. The
pretraining order of windows is a function of the seed, the corpus length, data.seq_len and
data.batch_size only (research/data/pipeline.py shuffles window offsets), which every arm
shares; arms differ in token ids (the objective's special tokens come first in the
vocabulary) but not in text. So seed k of every arm reads the same text in the same order
(a longer prefix of it at a larger budget), and fine-tunes with seed k too: differences
between arms are taken per seed (experiments/ablation_stats.py). The runner checks it: each
plan records a digest of seed 0's first pretraining batches decoded to text, and the report
says whether all arms agree.

Layout (experiments/ablation_spec.py): OUT/<arm>/<budget>/seed<k>/{pretrain,sst2,spa_eng}/ are
research.train workdirs (<budget> as flops1e12), the sweep's are OUT/<arm>/<smallest
budget>/lr<rate>/pretrain/; a stage's record <stage>.json beside its workdir is written when it
has finished and been evaluated, and OUT/<arm>/<budget>/seed<k>/result.json when all of that
arm-seed's stages have. Running the command again skips what has a record, resumes interrupted
workdirs from their last checkpoint (as train_and_evaluate does), and rewrites the report;
adding seeds, arms or larger budgets adds runs. A run stopped by SIGTERM (research.train
checkpoints and returns) ends the ablation until the next rerun. Another smallest budget,
--lr_sweep, --tiny or a changed arm config on the same OUT is refused. A progress line before
every stage names it and estimates the time left from the stages finished so far. JAX's
persistent compilation cache lives in OUT/jax_cache.

Every run (a stage's config and workdir) goes through experiments/executor.py, which claims it
(two drivers on one OUT never train one workdir twice), trains or resumes it, and leaves its
output in <workdir>.log and its outcome in <workdir>.run.json. --executor=local (the default)
runs them on this machine: --workers=N > 1 in N worker processes, the arms side by side (their
stages one after another, so that later seeds load the first one's compiled programs from the
cache); one worker runs them in this process. --executor=ray runs each as a Ray task on a
cluster (--ray_address or RAY_ADDRESS; --run_resources says what a run asks for; docs/ray.md),
all arms at once, retried on another node when its node dies and resumed from its checkpoint
(--checkpoint_every sets how often a run saves one). One line reports each run that ends
(done / running / failed of all, the time left, its last loss); every 30 s the running runs'
losses and logs; --dry_run lists the stages and resources without running anything. Ctrl-C
stops the runs (each saves a checkpoint), writes the report of what finished and exits 130.
The default is one worker, so that the report's wall times and MFU are measured on an
otherwise idle machine; --tiny, whose stages are compile-bound, defaults to TINY_WORKERS, and
the report says when stages shared the machine.

--seeds_per_program=K > 1 trains the seeds of an arm and budget K at a time as one compiled
program (research/multiseed.py: the same runs, stacked along a seed axis); the sweep's rates,
which differ in more than the seed, and a group that diverged run one by one. A seed's wall_s
is then its share of its program's time. On the 2-core CPU it gains nothing (0.92-0.93x of
one-by-one at K=4, benchmarks/multiseed.py); it is meant for an accelerator that a model this
small leaves mostly idle.

Extension points: Hooks.pretrain runs a batch of pretraining jobs (all seeds of an arm and
budget, or the sweep's rates); `pretrain_each` runs them one by one, `pretrain_together(K)`
(--seeds_per_program) K seeds a program. Hooks.yardsticks returns extra numbers measured on a
finished pretraining workdir (`measure_yardsticks`: linear probe, bits per character); they are
kept in the pretraining record under "yardsticks" and the report tabulates and compares them
when present.

Runtimes. The default (5 arms, 3 budgets x 3 seeds, 3 rates, yardsticks, fine-tuning at the
largest budget: 82 stages) took 1h20m on the 2 idle cores of an Intel Xeon (family 6 model 207,
AVX-512, no AMX), 2026-12-03 (experiments/ablation_report/): pretraining ~17 s, ~29 s and ~61 s
a run at 3e11, 1e12 and 3e12 FLOPs, SST-2 fine-tuning ~45-60 s, translation ~164 s (decoder) or
~90 s (encoder-decoder), yardsticks ~10 s after each pretraining.
--tiny (2 budgets x 2 seeds, one rate, fine-tuning at the larger budget only, characters, no
yardsticks: 38 stages, TINY_WORKERS workers): 1m40s on the same 2 idle cores; a tiny stage
costs seconds of tracing whatever its size, so --tiny's time follows its number of stages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import sys
import threading
import time
from typing import Any, Callable

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
import ml_collections
import numpy as np
from etils import epath

from experiments import ablation_corpus, ablation_writeup
from experiments import executor as executor_lib
from experiments.ablation_pool import Progress, format_seconds
from experiments.ablation_spec import (FINETUNES, T5_NAMES, T5_ORDER, TASKS, Plan, Results,
                                       budget_tag, lr_tag, seed_dir, stages_of, sweep_dir)
from research import config_diff, paths
from research.config import ConfigError, ExperimentConfig, UserError, load_config_file
from research.paths import REPO_ROOT
# pylint: enable=wrong-import-position

__all__ = ["FINETUNES", "T5_NAMES", "T5_ORDER", "TASKS", "Plan"]  # re-exported for readers

ARM_DIR = pathlib.Path(__file__).resolve().with_name("ablation")
BASELINE = "baseline"
DEFAULT_ARMS = ("encdec_span", "encdec_lm", "decoder_prefix_lm", "decoder_lm", "encoder_mlm")
# Training FLOPs per pretraining run: 10x from the smallest to the largest (the largest is
# ~680 steps of 4 sequences in the decoder-only arms, ~1,480 in the encoder-decoder ones).
# Sized to the 90-minute goal from measured stages (Intel Xeon, AVX-512, 2 idle cores): 3e12
# FLOPs of pretraining take ~70 s (decoder) to ~90 s (encoder-decoder) at batch 4, and 1e13
# ~3.5x that, so 1e12/3e12/1e13 alone would take ~80 min of the 90.
DEFAULT_BUDGETS = (3e11, 1e12, 3e12)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_LR_SWEEP = (0.5, 1.0, 2.0)  # multipliers of each arm's optimizer.learning_rate
TINY_BUDGETS = (2.5e8, 5e8)  # a handful of steps of the tiny models
TINY_SEEDS = (0, 1)
# One rate: each rate compiles the arm's training step anew (the rate is a constant in the
# program), and with two --tiny took 1.7x the CPU time of its single-budget predecessor, past
# its two minutes. The choice among rates is tested without training (tests/test_ablation.py).
TINY_LR_SWEEP = (2.0,)
# (every run, --tiny too, fine-tunes at its largest budget only: Ablation.tasks_at)
CORPUS_DIR = "corpus"  # OUT/corpus: experiments/ablation_corpus.py's corpus and vocabulary
# What the arms pretrain on (ablation.json: an OUT of the other is refused).
CORPUS_DATA = (f"ablation corpus (experiments/ablation_corpus.py), shared "
               f"{ablation_corpus.VOCAB_SIZE}-piece SentencePiece vocabulary")
TINY_DATA = "tiny_shakespeare, characters"

# --tiny: the arms shrunk alike (half the layers; width and MLP / 4, so the parameter matching
# of baseline.py still holds: its MLP is narrower by exactly the width), short sequences.
# A constant rate: a schedule that decays over train.steps is compiled into the training step,
# so each budget would compile its own; at a constant rate the budgets share one program.
TINY_PRETRAIN = {"model.embed_dim": 32, "model.num_heads": 2, "data.seq_len": 32,
                 "data.batch_size": 8, "train.eval_batches": 2, "train.eval_batch_size": 8,
                 "train.log_every": 1, "optimizer.warmup_steps": 1,
                 "optimizer.schedule": "constant"}
TINY_MLP_DIVISOR = 4
# Tiny runs are compile-bound: without LLVM's optimisations a tiny stage compiles ~2.5x faster
# (measured on the 2-core CPU); the default runs keep them, their steps dominate.
TINY_XLA_FLAGS = "--xla_backend_optimization_level=0"
# --tiny's stages are mostly tracing and compilation, which leave a core idle much of the time:
# on the 2-core CPU, one worker took 2m19s, two 1m48s and three 1m33s-1m40s (idle cores, the
# single-budget predecessor); five were no faster than three. Tiny models leave an
# accelerator's memory room for three.
TINY_WORKERS = 3


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


def pretrain_config_dict(arm: str, seed: int, tiny: bool, learning_rate: float | None = None,
                         corpus: epath.Path | None = None) -> ml_collections.ConfigDict:
  """The arm's config with the seed (initialisation, objective noise and data order) applied,
  shrunk with --tiny, its learning-rate schedule scaled to peak at `learning_rate` (None: the
  config's), pretraining on the ablation corpus built in `corpus` (None: the config's own data,
  as --tiny does); train.steps is set later from the budget."""
  config = load_config_file(str(arm_path(arm)))
  if corpus is not None:
    _set(config, ablation_corpus.pretrain_overrides(corpus))
  if learning_rate is not None:
    scale = learning_rate / config.optimizer.learning_rate
    config.optimizer.learning_rate = learning_rate
    config.optimizer.end_learning_rate *= scale
  if tiny:  # half the layers (4 -> 2, 2 + 2 -> 1 + 1): compilation dominates tiny runs
    config.model.num_layers = max(1, config.model.num_layers // 2)
    config.model.num_decoder_layers = max(0, config.model.num_decoder_layers // 2)
    config.model.mlp_dim //= TINY_MLP_DIVISOR
    _set(config, TINY_PRETRAIN)
  _set(config, {"train.seed": seed, "data.shuffle_seed": seed})
  return config


def with_steps(config: ml_collections.ConfigDict, steps: int,
               checkpoint_every: int = 0) -> ExperimentConfig:
  # Warm-up at most a tenth of the run: at the smallest budget an arm takes ~17 steps, and the
  # baseline's 100 warm-up steps would keep it from ever reaching its peak learning rate (the
  # rate the sweep is choosing).
  warmup = min(config.optimizer.warmup_steps, max(1, steps // 10))
  # One validation measurement and one checkpoint, at the last step (research.train always
  # makes both there): five of each along the way took 30 of the 45 s of a 17-step run at the
  # smallest budget (a pass over the validation text costs ~16 training steps). The curve in
  # the report is the training loss, logged every train.log_every steps for free. A stopped
  # run restarts its stage (at most ~1 min of the default's). On a cluster whose nodes may die,
  # --checkpoint_every=N saves every N steps too, so that a retried run resumes nearer its end.
  every = min(checkpoint_every, steps) if checkpoint_every > 0 else steps
  _set(config, {"train.steps": steps, "train.eval_every": 0, "optimizer.warmup_steps": warmup,
                "train.checkpoint_every": every, "train.keep_checkpoints": 1,
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



def sweep_rates(plan: Plan, multipliers: list[float]) -> list[float]:
  return [m * plan.learning_rate for m in multipliers]


# ---------------------------------------------------------------------------------------------
# Plans: what a budget means for each arm
# ---------------------------------------------------------------------------------------------


def data_order(exp, batches: int = 2) -> str:
  """A digest of the first training batches decoded to text: equal for two arms when they read
  the same text in the same order, whatever their vocabularies."""
  digest = hashlib.sha256()
  iterator = iter(exp.data.train)
  for _ in range(batches):
    for row in next(iterator)["inputs"]:  # (b, T)
      digest.update(exp.data.tokenizer.decode(row).encode() + b"\0")
  return digest.hexdigest()[:16]


def make_plan(arm: str, config: ExperimentConfig, workdir: epath.Path) -> Plan:
  """Resolves the arm's vocabulary (building its tokenizer in `workdir`, where training finds
  it again), counts its parameters and training FLOPs per step, and digests its data order."""
  from research import flops as flops_lib  # pylint: disable=import-outside-toplevel
  from research import models, train  # pylint: disable=import-outside-toplevel
  exp = train.build_experiment(config, workdir)
  resolved = exp.config
  diff = config_diff.format_diff(config_diff.diff_files(str(ARM_DIR / f"{BASELINE}.py"),
                                                        str(arm_path(arm))))
  return Plan(arm=arm, family=resolved.model.family, objective=resolved.objective.name,
              parameters=models.parameter_count(exp.abstract_state.params),
              vocab_size=resolved.model.vocab_size,
              flops_per_step=flops_lib.training_flops_per_step(resolved),
              batch_size=resolved.data.batch_size, seq_len=resolved.data.seq_len,
              learning_rate=resolved.optimizer.learning_rate, diff=tuple(diff),
              data_order=data_order(exp))


def load_or_make_plan(out: epath.Path, arm: str, tiny: bool, workdir: epath.Path,
                      corpus: epath.Path | None = None) -> Plan:
  """OUT/<arm>/plan.json, made on the first run; a later run refuses an arm whose config file
  (or the baseline) has changed since, as its finished runs would be reported for the new one."""
  config = ExperimentConfig.from_config_dict(pretrain_config_dict(arm, 0, tiny, corpus=corpus))
  path = out / arm / "plan.json"
  saved = read_json(path)
  if saved is None:
    if corpus is not None:  # the shared vocabulary, not one research.train would train here
      ablation_corpus.install_tokenizer(corpus, workdir)
    plan = make_plan(arm, config, workdir)
    write_json(path, {**dataclasses.asdict(plan), "config": config.to_dict()})
    return plan
  recorded = saved.pop("config")
  if corpus is not None and epath.Path(recorded["data"]["files"]).name == corpus.name:
    recorded["data"]["files"] = config.data.files  # OUT was moved, its corpus with it
  before = ExperimentConfig.from_config_dict(recorded)
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


SETTINGS_CHECKED = ("sweep_budget", "lr_sweep", "tiny", "finetune", "pretrain_data")


def check_settings(out: epath.Path, settings: dict) -> None:
  """Refuses an OUT made with another smallest budget, learning-rate sweep, --tiny or
  fine-tuning settings: its finished runs would be skipped although they measure something
  else. (Larger budgets, seeds and arms may be added.)"""
  path = out / "ablation.json"
  saved = read_json(path)
  if saved is None:
    write_json(path, settings)
    return
  for key in SETTINGS_CHECKED:
    if saved.get(key) != settings[key]:
      raise UserError(f"{out} holds an ablation with other settings ({key}: "
                      f"{saved.get(key)!r} there, {settings[key]!r} now); rerun with the same "
                      "flags to continue it, or pass another --out")


def metrics_records(workdir: epath.Path) -> list[dict]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loss_curve(records: list[dict], key: str = "train/loss") -> list[tuple[int, float]]:
  """(step, `key`) of a run, the last measurement of a step kept (a resumed run repeats the
  steps after its last checkpoint)."""
  curve = {r["step"]: r[key] for r in records if key in r}
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


class StageFailed(Exception):
  """A run the executor reported failed (a config error, a crash): not recorded, so that a rerun
  tries it again; the other arms and seeds go on."""


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StageRun:
  """What one research.train run gave: its final evaluation, seconds, whether it resumed."""

  result: dict
  seconds: float
  resumed: bool


@dataclasses.dataclass(frozen=True, eq=False)  # each job is itself (a key of records)
class PretrainJob:
  """One pretraining run to make: `config` has its seed, rate and steps set."""

  arm: str
  budget: float
  seed: int
  learning_rate: float
  config: ExperimentConfig
  workdir: epath.Path
  where: str  # in progress lines: "flops1e12 seed0", "flops1e12 lr0.002"


def run_stage(config: ExperimentConfig, workdir: epath.Path) -> StageRun:
  """One research.train run to its last step (Interrupted if it stopped before)."""
  from research import train  # pylint: disable=import-outside-toplevel
  resumed = latest_checkpoint(workdir) is not None
  start = time.perf_counter()
  result = train.train_and_evaluate(config, str(workdir))
  seconds = time.perf_counter() - start
  reached = latest_checkpoint(workdir)
  if reached != config.train.steps:
    raise Interrupted(f"{workdir} stopped at step {reached} of {config.train.steps}")
  return StageRun(result, seconds, resumed)


def stage_run(outcome: executor_lib.Outcome, run: executor_lib.Run) -> StageRun:
  """The StageRun of a finished run; FloatingPointError (diverged), Interrupted (stopped after
  its checkpoint) or StageFailed (a config error or a crash, with its log) otherwise."""
  if outcome.ok:
    return StageRun(outcome.result, outcome.seconds, outcome.resumed)
  if outcome.status == "diverged":
    raise FloatingPointError(outcome.error)
  if outcome.status == "interrupted":
    raise Interrupted(f"{run.name} stopped after its checkpoint")
  raise StageFailed(f"{outcome.status.replace('_', ' ')}: {outcome.error} (log: {run.log})")


def pretrain_each(jobs: list[PretrainJob], start: Callable[[PretrainJob], None],
                  done: Callable[[PretrainJob, StageRun | FloatingPointError], None]) -> None:
  """The default Hooks.pretrain: the jobs one after another. A replacement (several seeds in
  one compiled program) calls start(job) before and done(job, run) after each job's run, and
  passes a diverged run's FloatingPointError to done instead of raising it."""
  for job in jobs:
    start(job)
    try:
      run = run_stage(job.config, job.workdir)
    except FloatingPointError as e:
      run = e
    done(job, run)


def no_yardsticks(job: PretrainJob) -> dict[str, Any]:
  """The default Hooks.yardsticks: none. A replacement returns {name: number} (read as higher
  is better) or {name: {"value": number, "higher_is_better": bool}} measured on job.workdir."""
  del job
  return {}


def seed_groups(jobs: list[PretrainJob], per_program: int) -> list[list[PretrainJob]]:
  """The jobs in groups that one multiseed program can train: jobs of one arm, budget and rate
  (so differing only in their seed), at most `per_program` to a group, in the jobs' order. The
  sweep's jobs differ in their rate, so each is a group of one."""
  groups: dict[tuple, list[PretrainJob]] = {}
  for job in jobs:
    groups.setdefault((job.arm, job.budget, job.learning_rate), []).append(job)
  return [group[i:i + per_program] for group in groups.values()
          for i in range(0, len(group), per_program)]


def run_seeds_together(jobs: list[PretrainJob]) -> list[StageRun]:
  """Trains the jobs (seeds of one config) as one research.multiseed program; each run's
  seconds are its share of the program's (the sum is the time taken)."""
  from research import multiseed  # pylint: disable=import-outside-toplevel
  config, seeds = multiseed.split_seeds([job.config for job in jobs])
  resumed = [latest_checkpoint(job.workdir) is not None for job in jobs]
  start = time.perf_counter()
  results = multiseed.train_and_evaluate(config, seeds, [job.workdir for job in jobs])
  seconds = (time.perf_counter() - start) / len(jobs)
  for job in jobs:
    reached = latest_checkpoint(job.workdir)
    if reached != config.train.steps:
      raise Interrupted(f"{job.workdir} stopped at step {reached} of {config.train.steps}")
  return [StageRun(result, seconds, r) for result, r in zip(results, resumed)]


def pretrain_together(per_program: int) -> Callable:
  """A Hooks.pretrain that trains up to `per_program` seeds of an arm and budget in one
  compiled program (research/multiseed.py); a group of one, or a group that diverged (which
  seed is unknown) or that the program refuses, runs one by one with `pretrain_each` (a
  diverged group resumes there from its last shared checkpoint)."""
  def pretrain(jobs, start, done) -> None:
    for group in seed_groups(jobs, per_program):
      if len(group) == 1:
        pretrain_each(group, start, done)
        continue
      for job in group:
        start(job)
      try:
        runs = run_seeds_together(group)
      except (FloatingPointError, ConfigError) as e:
        print(f"[ablation] {group[0].arm} {budget_tag(group[0].budget)}: {len(group)} seeds in "
              f"one program failed ({e}); running them one by one", file=sys.stderr, flush=True)
        pretrain_each(group, lambda job: None, done)
        continue
      for job, run in zip(group, runs):
        done(job, run)

  return pretrain


# Training sentences of SST-2 the linear probe fits on: as many as linear_probe's default.
PROBE_EXAMPLES = 8192


def measure_yardsticks(job: PretrainJob) -> dict[str, Any]:
  """The Hooks.yardsticks of the default runs (experiments/ablation_yardsticks.py): the frozen
  features' SST-2 linear-probe accuracy for every arm, and bits per character of the corpus's
  validation text for the arms that predict text left to right (~10 s each on 2 idle CPU cores)."""
  from experiments import ablation_yardsticks  # pylint: disable=import-outside-toplevel
  probe = ablation_yardsticks.linear_probe(str(job.workdir), train_examples=PROBE_EXAMPLES)
  values: dict[str, Any] = {"linear probe accuracy (%)": 100.0 * probe["accuracy"]}
  if (job.config.model.family, job.config.objective.name) in ablation_yardsticks.LEFT_TO_RIGHT:
    bits = ablation_yardsticks.bits_per_char(str(job.workdir))["bits_per_char"]
    values["bits per character"] = {"value": bits, "higher_is_better": False}
  return values


@dataclasses.dataclass(frozen=True)
class Hooks:
  """Where other pretraining runners and measurements plug in (see the module docstring)."""

  pretrain: Callable = pretrain_each
  yardsticks: Callable = no_yardsticks


def default_hooks(tiny: bool, seeds_per_program: int) -> Hooks:
  """The runner's hooks: K seeds a program with --seeds_per_program=K > 1, and the yardsticks
  except with --tiny (they would double its time; tests/test_ablation.py tests them alone)."""
  return Hooks(pretrain=pretrain_together(seeds_per_program) if seeds_per_program > 1 else
               pretrain_each, yardsticks=no_yardsticks if tiny else measure_yardsticks)


def pretrain_record(out: epath.Path, plan: Plan, job: PretrainJob, run: StageRun,
                    yardsticks: dict) -> dict:
  records = metrics_records(job.workdir)
  return {"stage": "pretrain", "budget": job.budget, "seed": job.seed,
          "learning_rate": job.learning_rate, "steps": job.config.train.steps,
          "flops_per_step": plan.flops_per_step,
          "training_flops": job.config.train.steps * plan.flops_per_step,
          "tokens": plan.tokens(job.budget), "eval_loss": run.result.get("eval/loss"),
          "eval_accuracy": run.result.get("eval/accuracy"), "curve": loss_curve(records),
          "mfu": mean_mfu(records), "wall_s": run.seconds, "resumed": run.resumed,
          "workdir": str(relative(out, job.workdir)), "yardsticks": yardsticks}


def diverged_record(job: PretrainJob, error: FloatingPointError) -> dict:
  return {"stage": "pretrain", "budget": job.budget, "seed": job.seed,
          "learning_rate": job.learning_rate, "eval_loss": None, "diverged": str(error),
          "curve": [], "wall_s": 0.0, "yardsticks": {}}


def finetune_record(task: str, config: ExperimentConfig, run: StageRun) -> dict:
  spec = FINETUNES[task]
  value = run.result.get(spec.metric)
  return {"stage": task, "metric": spec.metric,
          "value": None if value is None else spec.scale * float(value),
          "eval_loss": run.result.get("eval/loss"), "examples": run.result.get("eval/examples"),
          "steps": config.train.steps, "batch_size": config.data.batch_size,
          "wall_s": run.seconds, "resumed": run.resumed}


def relative(out: epath.Path, path: epath.Path) -> str:
  return os.path.relpath(os.fspath(path), os.fspath(out)) if not paths.is_url(out) else (
      os.fspath(path)[len(os.fspath(out)):].lstrip("/"))


def choose_rate(records: dict[float, dict]) -> float | None:
  """The rate of the lowest finite final validation loss, or None if none has one."""
  finite = {rate: r["eval_loss"] for rate, r in records.items()
            if r.get("eval_loss") is not None and math.isfinite(r["eval_loss"])}
  return min(finite, key=finite.get) if finite else None


# ---------------------------------------------------------------------------------------------
# Running: the grid of (arm, budget, seed) and the sweep
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Ablation:
  """The run being made: its grid, where it goes, and what plugs in."""

  out: epath.Path
  arms: list[str]
  budgets: list[float]  # ascending
  seeds: list[int]
  lr_sweep: list[float]  # multipliers
  tiny: bool
  plans: dict[str, Plan]
  hooks: Hooks = Hooks()
  concurrent: int = 1  # arms running at once (--workers), kept in each record
  corpus: epath.Path | None = None  # the built ablation corpus (None: the configs' own data)
  seeds_per_program: int = 1  # --seeds_per_program (research/multiseed.py, in this process)
  # Where the runs train (experiments/executor.py); None: research.train in this process.
  executor: Any = None
  checkpoint_every: int = 0  # --checkpoint_every (with_steps)
  resources: executor_lib.Resources = executor_lib.Resources()  # what each run asks for
  _lock: Any = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

  @property
  def sweep_budget(self) -> float:
    return self.budgets[0]

  @property
  def sweep_seed(self) -> int:
    return min(self.seeds)

  def job(self, arm: str, budget: float, seed: int, rate: float, workdir: epath.Path,
          where: str) -> PretrainJob:
    config = with_steps(pretrain_config_dict(arm, seed, self.tiny, rate, self.corpus),
                        self.plans[arm].steps(budget), self.checkpoint_every)
    return PretrainJob(arm, budget, seed, rate, config, workdir, where)

  def sweep_places(self, arm: str) -> list[tuple[float, str, epath.Path]]:
    """(rate, where, directory) of every rate of the arm's sweep."""
    return [(rate, f"{budget_tag(self.sweep_budget)} {lr_tag(rate)}",
             sweep_dir(self.out, arm, self.sweep_budget, rate))
            for rate in sweep_rates(self.plans[arm], self.lr_sweep)]

  def sweep_jobs(self, arm: str) -> list[tuple[PretrainJob, epath.Path]]:
    """(job, record path) of every rate of the arm's sweep."""
    return [(self.job(arm, self.sweep_budget, self.sweep_seed, rate, directory / "pretrain",
                      where), directory / "pretrain.json")
            for rate, where, directory in self.sweep_places(arm)]

  def tasks_at(self, arm: str, budget: float) -> list[str]:
    """The fine-tunings of the arm at `budget`: every task of its family, at the largest budget
    only. Fine-tunings long enough to leave chance (FINETUNE_STEPS) cost ~2.5-3.5 min an
    arm-seed, more than all its pretraining; at every budget they would take the default past its 90
    minutes. At the smaller budgets the SST-2 linear probe of the frozen features (a
    yardstick) is the downstream measure against FLOPs."""
    if budget != self.budgets[-1]:
      return []
    return stages_of(self.plans[arm].family)[1:]

  def stages(self, arm: str, budget: float) -> list[tuple[str, str, epath.Path]]:
    """(where, kind, record path) of every stage the arm runs at `budget`, in order: the sweep
    (smallest budget), pretraining of each seed, then each seed's fine-tunings. The sweep
    seed's pretraining at the smallest budget is the sweep's chosen run, not a stage."""
    tag = budget_tag(budget)
    stages = []
    if budget == self.sweep_budget:
      stages += [(where, f"pretrain@{tag}", directory / "pretrain.json")
                 for _, where, directory in self.sweep_places(arm)]
    for seed in self.seeds:
      if not (budget == self.sweep_budget and seed == self.sweep_seed):
        stages.append((f"{tag} seed{seed}", f"pretrain@{tag}",
                       seed_dir(self.out, arm, budget, seed) / "pretrain.json"))
    for seed in self.seeds:
      for task in self.tasks_at(arm, budget):
        stages.append((f"{tag} seed{seed}", task,
                       seed_dir(self.out, arm, budget, seed) / f"{task}.json"))
    return stages

  def chosen_rate(self, arm: str) -> float | None:
    saved = read_json(self.out / arm / "lr.json")
    return None if saved is None else saved["learning_rate"]

  # -- running -----------------------------------------------------------------------------

  def run_of(self, name: str, config: ExperimentConfig,
             workdir: epath.Path) -> executor_lib.Run:
    config_dict = config.to_dict()
    return executor_lib.Run(name, config_dict, os.fspath(workdir),
                            self.resources.for_config(config_dict), os.fspath(self.out))

  def stage(self, name: str, config: ExperimentConfig, workdir: epath.Path) -> StageRun:
    """One run to its last step, through the executor when there is one (FloatingPointError,
    Interrupted or StageFailed when it did not finish)."""
    if self.executor is None:
      return run_stage(config, workdir)
    run = self.run_of(name, config, workdir)
    return stage_run(self.executor.run(run), run)

  def pretrain_on_executor(self, jobs: list[PretrainJob], start, done) -> None:
    """Hooks.pretrain through the executor: every job submitted at once (they run side by
    side as far as the workers or the cluster allow), each reported in order as it ends."""
    submitted = []
    for job in jobs:
      start(job)
      run = self.run_of(f"{job.arm} {job.where} pretrain", job.config, job.workdir)
      submitted.append((job, run, self.executor.submit(run)))
    stopped = None
    for job, run, future in submitted:
      try:
        done(job, stage_run(self.executor.wait(future), run))
      except (FloatingPointError, StageFailed) as e:
        done(job, e)
      except Interrupted as e:
        stopped = e
    if stopped is not None:
      raise stopped

  def pretrain(self, jobs: list[tuple[PretrainJob, epath.Path]], progress: Progress, log,
               keep_diverged: bool = False, yardsticks: bool = True) -> dict[PretrainJob, dict]:
    """Runs the jobs without a record through hooks.pretrain; returns every job's record. A
    diverged run's record is written only with keep_diverged (a sweep's rate that diverged is
    a result; a seed's run is retried by the next rerun). Without `yardsticks` the records
    have none yet (the sweep measures them on its chosen run only)."""
    records = {job: read_json(path) for job, path in jobs}
    paths_of = dict(jobs)

    def start(job: PretrainJob) -> None:
      steps = job.config.train.steps
      with self._lock:
        log(progress.line(job.arm, job.where, f"pretrain@{budget_tag(job.budget)}",
                          f"{steps} steps, {steps * self.plans[job.arm].flops_per_step:.2e} "
                          f"FLOPs, learning rate {job.learning_rate:.3g}"))

    def done(job: PretrainJob, run: StageRun | FloatingPointError | StageFailed) -> None:
      if isinstance(run, StageFailed):  # not recorded: a rerun tries it again
        records[job] = {"failed": str(run), "eval_loss": None, "wall_s": 0.0}
        with self._lock:
          log(f"[ablation] {job.arm} {job.where}: {run}")
          progress.skipped(1)
        return
      if isinstance(run, FloatingPointError):
        record = diverged_record(job, run)
        with self._lock:
          log(f"[ablation] {job.arm} {job.where}: diverged: {run}")
      else:
        record = pretrain_record(self.out, self.plans[job.arm], job, run,
                                 self.hooks.yardsticks(job) if yardsticks else {})
      record["concurrent"] = self.concurrent
      if keep_diverged or not record.get("diverged"):
        write_json(paths_of[job], record)
      records[job] = record
      with self._lock:
        progress.finished(job.arm, f"pretrain@{budget_tag(job.budget)}", record["wall_s"])

    todo = [job for job, _ in jobs if records[job] is None]
    if self.corpus is not None:  # the shared vocabulary, before research.train trains its own
      for job in todo:
        ablation_corpus.install_tokenizer(self.corpus, job.workdir)
    pretrain = self.hooks.pretrain
    if self.executor is not None and pretrain is pretrain_each:
      pretrain = self.pretrain_on_executor
    pretrain(todo, start, done)
    return records

  def sweep(self, arm: str, progress: Progress, log) -> float:
    """The arm's learning rate: lr.json, or its sweep run now (FloatingPointError if every
    rate diverged)."""
    rate = self.chosen_rate(arm)
    if rate is not None:
      return rate
    jobs = self.sweep_jobs(arm)
    records = self.pretrain(jobs, progress, log, keep_diverged=True, yardsticks=False)
    failed = [record["failed"] for record in records.values() if record.get("failed")]
    if failed:  # no choice among the rates that ran: a rerun runs the failed ones again
      raise StageFailed(f"the sweep did not finish ({'; '.join(failed)})")
    rate = choose_rate({job.learning_rate: record for job, record in records.items()})
    if rate is None:
      tried = ", ".join(f"{r:.3g}" for r in sweep_rates(self.plans[arm], self.lr_sweep))
      raise FloatingPointError(f"every rate of the sweep diverged ({tried})")
    # The yardsticks of the chosen run only: it is also the first seed's run at this budget
    # (copy_sweep_run), and the other rates' would cost ~20 s each for numbers nobody reads.
    # lr.json comes after, so that a rerun stopped in between measures them again.
    (job, path), = [(job, path) for job, path in jobs if job.learning_rate == rate]
    if not records[job].get("yardsticks"):
      write_json(path, {**records[job], "yardsticks": self.hooks.yardsticks(job)})
    write_json(self.out / arm / "lr.json", {"learning_rate": rate, "seed": self.sweep_seed,
                                            "budget": self.sweep_budget})
    log(f"[ablation] {arm}: learning rate {rate:.3g} chosen by the sweep")
    return rate

  def run_budget(self, arm: str, budget: float, rate: float, progress: Progress,
                 log) -> list[str]:
    """Every stage of the arm at `budget` with the chosen rate, skipping those with a record;
    returns failure messages (a diverged seed; the other seeds go on)."""
    failed = []
    jobs = []
    for seed in self.seeds:
      directory = seed_dir(self.out, arm, budget, seed)
      if (directory / "result.json").exists():
        continue
      if budget == self.sweep_budget and seed == self.sweep_seed:
        self.copy_sweep_run(arm, rate, directory / "pretrain.json")
      else:
        jobs.append((self.job(arm, budget, seed, rate, directory / "pretrain",
                              f"{budget_tag(budget)} seed{seed}"), directory / "pretrain.json"))
    records = self.pretrain(jobs, progress, log)
    for job, record in records.items():
      if record.get("diverged") or record.get("failed"):
        failed.append(f"{arm} {job.where}: {record.get('diverged') or record['failed']}")
    for seed in self.seeds:
      directory = seed_dir(self.out, arm, budget, seed)
      pretrained = read_json(directory / "pretrain.json")
      if (directory / "result.json").exists() or pretrained is None or (
          pretrained.get("diverged")):
        continue
      try:
        stages = self.finetune(arm, budget, seed, pretrained, progress, log)
      except (FloatingPointError, StageFailed) as e:  # the other seeds and arms still run
        failed.append(f"{arm} {budget_tag(budget)} seed{seed}: {e}")
        with self._lock:
          log(f"[ablation] {failed[-1]}")
        continue
      write_json(directory / "result.json", {"arm": arm, "budget": budget, "seed": seed,
                                             "pretrain": pretrained, **stages})
    return failed

  def copy_sweep_run(self, arm: str, rate: float, path: epath.Path) -> None:
    if not path.exists():
      record = read_json(sweep_dir(self.out, arm, self.sweep_budget, rate) / "pretrain.json")
      write_json(path, {**record, "from_sweep": True})

  def finetune(self, arm: str, budget: float, seed: int, pretrained: dict, progress: Progress,
               log) -> dict[str, dict]:
    directory = seed_dir(self.out, arm, budget, seed)
    records = {}
    for task in self.tasks_at(arm, budget):
      path = directory / f"{task}.json"
      records[task] = read_json(path)
      if records[task] is not None:
        continue
      config = finetune_config(task, self.plans[arm].family, self.out / pretrained["workdir"],
                               seed, self.tiny)
      with self._lock:
        log(progress.line(arm, f"{budget_tag(budget)} seed{seed}", task,
                          f"fine-tuning, {config.train.steps} steps"))
      run = self.stage(f"{arm} {budget_tag(budget)} seed{seed} {task}", config,
                       directory / task)
      records[task] = {**finetune_record(task, config, run), "concurrent": self.concurrent}
      write_json(path, records[task])
      with self._lock:
        progress.finished(arm, task, run.seconds)
    return records

  def run_arm_at(self, arm: str, budget: float, progress: Progress, log) -> list[str]:
    """The arm's stages at one budget (after its sweep, at the smallest)."""
    try:
      rate = self.sweep(arm, progress, log)
    except (FloatingPointError, StageFailed) as e:
      with self._lock:
        log(f"[ablation] {arm}: {e}")
      return [f"{arm}: {e}"]
    return self.run_budget(arm, budget, rate, progress, log)

  # -- progress ----------------------------------------------------------------------------

  def progress(self, workers: int) -> Progress:
    """The stages left, in the order they run: budget by budget, arm by arm (one process),
    or arm by arm (workers), and the seconds of those already finished."""
    order = ([(arm, b) for arm in self.arms for b in self.budgets] if workers > 1 else
             [(arm, b) for b in self.budgets for arm in self.arms])
    todo, known = [], {}
    for arm, budget in order:
      for where, kind, path in self.stages(arm, budget):
        record = read_json(path)
        if record is None:
          todo.append((arm, where, kind))
        else:
          known.setdefault((arm, kind), []).append(record["wall_s"])
    return Progress(todo, known, workers)

  def results(self, settings: dict, failed: list[str]) -> Results:
    runs = {}
    for arm in self.arms:
      for budget in self.budgets:
        for seed in self.seeds:
          record = read_json(seed_dir(self.out, arm, budget, seed) / "result.json")
          if record is not None:
            runs[(arm, budget, seed)] = record
    sweeps = {}
    for arm in self.arms:
      sweeps[arm] = {}
      for job, path in self.sweep_jobs(arm):
        record = read_json(path)
        if record is not None:
          sweeps[arm][job.learning_rate] = record
    chosen = {arm: rate for arm in self.arms if (rate := self.chosen_rate(arm)) is not None}
    return Results(self.arms, self.budgets, self.seeds, self.plans, settings, runs, sweeps,
                   chosen, failed)


def worker_env(out: epath.Path) -> dict[str, str]:
  """What the executor's worker processes (local or Ray) need from this one: the XLA flags
  (--tiny's) and the persistent compilation cache in OUT/jax_cache (enable_compilation_cache)."""
  return {"XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
          "JAX_COMPILATION_CACHE_DIR": os.fspath(out / "jax_cache"),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.1"}


def run_ablation(out: epath.Path, arms: list[str], seeds: list[int], budgets: list[float],
                 lr_sweep: list[float], tiny: bool, log=print, workers: int = 1,
                 hooks: Hooks = Hooks(), seeds_per_program: int = 1,
                 executor: executor_lib.Executor | None = None, checkpoint_every: int = 0,
                 resources: executor_lib.Resources = executor_lib.Resources()) -> dict[str, Any]:
  """Runs (or resumes, or skips) every stage of every arm, budget and seed, then writes the
  report. Returns {"results": Results, "failed": [message, ...], "interrupted": whether a run
  was stopped (SIGTERM), "signal": the signal that stopped this driver, or None}.

  Without `tiny` the arms pretrain on the ablation corpus with its shared vocabulary, built
  once in OUT/corpus (experiments/ablation_corpus.py); --tiny keeps the configs' own
  character-level Tiny Shakespeare (building a vocabulary takes a minute, --tiny two in all).
  The runs go through `executor` (default: experiments.executor.LocalPool(workers)); with more
  than one run at a time the arms run side by side, each in a thread of this process that
  submits its runs and waits for them."""
  for arm in arms:
    arm_path(arm)  # every name checked before anything runs
  budgets = sorted(budgets)
  corpus = None if tiny else out / CORPUS_DIR
  settings = ablation_settings(budgets, lr_sweep, tiny)
  out.mkdir(parents=True, exist_ok=True)
  check_settings(out, settings)
  if corpus is not None:  # reused when built
    ablation_corpus.build(corpus, log=log)
  # Each plan resolves its arm's tokenizer in the workdir of the sweep's first run (the shared
  # one copied there, or with --tiny one built there), which finds it there.
  first_rate = lambda arm: lr_sweep[0] * pretrain_config_dict(arm, 0, tiny).optimizer.learning_rate
  plans = {arm: load_or_make_plan(out, arm, tiny, sweep_dir(out, arm, budgets[0], first_rate(arm))
                                  / "pretrain", corpus) for arm in arms}
  if len({plan.data_order for plan in plans.values()}) > 1:
    log("[ablation] warning: the arms do not read the same pretraining text for seed 0 "
        "(plan.json data_order); differences between arms are then not paired in data")
  own = executor is None
  if own:
    executor = executor_lib.LocalPool(workers, executor_lib.Board(log=log, announce_starts=False),
                                      env=worker_env(out))
  parallel = not (isinstance(executor, executor_lib.LocalPool) and executor.workers == 1)
  if parallel and hooks.pretrain is not pretrain_each:
    raise UserError("--seeds_per_program > 1 trains its seeds in this process: use it with "
                    "--workers=1 and --executor=local")
  concurrent = workers if isinstance(executor, executor_lib.LocalPool) else 1
  ablation = Ablation(out, arms, budgets, seeds, list(lr_sweep), tiny, plans, hooks,
                      concurrent, corpus, seeds_per_program, executor, checkpoint_every,
                      resources)
  progress = ablation.progress(workers if parallel else 1)
  executor.board.expect(len(progress.todo))
  failed, interrupted = [], False
  with executor_lib.StopOnSignal(executor) as stop:
    try:
      if parallel:
        failed, interrupted = run_arms_side_by_side(ablation, progress, log)
      else:
        for budget in budgets:  # budget by budget: an interrupted run has whole comparisons
          for arm in arms:
            failed += ablation.run_arm_at(arm, budget, progress, log)
    except Interrupted as e:
      interrupted = True
      log(f"[ablation] stopped: {e}; rerun the same command to continue from there")
    finally:
      if own:
        executor.close()
    if interrupted and parallel:
      log("[ablation] stopped; rerun the same command to continue from there")
    results = ablation.results(settings, failed)
    ablation_writeup.write_report(out, results)
  return {"results": results, "failed": failed, "interrupted": interrupted,
          "signal": stop.signal}


def run_arms_side_by_side(ablation: Ablation, progress: Progress, log) -> tuple[list[str], bool]:
  """Each arm in a thread (its sweep, then budget by budget), all submitting to the executor at
  once. Returns (failure messages, whether a run was stopped)."""
  failed: list[str] = []
  stopped: list[Interrupted] = []
  errors: list[BaseException] = []

  def arm_runs(arm: str) -> None:
    try:
      for budget in ablation.budgets:
        failed.extend(ablation.run_arm_at(arm, budget, progress, log))
        if ablation.chosen_rate(arm) is None:  # no rate: none of the arm's stages can run
          break
    except Interrupted as e:
      stopped.append(e)
    except BaseException as e:  # pylint: disable=broad-except
      errors.append(e)
      ablation.executor.stop()

  threads = [threading.Thread(target=arm_runs, args=(arm,), name=f"arm {arm}", daemon=True)
             for arm in ablation.arms]
  for thread in threads:
    thread.start()
  executor_lib.join(threads, ablation.executor.board)
  if errors:
    raise errors[0]
  return failed, bool(stopped)


def ablation_settings(budgets: list[float], lr_sweep: list[float], tiny: bool) -> dict:
  return {"budgets": budgets, "sweep_budget": budgets[0], "lr_sweep": list(lr_sweep),
          "tiny": tiny, "finetune": {t: {**f.settings, **(f.tiny if tiny else {})}
                                     for t, f in FINETUNES.items()},
          "pretrain_data": TINY_DATA if tiny else CORPUS_DATA}


# Chips whose cost per arm --dry_run states: research/flops.py's published bf16 peaks.
COST_CHIPS = (("TPU v5e", "TPU v5 lite"), ("TPU v5p", "TPU v5"), ("TPU v6e", "TPU v6 lite"),
              ("H100", "H100"))


def finetune_flops(arm: str, task: str, tiny: bool, vocab_size: int) -> float:
  """Training FLOPs of one fine-tuning run of the arm (research/flops.py): the task's config
  and steps with the arm's architecture, as init_from gives it."""
  from research import flops as flops_lib  # pylint: disable=import-outside-toplevel
  from research import train  # pylint: disable=import-outside-toplevel
  arm_model = ExperimentConfig.from_config_dict(pretrain_config_dict(arm, 0, tiny)).model
  spec = FINETUNES[task]
  config = load_config_file(str(REPO_ROOT / "configs" / spec.configs[arm_model.family]))
  _set(config, {**spec.settings, **(spec.tiny if tiny else {})})
  finetune = ExperimentConfig.from_config_dict(config)
  model = dataclasses.replace(arm_model, vocab_size=vocab_size,
                              **{k: getattr(finetune.model, k) for k in train.RUN_FIELDS})
  finetune = dataclasses.replace(finetune, model=model)
  return float(flops_lib.training_flops_per_step(finetune) * finetune.train.steps)


def arm_cost(ablation: Ablation, arm: str) -> list[str]:
  """What one arm costs: the training FLOPs of its runs at each budget (pretraining: the
  budget by definition, the sweep's rates at the smallest; fine-tuning at the largest), and
  the chip-hours they take at each COST_CHIPS chip's peak (divide by the MFU reached: the
  report's MFU column; evaluation and compilation not counted)."""
  from research import flops as flops_lib  # pylint: disable=import-outside-toplevel
  plan = ablation.plans[arm]
  vocab = plan.vocab_size or (ablation_corpus.VOCAB_SIZE if not ablation.tiny else 96)
  lines = []
  for budget in ablation.budgets:
    runs = len(ablation.seeds) + (len(ablation.lr_sweep) - 1 if budget == ablation.sweep_budget
                                  else 0)
    flops = runs * budget
    tasks = ablation.tasks_at(arm, budget)
    flops += len(ablation.seeds) * sum(finetune_flops(arm, task, ablation.tiny, vocab)
                                       for task in tasks)
    hours = ", ".join(f"{flops / flops_lib.published_peak(kind) / 3600:.3g} on {name}"
                      for name, kind in COST_CHIPS)
    lines.append(f"  {arm} at {budget_tag(budget)}: {runs} pretraining run(s)"
                 + (f", {len(ablation.seeds) * len(tasks)} fine-tuning run(s)" if tasks else "")
                 + f": {flops:.3g} training FLOPs; chip-hours at peak: {hours}")
  return lines


def dry_run(out: epath.Path, arms: list[str], seeds: list[int], budgets: list[float],
            lr_sweep: list[float], tiny: bool,
            resources: executor_lib.Resources) -> list[str]:
  """The stages (one run each) in the order they run, whether each has finished, its steps
  where the arm's plan is made, and what each run asks for; nothing is written."""
  budgets = sorted(budgets)
  plans = {}
  for arm in arms:
    saved = read_json(out / arm / "plan.json")
    if saved is not None:
      saved.pop("config")
      plans[arm] = Plan(**{**saved, "diff": tuple(saved["diff"])})
    else:  # no plan yet: the family and learning rate from the config, the steps unknown
      config = ExperimentConfig.from_config_dict(pretrain_config_dict(arm, 0, tiny))
      plans[arm] = Plan(arm=arm, family=config.model.family, objective=config.objective.name,
                        parameters=0, vocab_size=0, flops_per_step=0.0,
                        batch_size=config.data.batch_size, seq_len=config.data.seq_len,
                        learning_rate=config.optimizer.learning_rate, diff=(), data_order="")
  ablation = Ablation(out, arms, budgets, seeds, list(lr_sweep), tiny, plans)
  lines, count = [], 0
  for arm in arms:
    for budget in budgets:
      for where, kind, path in ablation.stages(arm, budget):
        count += 1
        state = "finished" if path.exists() else "to run"
        steps = (f"{plans[arm].steps(budget)} steps" if plans[arm].flops_per_step and
                 kind.startswith("pretrain") else "")
        lines.append(f"{arm} {where} {kind}: {state}; {', '.join(filter(None, [steps, resources.describe()]))}; "
                     f"{relative(out, path.parent / path.stem)}")
  lines.append(f"{count} runs ({sum(' to run' in line for line in lines)} to run), each asking "
               f"for {resources.describe()}; learning rates after the sweep are chosen by it")
  lines.append("What an arm costs (research/flops.py; divide the chip-hours by the MFU reached):")
  for arm in arms:
    lines += arm_cost(ablation, arm)
  return lines


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


def parse_positive(flag: str, values: list[str], what: str) -> list[float]:
  try:
    numbers = [float(v) for v in values]
  except ValueError:
    raise UserError(f"--{flag} must be numbers separated by commas, got {','.join(values)}") \
        from None
  if (not numbers or len(set(numbers)) != len(numbers) or
      not all(n > 0 and math.isfinite(n) for n in numbers)):
    raise ConfigError(f"--{flag} needs distinct positive numbers ({what}), got "
                      f"{','.join(values)}")
  return numbers


def main(argv) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from research import cli, train  # pylint: disable=import-outside-toplevel
  cli.quiet_logs()
  cli.reject_positional_args(argv)
  f = flags.FLAGS

  def body():
    if f.tiny and TINY_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
      # before JAX starts its backend, which reads XLA_FLAGS once
      os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TINY_XLA_FLAGS}".strip()
    if not f.out:
      raise UserError("--out=DIR is required (where the runs and the report go)")
    budgets = parse_positive("budgets", f.budgets or list(map(repr, TINY_BUDGETS if f.tiny
                                                                 else DEFAULT_BUDGETS)),
                             "training FLOPs of each pretraining run")
    lr_sweep = parse_positive("lr_sweep", f.lr_sweep or list(map(repr, TINY_LR_SWEEP if f.tiny
                                                                  else DEFAULT_LR_SWEEP)),
                              "multipliers of each arm's learning rate")
    seeds = parse_seeds(f.seeds or list(map(str, TINY_SEEDS if f.tiny else DEFAULT_SEEDS)))
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
    from research import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
    workdir_lib.check_out_folder(out)  # a file or a training workdir: one line, nothing written
    enable_compilation_cache(out / "jax_cache")
    start = time.perf_counter()
    log = lambda line: print(line, file=sys.stderr, flush=True)
    if f.seeds_per_program < 1:
      raise UserError(f"--seeds_per_program must be a positive number of seeds, got "
                      f"{f.seeds_per_program}")
    if f.checkpoint_every < 0:
      raise UserError(f"--checkpoint_every must be a number of steps >= 0 (0: at the end only), "
                      f"got {f.checkpoint_every}")
    resources = executor_lib.parse_resources(f.run_resources)
    if f.dry_run:
      for arm in arms:
        arm_path(arm)
      for line in dry_run(out, arms, seeds, budgets, lr_sweep, f.tiny, resources):
        print(line)
      return
    hooks = default_hooks(f.tiny, f.seeds_per_program)
    if f.seeds_per_program > 1 and (workers > 1 or f.executor != "local"):
      raise UserError("--seeds_per_program > 1 trains its seeds in this process: use it with "
                      "--workers=1 and --executor=local")
    board = executor_lib.Board(log=log, announce_starts=False)
    executor = executor_lib.make_executor(f.executor, workers, board, f.ray_address,
                                          worker_env(out))
    try:
      outcome = run_ablation(out, arms, seeds, budgets, lr_sweep, f.tiny, log, workers,
                             hooks=hooks, seeds_per_program=f.seeds_per_program,
                             executor=executor, checkpoint_every=f.checkpoint_every,
                             resources=resources)
    finally:
      executor.close()
    print(f"report: {epath.Path(f.out) / 'report.md'} ({len(outcome['results'].runs)} "
          f"arm-budget-seed results, {format_seconds(time.perf_counter() - start)})")
    if outcome["interrupted"]:  # Ctrl-C, SIGTERM: what finished is written, the rest resumes
      raise cli.Interrupted()
    if outcome["failed"]:
      raise UserError(f"{len(outcome['failed'])} run(s) failed (listed in the report); rerun "
                      "the command to retry them")

  cli.run_cli(body)


def define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("out", None, "Directory for the runs, records and the report.")
  flags.DEFINE_list("budgets", [], "Training FLOPs of the pretraining runs (empty: "
                    f"{','.join(f'{b:g}' for b in DEFAULT_BUDGETS)}, or "
                    f"{','.join(f'{b:g}' for b in TINY_BUDGETS)} with --tiny); the learning "
                    "rates are swept at the smallest.")
  flags.DEFINE_list("lr_sweep", [], "Multipliers of each arm's learning rate tried at the "
                    f"smallest budget (empty: {','.join(f'{m:g}' for m in DEFAULT_LR_SWEEP)}, "
                    f"or {','.join(f'{m:g}' for m in TINY_LR_SWEEP)} with --tiny).")
  flags.DEFINE_list("seeds", [], "Seeds; each arm runs once per seed and budget (empty: "
                    f"{','.join(map(str, DEFAULT_SEEDS))}, or "
                    f"{','.join(map(str, TINY_SEEDS))} with --tiny).")
  flags.DEFINE_list("arms", list(DEFAULT_ARMS), "Arms: files of experiments/ablation/.")
  flags.DEFINE_bool("tiny", False, "Tiny models and a few steps each (tests, a quick look).")
  flags.DEFINE_integer("workers", 0, f"--executor=local: runs at once, each in a worker "
                       f"process (0: {TINY_WORKERS} with --tiny, else 1: in this process, so "
                       "that wall times and MFU in the report are measured on an otherwise idle "
                       "machine).")
  flags.DEFINE_integer("seeds_per_program", 1, "Pretraining runs of an arm and budget that "
                       "differ only in their seed train this many at a time in one compiled "
                       "program (research/multiseed.py); 1: one by one.")
  flags.DEFINE_integer("checkpoint_every", 0, "Pretraining runs save a checkpoint every this "
                       "many steps besides the last (0: at the last step only); on a cluster "
                       "whose nodes may die, a retried run resumes from it.")
  executor_lib.define_flags()


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from research import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
