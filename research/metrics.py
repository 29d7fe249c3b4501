"""Metric reduction and writers (TensorBoard event files + metrics.jsonl)."""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Mapping

import jax
import numpy as np


def summarize(sums: Mapping[str, float], prefix: str = "") -> dict[str, float]:
  """Turns {loss_sum, correct_sum, weight_sum, ...} into means; other entries pass through."""
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
  out["tokens"] = weight
  return {f"{prefix}{k}": v for k, v in out.items()}


def add_sums(total: dict | None, new: Mapping[str, jax.Array]) -> dict:
  new = {k: np.asarray(v, np.float64) for k, v in new.items()}
  if total is None:
    return new
  return {k: total[k] + new[k] for k in total}


class MetricWriter:
  """Writes scalars to TensorBoard and appends one JSON object per step to metrics.jsonl.

  Only process 0 writes; other processes get a writer that does nothing.
  """

  def __init__(self, workdir: str | pathlib.Path, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      workdir = pathlib.Path(workdir)
      self._tb = SummaryWriter(str(workdir / "tensorboard"), flush_secs=30)
      self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)
    record = {"step": int(step), "time": time.time(), **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


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
  import re  # pylint: disable=import-outside-toplevel
  import string  # pylint: disable=import-outside-toplevel
  text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def squad_exact_match(prediction: str, references: list[str]) -> float:
  """1.0 if the normalized prediction equals any normalized reference."""
  return float(max(squad_normalize(prediction) == squad_normalize(r) for r in references))


def squad_f1(prediction: str, references: list[str]) -> float:
  """Token-overlap F1 of the normalized answers, the maximum over the references."""
  import collections  # pylint: disable=import-outside-toplevel

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
  import sacrebleu  # pylint: disable=import-outside-toplevel
  metric = sacrebleu.metrics.BLEU()
  score = metric.corpus_score(hypotheses, [references])
  return float(score.score), str(metric.get_signature())


def rouge(predictions: list[str], references: list[str] | list[list[str]]) -> dict[str, float]:
  """Mean ROUGE-1/2/L F-measures with rouge-score, Porter stemming on. An example with several
  references (a list) takes, per measure, its best reference (rouge-score's score_multi)."""
  from rouge_score import rouge_scorer  # pylint: disable=import-outside-toplevel
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
  totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
  for prediction, reference in zip(predictions, references, strict=True):
    scores = (scorer.score_multi(reference, prediction) if isinstance(reference, list)
              else scorer.score(reference, prediction))
    for name, score in scores.items():
      totals[name] += score.fmeasure
  return {name: value / max(len(predictions), 1) for name, value in totals.items()}
