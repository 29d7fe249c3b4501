"""What the architecture ablation compares: the fine-tuning tasks, T5's rows and orderings, each
arm's plan, and where a run's records live (shared by the runner, its report and its plots).

Layout of OUT (experiments/architecture_ablation.py):
  ablation.json                        the settings, checked on every rerun
  <arm>/plan.json                      the arm's plan (parameters, FLOPs per step, config)
  <arm>/lr.json                        the learning rate its sweep chose
  <arm>/<budget>/lr<rate>/pretrain{/,.json}   a sweep run (smallest budget, the sweep seed)
  <arm>/<budget>/seed<k>/{pretrain,sst2,spa_eng}{/,.json}, result.json
  <arm>/log.txt                        a worker's output (--workers)
where <budget> is budget_tag(FLOPs), e.g. flops1e12; a directory is a research.train workdir
and its .json the stage's record, written once the stage has finished and been evaluated.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from etils import epath

TASKS = ("sst2", "spa_eng")


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


# Shared by both tasks: the same optimizer and batch for every arm; no dropout (a few hundred
# steps do not overfit); one evaluation, at the end. The steps of each task (FINETUNE_STEPS)
# were first sized from fine-tuning curves of the decoder_lm arm pretrained for 1e13 FLOPs (Intel
# Xeon, AVX-512, 2 idle cores, 2026-12-02): 100 steps left every arm at chance (SST-2 50.9-58.8%,
# BLEU 0.1-0.2); SST-2 dev accuracy was 72.8% after 250 steps and 77.3% after 500, test BLEU 5.0
# after 500 steps and 10.3 after 1,000. Translation learns faster at twice the rate: decoder_lm
# at 3e12 FLOPs (seed 1, 600 steps of 32) gave test BLEU 1.2 at 1e-3, 2.7 at 2e-3 and 2.2 at
# 3e-3 (TRANSLATION_RATE). Then, from decoder_lm and encdec_span pretrained at 3e12 FLOPs with
# batch 4 (2026-12-03, same machine): translation, seeds 0 / 1, BLEU 4.57 / 4.57 after 600 steps
# of 32 and 7.30 / 6.60 after 800; SST-2, seed 0, 300 steps of 32 against 600 of 16 (the same
# examples): decoder_lm 76.0% / 75.6%, but encdec_span 50.9% (always "positive") / 65.8% --
# the encoder-decoder, which must learn to write the label word, needs the steps more than the
# batch. ~60 s and ~160 s a fine-tuning of decoder_lm. One checkpoint, at the end: orbax takes
# ~2 s a save here, and a stopped fine-tuning (1-3 min) simply runs again.
_COMMON = {"data.tokenizer": "char", "data.vocab_size": 0, "data.batch_size": 32,
           "model.dropout_rate": 0.0, "optimizer.learning_rate": 1e-3,
           "optimizer.end_learning_rate": 1e-4, "optimizer.warmup_steps": 30,
           "optimizer.weight_decay": 0.01, "optimizer.decay_steps": 0,
           "train.eval_every": 0, "train.checkpoint_every": 10_000, "train.log_every": 10,
           "train.eval_batches": 0, "train.eval_batch_size": 0}
FINETUNE_STEPS = {"sst2": 600, "spa_eng": 800}
TRANSLATION_RATE = {"optimizer.learning_rate": 2e-3, "optimizer.end_learning_rate": 2e-4}
# --tiny reads only the first 2,000 training records of each task (featurising them all would
# take longer than the tiny run itself).
_TINY_COMMON = {"data.batch_size": 8, "data.train_split": "train[:2000]", "train.steps": 2,
                "train.checkpoint_every": 2, "train.log_every": 1, "optimizer.warmup_steps": 1}

FINETUNES = {
    "sst2": Finetune(
        "sst2", "SST-2", "eval/accuracy", "dev accuracy (%)", 100.0,
        {"encoder": "sst2_bert.py", "decoder": "sst2_gpt.py", "encoder_decoder": "sst2_t5.py"},
        # Tokens of the shared 4096-piece vocabulary (init_from brings it; data.tokenizer here
        # is replaced by the pretrained one), ~3.1 characters each: 64 hold what 128 characters
        # held before the arms pretrained on pieces (three quarters of the dev sentences
        # whole), at half the positions. "positive" + EOS is at most 9 tokens (characters).
        {**_COMMON, "train.steps": FINETUNE_STEPS["sst2"], "data.batch_size": 16,
         "data.seq_len": 64,
         "data.eval_split": "validation",
         "task.max_input_len": 64, "task.max_target_len": 10, "task.decoding": "greedy",
         "task.eval_examples": 0, "task.eval_batch_size": 128},
        {**_TINY_COMMON, "data.seq_len": 32, "task.max_input_len": 32,
         "task.eval_examples": 16, "task.eval_batch_size": 16}),
    "spa_eng": Finetune(
        "spa_eng", "Spanish->English", "eval/bleu", "test BLEU", 1.0,
        {"decoder": "spa_eng_gpt.py", "encoder_decoder": "spa_eng_t5.py"},
        # The same text for both generating families: a 32-token input (template and the
        # Spanish sentence) and a 24-token English target, at ~3.1 characters a token about
        # the 64 and 48 characters these were before the shared vocabulary; the decoder holds
        # both in its 56 positions.
        {**_COMMON, **TRANSLATION_RATE, "train.steps": FINETUNE_STEPS["spa_eng"],
         "data.seq_len": 56,
         "data.eval_split": "test", "task.max_input_len": 32,
         "task.max_target_len": 24, "task.decoding": "greedy", "task.eval_examples": 400,
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



def stages_of(family: str) -> list[str]:
  return ["pretrain"] + [t for t in TASKS if family in FINETUNES[t].families()]


def applicable(family: str, task: str) -> bool:
  return family in FINETUNES[task].families()


@dataclasses.dataclass(frozen=True)
class Plan:
  """An arm's figures that do not depend on the budget; steps = round(budget / FLOPs per step)."""

  arm: str
  family: str
  objective: str
  parameters: int
  vocab_size: int
  flops_per_step: int
  batch_size: int
  seq_len: int
  learning_rate: float  # the arm config's peak rate, which --lr_sweep multiplies
  diff: tuple[str, ...]  # config_diff lines against baseline.py
  data_order: str  # digest of seed 0's first pretraining batches as text: equal in every arm

  def steps(self, budget: float) -> int:
    return max(1, round(budget / self.flops_per_step))

  def training_flops(self, budget: float) -> int:
    return self.steps(budget) * self.flops_per_step

  def tokens(self, budget: float) -> int:
    return self.steps(budget) * self.batch_size * self.seq_len


