"""Classification: one text or a pair of texts -> one of the task's labels.

  encoder          [lead] a [eos] (b [eos])  pooled first token -> classifier; token types 0 | 1
  decoder          [bos] a ([eos] b) [eos]   the last token's state -> classifier ([bos]: a
                                            pretrained vocabulary's, e.g. Gemma's; else none)
  encoder_decoder  before + text(s) + after  writes the label word (text-to-text)
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np
import optax

from research import models
from research.kinds import base


class Classification(base.Kind):
  NAME = "classification"  # its families, formats and template: research.taskdefs
  LABELLED = True

  @classmethod
  def head_for(cls, family: str) -> str | None:
    return {"encoder": "classifier", "decoder": "last_token_classifier"}.get(family)

  @classmethod
  def labels_from(cls, task: base.TaskDef, records: list[base.Record]) -> tuple[str, ...]:
    """The task's label words, or the labels found in its training records: numbers in numeric
    order, otherwise sorted."""
    if task.labels:
      return task.labels
    found = {str(r[task.label_field]) for r in records}
    numeric = all(f.lstrip("-").isdigit() for f in found)
    return tuple(sorted(found, key=int if numeric else str))

  @property
  def pair(self) -> bool:
    return len(self.task.text_fields) > 1

  def label_index(self, record: base.Record) -> int:
    label = record[self.task.label_field]
    # A bundled task stores the class index (a TFDS ClassLabel); a user's task the label text.
    return label if isinstance(label, int) else self.labels.index(label)

  # -- text (the encoder-decoder writes the label word) ---------------------------------------

  def source(self, record: base.Record) -> str:
    texts = [record[f] for f in self.task.text_fields]
    if len(texts) == 1:
      return texts[0]
    return "\n".join(f"{f}: {t}" for f, t in zip(self.task.text_fields, texts))

  def target(self, record: base.Record) -> str:
    return self.labels[self.label_index(record)]

  def input_text(self, record: base.Record):
    if self.pair:
      return {f: record[f] for f in self.task.text_fields}
    return record[self.task.text_fields[0]]

  # -- features --------------------------------------------------------------------------------

  def _segments(self, record: base.Record, room: int) -> list[np.ndarray]:
    """Each text's ids, the longest cut first until they fit in `room` tokens."""
    segments = [self._encode(record[f]) for f in self.task.text_fields]
    while sum(len(s) for s in segments) > room:
      longest = max(range(len(segments)), key=lambda i: len(segments[i]))
      excess = sum(len(s) for s in segments) - room
      keep = max(len(segments[longest]) - excess, len(segments[longest]) // 2)
      segments[longest] = segments[longest][:keep]
    return segments

  def features(self, records: Sequence[base.Record]) -> list[base.Feature]:
    if self.format != "classify":
      return super().features(records)
    eos = self.tokenizer.eos_id
    out = []
    for index, record in enumerate(records):
      if self.family == "encoder":  # [lead] a [eos] (b [eos]), token type 1 from b on
        segments = self._segments(record, self.seq_len - 1 - len(self.task.text_fields))
        parts = [np.array([base.lead_id(self.tokenizer)])]
        types = [np.zeros(1)]
        for i, s in enumerate(segments):
          parts.append(np.append(s, eos))
          types.append(np.full(len(s) + 1, min(i, 1)))
      else:  # the decoder classifies from the EOS that ends the text(s)
        begin = base.begin_of_text(self.tokenizer)  # a pretrained decoder's <bos>; else none
        segments = self._segments(record, self.seq_len - len(begin) - len(self.task.text_fields))
        parts = [begin] + [np.append(s, eos) for s in segments]
        types = [np.zeros(len(p)) for p in parts]
      out.append({"tokens": np.concatenate(parts).astype(np.int32),
                  "token_types": np.concatenate(types).astype(np.int32),
                  "label": self.label_index(record), "example": index})
    return out

  def collate(self, features):
    if self.format != "classify":
      return super().collate(features)
    tokens = self._pad([f and f["tokens"] for f in features], self.seq_len)
    types = np.zeros_like(tokens)
    for i, f in enumerate(features):
      if f is not None:
        types[i, :len(f["token_types"])] = f["token_types"][:self.seq_len]
    lengths = np.array([len(f["tokens"]) if f else 1 for f in features], np.int32)
    return {"inputs": tokens, "input_mask": np.arange(self.seq_len)[None] < lengths[:, None],
            "token_types": types, "lengths": lengths,
            "labels": np.array([f["label"] if f else 0 for f in features], np.int32),
            "weights": np.array([1.0 if f else 0.0 for f in features], np.float32)}

  # -- model, loss, predictions ----------------------------------------------------------------

  def build_model(self, model_config: models.ModelConfig):
    if self.format != "classify":
      return super().build_model(model_config)
    cls = models.EncoderClassifier if self.family == "encoder" else models.DecoderClassifier
    return cls(model_config, num_classes=len(self.labels))

  def logits(self, model, params, batch, rngs=None, deterministic=True):
    if self.family == "decoder":
      return model.apply({"params": params}, batch["inputs"], lengths=batch["lengths"],
                         deterministic=deterministic, rngs=rngs)
    # Token types only for a pair (a single text keeps the model's default, as before pairs).
    types = batch.get("token_types") if self.pair and model.config.num_token_types else None
    return model.apply({"params": params}, batch["inputs"], input_mask=batch["input_mask"],
                       token_types=types, deterministic=deterministic, rngs=rngs)

  def loss(self, model, params, batch, *, rngs=None, deterministic=True):
    if self.format != "classify":
      return super().loss(model, params, batch, rngs=rngs, deterministic=deterministic)
    logits = self.logits(model, params, batch, rngs, deterministic)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
    weights = batch["weights"]
    return {"loss_sum": jnp.sum(losses * weights), "correct_sum": jnp.sum(correct * weights),
            "weight_sum": jnp.sum(weights)}

  def _predicted_class(self, model, params, batch):
    return jnp.argmax(self.logits(model, params, batch), -1)

  def predict(self, model, params, data, split, max_examples=0):
    if self.format != "classify":
      return super().predict(model, params, data, split, max_examples)
    predictions = []
    for batch in data.eval_batches(split, self.config.task.eval_batch_size,
                                   max_examples=max_examples):
      predictions.extend(np.asarray(self.batched(self._predicted_class, model, params, batch)))
    return [self.labels[int(p)] for p in predictions[:len(data.eval_features(split, max_examples))]]
