"""Metric reduction and writers (TensorBoard event files + metrics.jsonl)."""

from __future__ import annotations

import collections
import json
import math
import os
import pathlib
import re
import shutil
import string
import tempfile
import time
from typing import Mapping

import jax
import numpy as np

from research import paths


def summarize(sums: Mapping[str, float], prefix: str = "") -> dict[str, float]:
  """Turns {loss_sum, correct_sum, weight_sum, ...} into means; any other X_sum becomes X, its
  mean per weight (a preference loss's reward_margin_sum); other entries pass through."""
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
    elif k not in ("loss_sum", "correct_sum", "weight_sum") and weight > 0:
      out[k.removesuffix("_sum")] = v / weight
  out["tokens"] = weight
  return {f"{prefix}{k}": v for k, v in out.items()}


def add_sums(total: dict | None, new: Mapping[str, jax.Array]) -> dict:
  new = {k: np.asarray(v, np.float64) for k, v in new.items()}
  if total is None:
    return new
  return {k: total[k] + new[k] for k in total}


class MetricWriter:
  """Writes scalars to TensorBoard and appends one JSON object per step to metrics.jsonl.

  Only process 0 writes; other processes get a writer that does nothing. Cloud storage has no
  appends: in a workdir there (gs://), metrics.jsonl is rewritten whole at every write (one
  line per logged step keeps it small), and TensorBoard's event files are written to a local
  folder and copied to <workdir>/tensorboard every `sync_secs` (as often as tensorboardX
  flushes a local file) and when the writer closes.
  """

  def __init__(self, workdir: str | os.PathLike, enabled: bool | None = None,
               sync_secs: float = 30.0, start_step: int | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    self._remote = paths.is_url(workdir)
    if self.enabled:
      # tensorboardX: only when TensorBoard logging is on
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      workdir = paths.workdir_path(workdir)
      if self._remote:
        self._sync_secs, self._synced = sync_secs, time.monotonic()
        self._events = workdir / "tensorboard"
        self._staging = pathlib.Path(tempfile.mkdtemp(prefix="tensorboard-"))
        self._tb = SummaryWriter(str(self._staging), flush_secs=30)
        self._jsonl_path = workdir / "metrics.jsonl"
        self._text = self._jsonl_path.read_text() if self._jsonl_path.exists() else ""
        self._text = _records_up_to(self._text, start_step)
      else:
        self._tb = SummaryWriter(str(workdir / "tensorboard"), flush_secs=30)
        jsonl = workdir / "metrics.jsonl"
        if start_step is not None and jsonl.exists():
          text = jsonl.read_bytes().decode("utf-8", "replace")
          kept = _records_up_to(text, start_step)
          if kept != text:
            paths.write_atomic(jsonl, kept)
        self._jsonl = open(jsonl, "a", encoding="utf-8")

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)
    record = {"step": int(step), "time": time.time(), **{k: float(v) for k, v in scalars.items()}}
    if self._remote:
      self._text += json.dumps(record) + "\n"
      self._jsonl_path.write_text(self._text)
      if time.monotonic() - self._synced >= self._sync_secs:
        self._sync_events()
      return
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()

  def _sync_events(self) -> None:
    self._tb.flush()
    for file in self._staging.iterdir():
      (self._events / file.name).write_bytes(file.read_bytes())
    self._synced = time.monotonic()

  def close(self) -> None:
    if not self.enabled:
      return
    self._tb.close()
    if self._remote:
      self._sync_events()
      shutil.rmtree(self._staging, ignore_errors=True)
    else:
      self._jsonl.close()


def _records_up_to(text: str, step: int | None) -> str:
  """The lines of a metrics.jsonl that a run resumed at `step` keeps: records of later steps
  (which the resumed run logs again) and a line cut short by a crash are dropped."""
  if step is None:
    return text
  kept = []
  for line in text.splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict) and int(record.get("step", 0)) <= step:
      kept.append(line + "\n")
  return "".join(kept)


# ---------------------------------------------------------------------------------------------
# Task metrics
# ---------------------------------------------------------------------------------------------


def accuracy(predictions, labels) -> float:
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  if predictions.shape != labels.shape or predictions.size == 0:
    raise ValueError(f"accuracy needs equal, non-empty shapes; got {predictions.shape} and "
                     f"{labels.shape}")
  return float(np.mean(predictions == labels))


def squad_normalize(text: str) -> str:
  """The official SQuAD v1.1 answer normalization: lower case, no punctuation, no articles
  (a, an, the), single spaces."""
  text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def squad_exact_match(prediction: str, references: list[str]) -> float:
  """1.0 if the normalized prediction equals any normalized reference."""
  return float(max(squad_normalize(prediction) == squad_normalize(r) for r in references))


def squad_f1(prediction: str, references: list[str]) -> float:
  """Token-overlap F1 of the normalized answers, the maximum over the references."""

  def f1(pred: str, ref: str) -> float:
    pred_tokens, ref_tokens = squad_normalize(pred).split(), squad_normalize(ref).split()
    common = collections.Counter(pred_tokens) & collections.Counter(ref_tokens)
    overlap = sum(common.values())
    if not pred_tokens or not ref_tokens:
      return float(pred_tokens == ref_tokens)
    if overlap == 0:
      return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)

  return max(f1(prediction, r) for r in references)


def bleu(hypotheses: list[str], references: list[str]) -> tuple[float, str]:
  """Corpus BLEU with sacrebleu's defaults (13a tokenization, exp smoothing) and its signature."""
  # sacrebleu: only for a task scored by BLEU
  import sacrebleu  # pylint: disable=import-outside-toplevel
  metric = sacrebleu.metrics.BLEU()
  score = metric.corpus_score(hypotheses, [references])
  return float(score.score), str(metric.get_signature())


def rouge(predictions: list[str], references: list[str] | list[list[str]]) -> dict[str, float]:
  """Mean ROUGE-1/2/L F-measures with rouge-score, Porter stemming on. An example with several
  references (a list) takes, per measure, its best reference (rouge-score's score_multi)."""
  # rouge-score: only for a task scored by ROUGE
  from rouge_score import rouge_scorer  # pylint: disable=import-outside-toplevel
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
  totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
  for prediction, reference in zip(predictions, references, strict=True):
    scores = (scorer.score_multi(reference, prediction) if isinstance(reference, list)
              else scorer.score(reference, prediction))
    for name, score in scores.items():
      totals[name] += score.fmeasure
  return {name: value / max(len(predictions), 1) for name, value in totals.items()}
