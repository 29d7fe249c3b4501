"""Extractive question answering (SQuAD format: context, question, answers with answer_start).

  encoder          sliding windows [lead] question [eos] context-window [eos] -> start/end scores;
                   the best-scoring span over all windows is the answer
  decoder          "question: ...\\ncontext: ..." + after -> the answer (generated)
  encoder_decoder  the same text -> the answer
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import models
from research.config import DataError
from research.kinds import base


def best_span(start: np.ndarray, end: np.ndarray, first: int, last: int,
              max_answer_len: int) -> tuple[float, int, int]:
  """(score, i, j) maximising start[i] + end[j] over first <= i <= j <= last, j - i < max."""
  if last < first:
    return -np.inf, 0, 0
  s, e = start[first:last + 1], end[first:last + 1]
  n = len(s)
  scores = s[:, None] + e[None, :]  # (n, n)
  i, j = np.indices((n, n))
  scores = np.where((j >= i) & (j - i < max_answer_len), scores, -np.inf)
  flat = int(np.argmax(scores))
  return float(scores.flat[flat]), first + flat // n, first + flat % n


class SpanQA(base.Kind):
  NAME = "span_qa"  # its families, formats and template: research.taskdefs

  @classmethod
  def head_for(cls, family: str) -> str | None:
    return "span" if family == "encoder" else None

  def source(self, record: base.Record) -> str:
    return f"question: {record['question']}\ncontext: {record['context']}"

  def target(self, record: base.Record) -> str:
    return record["answers"][0]

  def references(self, record: base.Record) -> list[str]:
    return list(record["answers"])

  def input_text(self, record: base.Record):
    return {"question": record["question"], "context": record["context"]}

  # -- windows ---------------------------------------------------------------------------------

  def features(self, records: Sequence[base.Record]) -> list[base.Feature]:
    if self.format != "span":
      return super().features(records)
    return [f for i, r in enumerate(records) for f in self.span_features(r, i)]

  def span_features(self, record: base.Record, index: int) -> list[base.Feature]:
    """Sliding windows [lead] question [eos] context-window [eos] over a long context; the
    label is the first answer's token span, or (0, 0) when the window does not hold it."""
    question = self._encode(record["question"])[:64]
    context_ids, offsets = base.encode_with_offsets(self.tokenizer, record["context"])
    window = self.seq_len - len(question) - 3
    if window < 8:
      raise DataError(f"data.seq_len={self.seq_len} leaves {window} context tokens per window; "
                      "raise data.seq_len")
    step = max(window - self.config.task.doc_stride, 1)
    answer_start = record["answer_starts"][0]
    answer_end = answer_start + len(record["answers"][0])
    first = int(np.searchsorted(offsets[:, 1], answer_start, side="right"))  # end > start
    last = int(np.searchsorted(offsets[:, 0], answer_end, side="left")) - 1  # start < end
    head = np.concatenate([[base.lead_id(self.tokenizer)], question, [self.tokenizer.eos_id]])
    features = []
    for begin in range(0, max(len(context_ids) - window, 0) + step, step):
      stop = min(begin + window, len(context_ids))
      tokens = np.concatenate([head, context_ids[begin:stop], [self.tokenizer.eos_id]])
      inside = begin <= first and last < stop and first <= last
      start_label = len(head) + first - begin if inside else 0
      end_label = len(head) + last - begin if inside else 0
      features.append({
          "tokens": tokens.astype(np.int32), "token_types": np.arange(len(tokens)) >= len(head),
          "start": start_label, "end": end_label, "example": index,
          "context_offset": len(head) - begin,  # token t of the window = context token t - this
          "offsets": offsets})
      if stop == len(context_ids):
        break
    return features

  def collate(self, features):
    if self.format != "span":
      return super().collate(features)
    tokens = self._pad([f and f["tokens"] for f in features], self.seq_len)
    types = self._pad([f and f["token_types"].astype(np.int32) for f in features], self.seq_len)
    return {"inputs": tokens,
            "input_mask": np.arange(self.seq_len)[None] < np.array(
                [[len(f["tokens"]) if f else 0] for f in features]),
            "token_types": np.where(tokens == self.tokenizer.pad_id, 0, types).astype(np.int32),
            "starts": np.array([f["start"] if f else 0 for f in features], np.int32),
            "ends": np.array([f["end"] if f else 0 for f in features], np.int32),
            "weights": np.array([1.0 if f else 0.0 for f in features], np.float32)}

  # -- model, loss, predictions ----------------------------------------------------------------

  def build_model(self, model_config: models.ModelConfig):
    if self.format != "span":
      return super().build_model(model_config)
    return models.EncoderSpanQA(model_config)

  def span_logits(self, model, params, batch, rngs=None, deterministic=True):
    types = batch.get("token_types") if model.config.num_token_types else None
    start, end = model.apply({"params": params}, batch["inputs"],
                             input_mask=batch["input_mask"], token_types=types,
                             deterministic=deterministic, rngs=rngs)
    neg = jnp.finfo(jnp.float32).min
    return (jnp.where(batch["input_mask"], start, neg), jnp.where(batch["input_mask"], end, neg))

  def loss(self, model, params, batch, *, rngs=None, deterministic=True):
    """Mean of the start and end cross-entropies; accuracy = both ends right."""
    if self.format != "span":
      return super().loss(model, params, batch, rngs=rngs, deterministic=deterministic)
    start, end = self.span_logits(model, params, batch, rngs, deterministic)
    w = batch["weights"]
    loss = 0.5 * (optax.softmax_cross_entropy_with_integer_labels(start, batch["starts"]) +
                  optax.softmax_cross_entropy_with_integer_labels(end, batch["ends"]))
    correct = ((jnp.argmax(start, -1) == batch["starts"]) &
               (jnp.argmax(end, -1) == batch["ends"]))
    return {"loss_sum": jnp.sum(loss * w), "correct_sum": jnp.sum(correct * w),
            "weight_sum": jnp.sum(w)}

  def predict(self, model, params, data, split, max_examples=0):
    if self.format != "span":
      return super().predict(model, params, data, split, max_examples)
    records = data.records(split)[:max_examples or None]
    features = data.eval_features(split, max_examples)
    batch_size = self.config.task.eval_batch_size
    best = [(-np.inf, "")] * len(records)
    for j, batch in enumerate(data.eval_batches(split, batch_size, max_examples=max_examples)):
      starts, ends = jax.device_get(self.batched(self.span_logits, model, params, batch))
      for r in range(len(starts)):
        index = j * batch_size + r
        if index >= len(features):
          break
        f = features[index]
        first = int(np.argmax(f["token_types"]))  # the first context token of the window
        last = len(f["tokens"]) - 2  # the last context token (before the final EOS)
        score, i, k = best_span(starts[r], ends[r], first, last, self.config.task.max_answer_len)
        if score > best[f["example"]][0]:
          offsets = f["offsets"]
          context = records[f["example"]]["context"]
          text = context[offsets[i - f["context_offset"], 0]:offsets[k - f["context_offset"], 1]]
          best[f["example"]] = (score, text)
    return [text for _, text in best]