def format_flops(flops: float) -> str:
  """1e12 for 1e12, 2.5e8 for 2.5e8 (no "e+08")."""
  return re.sub(r"e\+?0*", "e", f"{flops:.4g}")


def budget_tag(budget: float) -> str:
  """flops1e12 for 1e12: a directory name."""
  return "flops" + format_flops(budget)


def lr_tag(learning_rate: float) -> str:
  return f"lr{learning_rate:.4g}"


def seed_dir(out: epath.Path, arm: str, budget: float, seed: int) -> epath.Path:
  return out / arm / budget_tag(budget) / f"seed{seed}"


def sweep_dir(out: epath.Path, arm: str, budget: float, learning_rate: float) -> epath.Path:
  return out / arm / budget_tag(budget) / lr_tag(learning_rate)


@dataclasses.dataclass
class Results:
  """Everything the report is written from."""

  arms: list[str]
  budgets: list[float]  # ascending; the learning rates are swept at the first
  seeds: list[int]
  plans: dict[str, Plan]
  settings: dict[str, Any]
  runs: dict[tuple[str, float, int], dict]  # (arm, budget, seed) -> result.json of finished ones
  sweeps: dict[str, dict[float, dict]]  # arm -> learning rate -> its sweep record
  chosen: dict[str, float]  # arm -> the learning rate chosen (arms whose sweep has finished)
  failed: list[str] = dataclasses.field(default_factory=list)

  def records(self, arm: str, budget: float) -> dict[int, dict]:
    return {seed: self.runs[(arm, budget, seed)] for seed in self.seeds
            if (arm, budget, seed) in self.runs}


@dataclasses.dataclass(frozen=True)
class Metric:
  """A number each finished arm-budget-seed has: pretraining loss, a task's score, or a
  yardstick from the pretraining record."""

  key: str  # "pretrain_loss", a task, or "yardstick:<name>"
  label: str
  digits: int
  higher_is_better: bool
  across_arms: bool  # comparable between arms (a loss of each arm's own objective is not)

  def value(self, record: dict) -> float | None:
    if self.key == "pretrain_loss":
      return record["pretrain"].get("eval_loss")
    if self.key.startswith("yardstick:"):
      value = (record["pretrain"].get("yardsticks") or {}).get(self.key.split(":", 1)[1])
      return value["value"] if isinstance(value, dict) else value
    return (record.get(self.key) or {}).get("value")

  def applies(self, family: str) -> bool:
    return self.key not in FINETUNES or applicable(family, self.key)


PRETRAIN_LOSS = Metric("pretrain_loss", "pretraining val loss (own objective)", 3, False, False)


def task_metric(task: str) -> Metric:
  spec = FINETUNES[task]
  return Metric(task, f"{spec.label} {spec.metric_label}", 1 if spec.scale > 1 else 2, True,
                True)


def metrics_of(runs: dict) -> list[Metric]:
  """Pretraining loss, the tasks, and every yardstick some pretraining record holds."""
  yardsticks = {}
  for record in runs.values():
    for name, value in (record["pretrain"].get("yardsticks") or {}).items():
      higher = value.get("higher_is_better", True) if isinstance(value, dict) else True
      yardsticks.setdefault(name, Metric(f"yardstick:{name}", name, 3, higher, True))
  return [PRETRAIN_LOSS, *map(task_metric, TASKS), *(yardsticks[k] for k in sorted(yardsticks))]
