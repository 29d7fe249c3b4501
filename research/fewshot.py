"""Few-shot evaluation of a pretrained decoder on the bundled tasks: no training, k solved
examples from the train split in the prompt, then the question.

  python -m research.evaluate --pretrained=gemma3-270m --task=spa_eng [--shots=3] [--limit=200]

Each task's prompt is its fine-tuning format (README, "Tasks"), so a few-shot figure stands
beside the fine-tuned and from-scratch figures of the same split and metric:

  spa_eng  "Spanish: <es>\\nEnglish: <en>"          greedy, first line      sacrebleu BLEU (test)
  eng_spa  "English: <en>\\nSpanish: <es>"          greedy, first line      sacrebleu BLEU (test)
  sst2     "Review: <sentence>\\nSentiment: <label>" the label word with the  accuracy (validation)
                                                    higher next-token logit
  squad    "Context: ..\\nQuestion: ..\\nAnswer: .." greedy, first line      EM / F1 (validation)
  scitldr  "<abstract>\\nTL;DR: <summary>"           greedy, first line      ROUGE-1/2/L (validation)

The demonstrations are drawn once from the train split with a fixed seed, among those short
enough (`DEMO_TOKENS`), so every row of a run sees the same ones. Prompts are batched by length
(fewest padded tokens) and decoded greedily with the KV cache sized to the longest prompt.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
import tqdm

from research import convert, decode, metrics, models
from research.config import DataConfig, UserError
from research.data import corpora, tasks

DEMO_TOKENS = 320  # longest demonstration, in tokens: keeps k-shot prompts of SQuAD/SciTLDR short
BATCH = 8


@dataclasses.dataclass(frozen=True)
class FewShotTask:
  """How a bundled task reads as text: the question part of a record, its answer, the split
  its figures are reported on and how they are scored."""
  split: str
  shots: int
  max_new_tokens: int
  question: Callable[[dict], str]
  answer: Callable[[dict], str]
  score: Callable[[list[str], list[dict]], dict[str, float]]
  choices: tuple[str, ...] = ()  # a classification: the answers to rank, by label
  dataset: str = ""  # the bundled dataset its records come from ('': the task's name)


def _bleu_into(language: str) -> Callable[[list[str], list[dict]], dict[str, Any]]:
  """sacrebleu BLEU against the records' translation into `language` (a field: 'en', 'es')."""
  def score(predictions: list[str], records: list[dict]) -> dict[str, Any]:
    bleu, signature = metrics.bleu(predictions, [r[language] for r in records])
    return {"bleu": bleu, "bleu_signature": signature}
  return score


def _squad(predictions: list[str], records: list[dict]) -> dict[str, float]:
  em = [metrics.squad_exact_match(p, r["answers"]) for p, r in zip(predictions, records)]
  f1 = [metrics.squad_f1(p, r["answers"]) for p, r in zip(predictions, records)]
  return {"exact_match": 100 * float(np.mean(em)), "f1": 100 * float(np.mean(f1))}


def _rouge(predictions: list[str], records: list[dict]) -> dict[str, float]:
  scores = metrics.rouge(predictions, [list(r["all_summaries"]) or [r["summary"]]
                                       for r in records])
  return {name: 100 * value for name, value in scores.items()}


def _accuracy(predictions: list[str], records: list[dict]) -> dict[str, float]:
  labels = ["negative", "positive"]
  return {"accuracy": metrics.accuracy([labels.index(p) for p in predictions],
                                       [int(r["label"]) for r in records])}


TASKS = {
    "spa_eng": FewShotTask(
        "test", 3, 48, lambda r: f"Spanish: {r['es']}\nEnglish:", lambda r: " " + r["en"],
        _bleu_into("en")),
    "eng_spa": FewShotTask(
        "test", 3, 48, lambda r: f"English: {r['en']}\nSpanish:", lambda r: " " + r["es"],
        _bleu_into("es"), dataset="spa_eng"),
    "sst2": FewShotTask(
        "validation", 4, 1, lambda r: f"Review: {r['sentence']}\nSentiment:",
        lambda r: " " + ("negative", "positive")[int(r["label"])], _accuracy,
        choices=(" negative", " positive")),
    "squad": FewShotTask(
        "validation", 1, 24,
        lambda r: f"Context: {r['context']}\nQuestion: {r['question']}\nAnswer:",
        lambda r: " " + r["answers"][0], _squad),
    "scitldr": FewShotTask(
        "validation", 1, 48, lambda r: f"{r['document']}\nTL;DR:", lambda r: " " + r["summary"],
        _rouge),
}


def demonstrations(task: FewShotTask, train: list[dict], tokenizer, shots: int,
                   seed: int = 0) -> str:
  """`shots` solved examples from the train split (a fixed random draw among the short ones),
  each followed by a blank line."""
  order = np.random.default_rng(seed).permutation(len(train))
  picked = []
  for i in order:
    text = task.question(train[i]) + task.answer(train[i])
    if len(tokenizer.encode(text)) <= DEMO_TOKENS:
      picked.append(text + "\n\n")
    if len(picked) == shots:
      break
  return "".join(picked)


