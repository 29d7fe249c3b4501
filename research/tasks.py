"""Fine-tuning tasks: records -> token features -> fixed-shape batches, losses, predictions, metrics.

Each task (research/data/tasks.py holds its TFDS builder) is run in the format its family fits:

  format      families (tasks)                       model                 loss on
  classify    encoder, decoder (sst2)                 EncoderClassifier /   the label
                                                      DecoderClassifier
  span        encoder (squad)                         EncoderSpanQA         start and end token
  seq2seq     encoder_decoder (all five)              EncoderDecoder        target tokens
  prompt      decoder (squad, spa_eng, scitldr,       Decoder               response tokens only
              alpaca)                                                       (prompt masked out)

Every task states its input text as a template `before + source + after` (one template for all
families) and its target text; generation formats are scored by decoding the evaluation split
(greedy or beam search, task.decoding) and computing the task's metric on the text.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import pathlib
import shutil
from typing import Any, Callable, Iterator

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import decode, metrics as metrics_lib, models, objectives
from research.config import DataError, ExperimentConfig
from research.data import pipeline, tasks as task_data, tokenizers as tokenizers_lib

Batch = dict[str, np.ndarray]
Record = dict[str, Any]
Feature = dict[str, Any]

# The chat template (alpaca and research.chat): plain words, so any tokenizer can spell it.
USER_PREFIX = "User: "
ASSISTANT_PREFIX = "\nAssistant: "
TURN_SEPARATOR = "\n"  # follows the EOS that ends each assistant turn


# ---------------------------------------------------------------------------------------------
# What each task reads and writes (text level)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  name: str
  before: str  # input text = before + source(record) + after
  after: str
  source: Callable[[Record], str]
  target: Callable[[Record], str]
  references: Callable[[Record], list[str]]
  metric: Callable[[list[str], list[list[str]]], dict[str, Any]]
  eval_split: str  # where the README figures come from
  num_classes: int = 0  # classification tasks: label = record["label"]


LABEL_WORDS = ("negative", "positive")


def _accuracy_of_words(predictions: list[str], references: list[list[str]]) -> dict[str, Any]:
  return {"accuracy": float(np.mean([p.strip() == r[0] for p, r in zip(predictions, references)]))}


def _squad_metric(predictions: list[str], references: list[list[str]]) -> dict[str, Any]:
  return {"exact_match": 100 * float(np.mean([metrics_lib.squad_exact_match(p, r)
                                              for p, r in zip(predictions, references)])),
          "f1": 100 * float(np.mean([metrics_lib.squad_f1(p, r)
                                     for p, r in zip(predictions, references)]))}


def _bleu_metric(predictions: list[str], references: list[list[str]]) -> dict[str, Any]:
  score, signature = metrics_lib.bleu(predictions, [r[0] for r in references])
  return {"bleu": score, "bleu_signature": signature}


def _rouge_metric(predictions: list[str], references: list[list[str]]) -> dict[str, Any]:
  return {k: 100 * v for k, v in metrics_lib.rouge(predictions, references).items()}


def _instruction(record: Record) -> str:
  return record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec(
        "sst2", "sentiment: ", "", lambda r: r["sentence"], lambda r: LABEL_WORDS[r["label"]],
        lambda r: [LABEL_WORDS[r["label"]]], _accuracy_of_words, "validation", num_classes=2),
    "squad": TaskSpec(
        "squad", "", "\nanswer: ", lambda r: f"question: {r['question']}\ncontext: {r['context']}",
        lambda r: r["answers"][0], lambda r: r["answers"], _squad_metric, "validation"),
    "spa_eng": TaskSpec(
        "spa_eng", "Spanish: ", "\nEnglish: ", lambda r: r["es"], lambda r: r["en"],
        lambda r: [r["en"]], _bleu_metric, "test"),
    "scitldr": TaskSpec(
        "scitldr", "", "\nTL;DR: ", lambda r: r["document"], lambda r: r["summary"],
        lambda r: r["all_summaries"], _rouge_metric, "test"),
    "alpaca": TaskSpec(
        "alpaca", USER_PREFIX, ASSISTANT_PREFIX, _instruction, lambda r: r["output"],
        lambda r: [r["output"]], _rouge_metric, "validation"),
}


def format_name(config: ExperimentConfig) -> str:
  family, task = config.model.family, config.task.name
  if family == "encoder_decoder":
    return "seq2seq"
  if task == "sst2":
    return "classify"
  return "span" if family == "encoder" else "prompt"


# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------


def lead_id(tokenizer) -> int:
  """The token that starts an encoder input (BERT's [CLS] when the vocabulary has it)."""
  for token in ("[CLS]", "<cls>"):
    try:
      return tokenizer.token_to_id(token)
    except (DataError, ValueError):
      continue
  return tokenizer.eos_id


def encode_with_offsets(tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
  """ids (n,) and character offsets (n, 2) of each token in `text`."""
  if isinstance(tokenizer, tokenizers_lib.CharTokenizer):
    ids = tokenizer.encode(text)
    starts = np.arange(len(ids))
    return ids, np.stack([starts, starts + 1], axis=1)
  if isinstance(tokenizer, tokenizers_lib.SentencePieceTokenizer):
    proto = tokenizer._sp.encode(text, return_type="proto")  # pylint: disable=protected-access
    # SentencePiece reports byte offsets; map them to character offsets.
    char_of_byte = np.zeros(len(text.encode("utf-8")) + 1, np.int64)
    position = 0
    for i, ch in enumerate(text):
      width = len(ch.encode("utf-8"))
      char_of_byte[position:position + width] = i
      position += width
    char_of_byte[position] = len(text)
    ids = np.array([p.id for p in proto.pieces], np.int32)
    offsets = np.array([[char_of_byte[p.begin], char_of_byte[p.end]] for p in proto.pieces],
                       np.int64).reshape(-1, 2)
    return ids, offsets
  if isinstance(tokenizer, tokenizers_lib.HFTokenizer):
    encoding = tokenizer._tok.encode(text, add_special_tokens=False)  # pylint: disable=protected-access
    return (np.asarray(encoding.ids, np.int32),
            np.asarray(encoding.offsets, np.int64).reshape(-1, 2))
  raise TypeError(f"no offsets for tokenizer {type(tokenizer).__name__}")


# ---------------------------------------------------------------------------------------------
# Features: one per example (per window for span QA), variable length
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Featurizer:
  """Turns records into features for one (task, family) and pads features into batches."""

  config: ExperimentConfig
  tokenizer: Any

  def __post_init__(self):
    self.spec = TASKS[self.config.task.name]
    self.format = format_name(self.config)
    self.seq_len = self.config.data.seq_len
    self.input_len = self.config.task.max_input_len or self.seq_len
    self.target_len = self.config.task.max_target_len
    encode = lambda t: np.asarray(self.tokenizer.encode(t), np.int32)
    self.before, self.after = encode(self.spec.before), encode(self.spec.after)
    self._encode = encode

  # -- inputs ----------------------------------------------------------------------------------

  def source_ids(self, record: Record, budget: int) -> np.ndarray:
    room = budget - len(self.before) - len(self.after)
    if room < 1:
      raise DataError(f"the {self.spec.name} template takes {budget - room} tokens, more than "
                      f"the {budget} available; raise data.seq_len")
    return np.concatenate([self.before, self._encode(self.spec.source(record))[:room],
                           self.after]).astype(np.int32)

  def response_ids(self, record: Record) -> np.ndarray:
    ids = self._encode(self.spec.target(record))[:self.target_len - 1]
    return np.append(ids, self.tokenizer.eos_id).astype(np.int32)

  def prompt_ids(self, record: Record) -> np.ndarray:
    """The decoder's prompt: room is left for target_len generated tokens."""
    return self.source_ids(record, self.seq_len - self.target_len)

  def encoder_ids(self, record: Record) -> np.ndarray:
    return np.append(self.source_ids(record, self.input_len - 1), self.tokenizer.eos_id)

  # -- features --------------------------------------------------------------------------------

  def features(self, records: collections.abc.Sequence[Record]) -> list[Feature]:
    if self.format == "span":
      return [f for i, r in enumerate(records) for f in self.span_features(r, i)]
    make = getattr(self, f"_{self.format}_feature")
    return [make(r, i) for i, r in enumerate(records)]

  def _classify_feature(self, record: Record, index: int) -> Feature:
    text = self._encode(self.spec.source(record))
    eos = self.tokenizer.eos_id
    if self.config.model.family == "encoder":
      tokens = np.concatenate([[lead_id(self.tokenizer)], text[:self.seq_len - 2], [eos]])
    else:  # the decoder classifies from the EOS that ends the text
      tokens = np.append(text[:self.seq_len - 1], eos)
    return {"tokens": tokens.astype(np.int32), "label": record["label"], "example": index}

  def _seq2seq_feature(self, record: Record, index: int) -> Feature:
    return {"source": self.encoder_ids(record), "target": self.response_ids(record),
            "example": index}

  def _prompt_feature(self, record: Record, index: int) -> Feature:
    return {"prompt": self.prompt_ids(record), "target": self.response_ids(record),
            "example": index}

  def span_features(self, record: Record, index: int) -> list[Feature]:
    """Sliding windows [lead] question [eos] context-window [eos] over a long context; the
    label is the first answer's token span, or (0, 0) when the window does not hold it."""
    question = self._encode(record["question"])[:64]
    context_ids, offsets = encode_with_offsets(self.tokenizer, record["context"])
    window = self.seq_len - len(question) - 3
    if window < 8:
      raise DataError(f"data.seq_len={self.seq_len} leaves {window} context tokens per window; "
                      "raise data.seq_len")
    step = max(window - self.config.task.doc_stride, 1)
    answer_start = record["answer_starts"][0]
    answer_end = answer_start + len(record["answers"][0])
    first = int(np.searchsorted(offsets[:, 1], answer_start, side="right"))  # end > start
    last = int(np.searchsorted(offsets[:, 0], answer_end, side="left")) - 1  # start < end
    head = np.concatenate([[lead_id(self.tokenizer)], question, [self.tokenizer.eos_id]])
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

  # -- batches ---------------------------------------------------------------------------------

  def collate(self, features: list[Feature | None]) -> Batch:
    """Pads features to the batch shape; None rows are padding (weight 0)."""
    return getattr(self, f"_collate_{self.format}")(features)

  def _pad(self, rows: list[np.ndarray | None], length: int) -> np.ndarray:
    out = np.full((len(rows), length), self.tokenizer.pad_id, np.int32)
    for i, row in enumerate(rows):
      if row is not None:
        out[i, :len(row)] = row[:length]
    return out

  def _collate_classify(self, features):
    tokens = self._pad([f and f["tokens"] for f in features], self.seq_len)
    lengths = np.array([len(f["tokens"]) if f else 1 for f in features], np.int32)
    return {"inputs": tokens, "input_mask": np.arange(self.seq_len)[None] < lengths[:, None],
            "lengths": lengths, "labels": np.array([f["label"] if f else 0 for f in features],
                                                   np.int32),
            "weights": np.array([1.0 if f else 0.0 for f in features], np.float32)}

  def _collate_span(self, features):
    tokens = self._pad([f and f["tokens"] for f in features], self.seq_len)
    types = self._pad([f and f["token_types"].astype(np.int32) for f in features], self.seq_len)
    return {"inputs": tokens,
            "input_mask": np.arange(self.seq_len)[None] < np.array(
                [[len(f["tokens"]) if f else 0] for f in features]),
            "token_types": np.where(tokens == self.tokenizer.pad_id, 0, types).astype(np.int32),
            "starts": np.array([f["start"] if f else 0 for f in features], np.int32),
            "ends": np.array([f["end"] if f else 0 for f in features], np.int32),
            "weights": np.array([1.0 if f else 0.0 for f in features], np.float32)}

  def _collate_seq2seq(self, features):
    encoder_inputs = self._pad([f and f["source"] for f in features], self.input_len)
    targets = self._pad([f and f["target"] for f in features], self.target_len)
    weights = (np.arange(self.target_len)[None] < np.array(
        [[len(f["target"]) if f else 0] for f in features])).astype(np.float32)
    decoder_inputs = np.concatenate(  # T5 starts decoding from the pad id
        [np.full((len(features), 1), self.tokenizer.pad_id, np.int32), targets[:, :-1]], axis=1)
    return {"encoder_inputs": encoder_inputs,
            "encoder_mask": np.arange(self.input_len)[None] < np.array(
                [[len(f["source"]) if f else 0] for f in features]),
            "decoder_inputs": decoder_inputs, "targets": targets, "weights": weights}

  def _collate_prompt(self, features):
    rows, weights = [], np.zeros((len(features), self.seq_len), np.float32)
    for i, f in enumerate(features):
      if f is None:
        rows.append(None)
        continue
      sequence = np.concatenate([f["prompt"], f["target"]])[:self.seq_len + 1]
      rows.append(sequence)
      # Target j predicts sequence[j + 1]: only the response's tokens (and its EOS) count.
      weights[i, len(f["prompt"]) - 1:len(sequence) - 1] = 1.0
    sequences = self._pad(rows, self.seq_len + 1)
    return {"inputs": sequences[:, :-1], "targets": sequences[:, 1:], "weights": weights}


class _Collate:
  """grain map: a batch of feature indices -> the padded batch (picklable for workers)."""

  def __init__(self, featurizer: Featurizer, features: list[Feature]):
    self._featurizer, self._features = featurizer, features

  def __call__(self, indices: np.ndarray) -> Batch:
    return self._featurizer.collate([self._features[int(i)] for i in indices])


# ---------------------------------------------------------------------------------------------
# Data: what the trainer needs
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TaskData:
  tokenizer: Any
  featurizer: Featurizer
  train: grain.IterDataset
  data_dir: str
  process_index: int = 0
  process_count: int = 1
  _records: dict = dataclasses.field(default_factory=dict)
  _features: dict = dataclasses.field(default_factory=dict)

  def records(self, split: str) -> list[Record]:
    if split not in self._records:
      self._records[split] = task_data.load_records(self.featurizer.spec.name, split,
                                                    self.data_dir)
    return self._records[split]

  def eval_features(self, split: str, max_examples: int = 0) -> list[Feature]:
    key = (split, max_examples)
    if key not in self._features:
      records = self.records(split)
      self._features[key] = self.featurizer.features(
          records[:max_examples] if max_examples else records)
    return self._features[key]

  def eval_batches(self, split: str, batch_size: int, max_batches: int = 0,
                   max_examples: int = 0) -> Iterator[Batch]:
    """Every feature of the split once, in order, in fixed-shape local batches (the last one
    padded with zero-weight rows); process p takes rows [p*b, (p+1)*b) of each global batch."""
    features = self.eval_features(split, max_examples)
    local = pipeline.local_batch_size(batch_size, self.process_count)
    num_batches = -(-len(features) // batch_size)
    if max_batches:
      num_batches = min(num_batches, max_batches)
    for j in range(num_batches):
      rows = j * batch_size + self.process_index * local + np.arange(local)
      yield self.featurizer.collate([features[r] if r < len(features) else None for r in rows])


def tokenizer_texts(spec: TaskSpec, records: list[Record]) -> Iterator[str]:
  yield spec.before + spec.after + USER_PREFIX + ASSISTANT_PREFIX
  for record in records:
    yield spec.source(record)
    yield spec.target(record)


def build_task_data(config: ExperimentConfig, workdir: str | pathlib.Path, *,
                    process_index: int = 0, process_count: int = 1) -> TaskData:
  """Prepares the task's TFDS builder, builds (or reloads) the workdir's tokenizer, and makes
  the training dataset: every training feature once per epoch in a seeded order, forever."""
  from research.data import corpora  # pylint: disable=import-outside-toplevel
  spec = TASKS[config.task.name]
  data_dir = corpora.data_dir(config.data)
  train_records = task_data.load_records(spec.name, config.data.train_split, data_dir)
  tokenizer = tokenizers_lib.build_tokenizer(config.data, workdir,
                                             tokenizer_texts(spec, train_records))
  featurizer = Featurizer(config, tokenizer)
  features = featurizer.features(train_records)
  local = pipeline.local_batch_size(config.data.batch_size, process_count)
  if len(features) < config.data.batch_size:
    raise DataError(f"task {spec.name} has {len(features)} training examples, fewer than "
                    f"data.batch_size={config.data.batch_size}")
  seed = int(np.random.SeedSequence(config.data.shuffle_seed).generate_state(1)[0])
  ds = grain.MapDataset.range(len(features)).shuffle(seed=seed)
  ds = ds[process_index::process_count].repeat().batch(local, drop_remainder=True)
  ds = ds.map(_Collate(featurizer, features))
  train = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  return TaskData(tokenizer, featurizer, train, data_dir, process_index, process_count)


# ---------------------------------------------------------------------------------------------
# Models and losses
# ---------------------------------------------------------------------------------------------


def build_model(config: ExperimentConfig):
  fmt, family = format_name(config), config.model.family
  if fmt == "classify":
    cls = models.EncoderClassifier if family == "encoder" else models.DecoderClassifier
    return cls(config.model, num_classes=TASKS[config.task.name].num_classes)
  if fmt == "span":
    return models.EncoderSpanQA(config.model)
  return models.build_model(config.model)


def _class_sums(logits, labels, weights):
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return {"loss_sum": jnp.sum(losses * weights), "correct_sum": jnp.sum(correct * weights),
          "weight_sum": jnp.sum(weights)}


def classify_loss(model, params, batch, *, rngs=None, deterministic=True):
  if isinstance(model, models.DecoderClassifier):
    logits = model.apply({"params": params}, batch["inputs"], lengths=batch["lengths"],
                         deterministic=deterministic, rngs=rngs)
  else:
    logits = model.apply({"params": params}, batch["inputs"], input_mask=batch["input_mask"],
                         deterministic=deterministic, rngs=rngs)
  return _class_sums(logits, batch["labels"], batch["weights"])


def _span_logits(model, params, batch, rngs=None, deterministic=True):
  types = batch["token_types"] if model.config.num_token_types else None
  start, end = model.apply({"params": params}, batch["inputs"], input_mask=batch["input_mask"],
                           token_types=types, deterministic=deterministic, rngs=rngs)
  neg = jnp.finfo(jnp.float32).min
  return (jnp.where(batch["input_mask"], start, neg), jnp.where(batch["input_mask"], end, neg))


def span_loss(model, params, batch, *, rngs=None, deterministic=True):
  """Mean of the start and end cross-entropies; accuracy = both ends right."""
  start, end = _span_logits(model, params, batch, rngs, deterministic)
  w = batch["weights"]
  loss = 0.5 * (optax.softmax_cross_entropy_with_integer_labels(start, batch["starts"]) +
                optax.softmax_cross_entropy_with_integer_labels(end, batch["ends"]))
  correct = ((jnp.argmax(start, -1) == batch["starts"]) & (jnp.argmax(end, -1) == batch["ends"]))
  return {"loss_sum": jnp.sum(loss * w), "correct_sum": jnp.sum(correct * w),
          "weight_sum": jnp.sum(w)}


def loss_fn(config: ExperimentConfig) -> Callable:
  return {"classify": classify_loss, "span": span_loss, "seq2seq": objectives.seq2seq_loss,
          "prompt": objectives.decoder_loss}[format_name(config)]


# ---------------------------------------------------------------------------------------------
# Predictions and metrics
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("model",))
def _classify_predictions(params, batch, *, model):
  if isinstance(model, models.DecoderClassifier):
    logits = model.apply({"params": params}, batch["inputs"], lengths=batch["lengths"])
  else:
    logits = model.apply({"params": params}, batch["inputs"], input_mask=batch["input_mask"])
  return jnp.argmax(logits, -1)


@functools.partial(jax.jit, static_argnames=("model",))
def _span_scores(params, batch, *, model):
  return _span_logits(model, params, batch)


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


def _generate(model, params, inputs: list[np.ndarray], config: ExperimentConfig, tokenizer,
              seq2seq: bool) -> list[np.ndarray]:
  """Generated ids (EOS and after removed) for each input, in batches of task.eval_batch_size."""
  task = config.task
  batch_size = task.eval_batch_size
  width = max(len(x) for x in inputs)
  outputs = []
  for start in range(0, len(inputs), batch_size):
    chunk = inputs[start:start + batch_size]
    rows = chunk + [chunk[0]] * (batch_size - len(chunk))  # fixed shape: one compilation
    lengths = np.array([len(r) for r in rows], np.int32)
    padded = np.full((batch_size, width), tokenizer.pad_id, np.int32)
    for i, r in enumerate(rows):
      padded[i, :len(r)] = r
    mask = np.arange(width)[None] < lengths[:, None]
    if task.decoding == "beam":
      tokens, _, _ = decode.beam_search(
          model, params, padded, task.beam_size, task.max_target_len, tokenizer.eos_id,
          input_mask=mask, length_penalty=task.length_penalty, start_id=tokenizer.pad_id,
          prompt_lengths=None if seq2seq else lengths)
      new = tokens[:, 0]
    elif seq2seq:
      new = decode.generate_seq2seq(
          model, params, padded, mask, task.max_target_len, jax.random.key(0),
          decode.SamplingConfig(temperature=0.0), eos_id=tokenizer.eos_id,
          start_id=tokenizer.pad_id)
    else:
      new = decode.generate_padded(model, params, padded, lengths, task.max_target_len,
                                   eos_id=tokenizer.eos_id)
    for row in np.asarray(new)[:len(chunk)]:
      hits = np.flatnonzero(row == tokenizer.eos_id)
      outputs.append(row[:hits[0]] if hits.size else row)
  return outputs


def predict_texts(exp, params, split: str, max_examples: int = 0) -> tuple[list[str], list]:
  """(predicted text, references) for each example of the split, as the task's format does."""
  data: TaskData = exp.data
  featurizer, tokenizer, config = data.featurizer, data.tokenizer, exp.config
  records = data.records(split)[:max_examples or None]
  references = [featurizer.spec.references(r) for r in records]
  fmt = featurizer.format
  if fmt == "classify":
    predictions = []
    for batch in data.eval_batches(split, config.task.eval_batch_size, max_examples=max_examples):
      predictions.extend(np.asarray(_classify_predictions(params, batch, model=exp.model)))
    return [LABEL_WORDS[int(p)] for p in predictions[:len(records)]], references
  if fmt == "span":
    features = data.eval_features(split, max_examples)
    best = [(-np.inf, "")] * len(records)
    for j, batch in enumerate(data.eval_batches(split, config.task.eval_batch_size,
                                                max_examples=max_examples)):
      starts, ends = jax.device_get(_span_scores(params, batch, model=exp.model))
      for r in range(len(starts)):
        index = j * config.task.eval_batch_size + r
        if index >= len(features):
          break
        f = features[index]
        first = int(np.argmax(f["token_types"]))  # the first context token of the window
        last = len(f["tokens"]) - 2  # the last context token (before the final EOS)
        score, i, k = best_span(starts[r], ends[r], first, last, config.task.max_answer_len)
        if score > best[f["example"]][0]:
          offsets = f["offsets"]
          context = records[f["example"]]["context"]
          text = context[offsets[i - f["context_offset"], 0]:offsets[k - f["context_offset"], 1]]
          best[f["example"]] = (score, text)
    return [text for _, text in best], references
  seq2seq = fmt == "seq2seq"
  inputs = [featurizer.encoder_ids(r) if seq2seq else featurizer.prompt_ids(r) for r in records]
  generated = _generate(exp.model, params, inputs, config, tokenizer, seq2seq)
  return [tokenizer.decode(g).strip() for g in generated], references


def task_metrics(exp, params, split: str, max_examples: int = 0) -> dict[str, Any]:
  """The task's metric(s) on a split, from the model's predictions."""
  predictions, references = predict_texts(exp, params, split, max_examples)
  result = exp.data.featurizer.spec.metric(predictions, references)
  result["examples"] = len(predictions)
  return result


# ---------------------------------------------------------------------------------------------
# Starting from a pretrained workdir
# ---------------------------------------------------------------------------------------------


def copy_tokenizer(source_workdir: str | pathlib.Path, workdir: str | pathlib.Path) -> None:
  """Gives `workdir` the pretrained run's tokenizer (unless it already has one)."""
  source = pathlib.Path(source_workdir) / "tokenizer"
  target = pathlib.Path(workdir) / "tokenizer"
  if not target.exists():
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target)