def _batches(lengths: list[int], size: int) -> list[list[int]]:
  """Row indices grouped by prompt length (sorted), `size` a batch: little padding."""
  order = np.argsort(lengths, kind="stable")
  return [order[i:i + size].tolist() for i in range(0, len(order), size)]


def _padded(rows: list[np.ndarray], pad_id: int, multiple: int = 32) -> tuple[np.ndarray,
                                                                              np.ndarray]:
  """Right-padded (B, P) prompts (P rounded up to `multiple`: fewer shapes to compile) and
  their lengths."""
  width = -(-max(len(r) for r in rows) // multiple) * multiple
  out = np.full((len(rows), width), pad_id, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out, np.array([len(r) for r in rows], np.int32)


def evaluate(model, params, tokenizer, config, task_name: str, records: list[dict],
             train: list[dict], *, shots: int | None = None, begin: list[int] = (),
             sized_for: Callable | None = None, progress: Callable[[int], None] | None = None,
             ) -> tuple[dict[str, Any], list[str]]:
  """Metrics of `records` answered few-shot, and the predictions (texts, or chosen labels)."""
  task = TASKS[task_name]
  shots = task.shots if shots is None else shots
  context = demonstrations(task, train, tokenizer, shots)
  prompts = [np.concatenate([np.asarray(begin, np.int32),
                             np.asarray(tokenizer.encode(context + task.question(r)), np.int32)])
             for r in records]
  longest = max(len(p) for p in prompts)
  if sized_for is not None:
    model, config = sized_for(model, config, longest + 32 + task.max_new_tokens)
  if longest + task.max_new_tokens > config.model.max_len:
    raise UserError(f"a {shots}-shot {task_name} prompt is {longest} tokens; with "
                    f"{task.max_new_tokens} new ones it exceeds the model's context "
                    f"({config.model.max_len}); pass fewer --shots")
  predictions: list[str] = [""] * len(records)
  if task.choices:
    first = [int(tokenizer.encode(c)[0]) for c in task.choices]
    if len(set(first)) < len(first):
      raise UserError(f"the answers {task.choices} start with the same token; they cannot be "
                      "told apart by one next-token logit")
  for rows in _batches([len(p) for p in prompts], BATCH):
    batch, lengths = _padded([prompts[i] for i in rows], tokenizer.pad_id)
    if task.choices:
      mask = np.arange(batch.shape[1])[None] < lengths[:, None]
      logits, _ = decode.prefill(model, params, jnp.asarray(batch), jnp.asarray(mask))
      picked = np.argmax(np.asarray(logits)[:, first], axis=1)
      for i, k in zip(rows, picked):
        predictions[i] = task.choices[k].strip()
    else:
      new = decode.generate_padded(model, params, batch, lengths, task.max_new_tokens,
                                   eos_id=tokenizer.eos_id)
      for i, ids in zip(rows, new):
        ids = ids[:np.argmax(ids == tokenizer.eos_id)] if (ids == tokenizer.eos_id).any() else ids
        predictions[i] = tokenizer.decode(ids).strip().split("\n")[0].strip()
    if progress:
      progress(len(rows))
  return {"shots": shots, "examples": len(records), **task.score(predictions, records)}, \
      predictions


def run(source: str, task_name: str, *, split: str = "", shots: int | None = None,
        limit: int = 0, predictions_file: str = "") -> dict[str, Any]:
  """research.evaluate --pretrained=SOURCE --task=NAME: loads the model, the split and the
  train examples, answers and scores; prints progress; returns the metrics."""
  if task_name not in TASKS:
    raise UserError(f"--task={task_name!r} has no few-shot format; choose one of "
                    f"{sorted(TASKS)}")
  if shots is not None and shots < 0:
    raise UserError(f"--shots={shots} must be >= 0")
  if limit < 0:
    raise UserError(f"--limit={limit} must be >= 0 (0: the whole split)")
  task = TASKS[task_name]
  model, params, tokenizer, config = convert.load_pretrained(source)
  if tokenizer is None or not models.family_of(config.model).decoder_only:
    raise UserError(f"--pretrained={source} is not a decoder language model with a tokenizer; "
                    "few-shot evaluation prompts a decoder")
  data_dir = corpora.data_dir(DataConfig())
  split = split or task.split
  records = tasks.load_records(task.dataset or task_name, split, data_dir)
  records = records[:limit] if limit else records
  train = tasks.load_records(task.dataset or task_name, "train", data_dir)
  started = time.perf_counter()
  with tqdm.tqdm(total=len(records), desc=f"{task_name} {split}", unit="ex") as bar:
    result, predictions = evaluate(model, params, tokenizer, config, task_name, records, train,
                                   shots=shots, begin=decode.begin_of_text(tokenizer),
                                   sized_for=decode.sized_for, progress=bar.update)
  result = {"pretrained": str(source), "task": task_name, "split": split, **result,
            "seconds": round(time.perf_counter() - started, 1)}
  if predictions_file:
    with open(predictions_file, "w", encoding="utf-8") as f:
      for record, prediction in zip(records, predictions):
        f.write(json.dumps({"input": task.question(record), "reference": task.answer(record)
                            .strip(), "prediction": prediction}, ensure_ascii=False) + "\n")
  return result
