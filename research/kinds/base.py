"""What every task kind shares: the task description, tokens with offsets, metrics by name, and
the generative formats (encoder-decoder input -> target, decoder prompt -> continuation).

A kind (classification, span QA, text-to-text, instruction) is a subclass of `Kind`: one
object owns the task's features, batches, model head per family, loss, predictions, metric
and the head's name for FLOP counts. A kind that has a head of its own on some family
(a classifier, a span head) overrides the methods for that format and leaves the generative
ones to this class.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, ClassVar, Sequence

import jax
import numpy as np

from research import decode, metrics as metrics_lib, models, objectives, taskdefs
from research.config import DataError, ExperimentConfig
from research.data import packing, tokenizers as tokenizers_lib
from research.taskdefs import TaskDef  # pylint: disable=unused-import

Batch = dict[str, np.ndarray]
Record = dict[str, Any]
Feature = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Metrics by name: a corpus metric and a per-example score for the predictions file
# ---------------------------------------------------------------------------------------------


def _accuracy(predictions, references):
  return {"accuracy": float(np.mean([p.strip() == r[0] for p, r in zip(predictions, references)]))}


def _exact_match(predictions, references):
  return {"exact_match": 100 * float(np.mean([metrics_lib.squad_exact_match(p, r)
                                              for p, r in zip(predictions, references)]))}


def _squad(predictions, references):
  return {**_exact_match(predictions, references),
          "f1": 100 * float(np.mean([metrics_lib.squad_f1(p, r)
                                     for p, r in zip(predictions, references)]))}


def _bleu(predictions, references):
  score, signature = metrics_lib.bleu(predictions, [r[0] for r in references])
  return {"bleu": score, "bleu_signature": signature}


def _rouge(predictions, references):
  return {k: 100 * v for k, v in metrics_lib.rouge(predictions, references).items()}


def _sentence_bleu(prediction: str, references: list[str]) -> dict[str, Any]:
  # sacrebleu: only for a task scored by BLEU
  import sacrebleu  # pylint: disable=import-outside-toplevel
  return {"score": sacrebleu.sentence_bleu(prediction, references[:1]).score}


METRICS: dict[str, tuple[Callable, Callable[[str, list[str]], dict[str, Any]]]] = {
    # name: (corpus metric(predictions, references), one example's score for the predictions file)
    "accuracy": (_accuracy, lambda p, r: {"correct": p.strip() == r[0]}),
    "exact_match": (_exact_match,
                    lambda p, r: {"correct": bool(metrics_lib.squad_exact_match(p, r))}),
    "squad_f1": (_squad, lambda p, r: {"correct": bool(metrics_lib.squad_exact_match(p, r)),
                                       "score": 100 * metrics_lib.squad_f1(p, r)}),
    "bleu": (_bleu, _sentence_bleu),
    "rouge": (_rouge, lambda p, r: {"score": 100 * metrics_lib.rouge([p], [r])["rougeL"]}),
}


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


def _sized_for(model, length: int):
  """A decoder whose context (model.max_len, the size of its KV cache) is `length` rounded up
  to 64, when that is shorter and no parameter depends on it (positions not learned): Gemma's
  32,768-position context would give a task's generation a cache of gigabytes."""
  cfg = model.config
  length = -(-length // 64) * 64
  if cfg.position == "learned" or length >= cfg.max_len:
    return model
  return type(model)(dataclasses.replace(cfg, max_len=length))


def begin_of_text(tokenizer) -> np.ndarray:
  """The ids a Hugging Face tokenizer's template puts before a text (Gemma's <bos>, Llama 3's
  <|begin_of_text|>; none for GPT-2 or the tokenizers trained here): a decoder pretrained with
  them reads a text without them badly."""
  if getattr(tokenizer, "kind", "") != "hf":
    return np.zeros(0, np.int32)
  ids = [int(i) for i in tokenizer.encode("", add_special_tokens=True)]
  return np.asarray([i for i in ids if i != tokenizer.eos_id], np.int32)


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


@functools.partial(jax.jit, static_argnames=("fn", "model"))
def _jitted(params, batch, *, fn, model):
  return fn(model, params, batch)


# ---------------------------------------------------------------------------------------------
# The base kind: the generative formats
# ---------------------------------------------------------------------------------------------


class Kind:
  """A task kind bound to one task and one config (and, for features, a tokenizer)."""

  NAME: ClassVar[str]
  # What the kind is without data, from research.taskdefs (where research.config reads it too).
  FACTS: ClassVar[taskdefs.KindFacts]
  FAMILIES: ClassVar[tuple[str, ...]]
  TEMPLATE: ClassVar[tuple[str, str]]  # a user's task: (before, after)
  LABELLED: ClassVar[bool] = False  # predicts among labels (labels_from)
  ROWS_PER_EXAMPLE: ClassVar[int] = 1  # sequences a training example runs (FLOP counts)

  def __init__(self, task: TaskDef, config: ExperimentConfig, tokenizer=None,
               labels: Sequence[str] = ()):
    self.task, self.config, self.tokenizer = task, config, tokenizer
    self.labels = tuple(labels)
    self.family = config.model.family
    self.format = self.format_for(self.family)
    self.seq_len = config.data.seq_len
    self.input_len = config.task.max_input_len or self.seq_len
    self.target_len = config.task.max_target_len
    if tokenizer is not None:
      # The token that ends a response and where its generation stops (a kind whose
      # responses end with another token sets its own).
      self.end_id = tokenizer.eos_id
      self.before, self.after = self._encode(task.before), self._encode(task.after)
      if self.format == "prompt":  # a pretrained decoder's prompt opens as it was trained to
        self.before = np.concatenate([begin_of_text(tokenizer), self.before]).astype(np.int32)

  def _encode(self, text: str) -> np.ndarray:
    return np.asarray(self.tokenizer.encode(text), np.int32)

  # -- what the kind is, per family (class level: no data needed) -----------------------------

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    cls.FACTS = taskdefs.KIND_FACTS[cls.NAME]
    cls.FAMILIES, cls.TEMPLATE = cls.FACTS.families, cls.FACTS.template

  @classmethod
  def format_for(cls, family: str) -> str:
    """'seq2seq', 'prompt', or the kind's own head's format (research.taskdefs.KindFacts)."""
    return cls.FACTS.format_for(family)

  @classmethod
  def head_for(cls, family: str) -> str | None:
    """The output head trained (research.flops.HEADS); None: the family's LM head."""
    return None

  @classmethod
  def check(cls, config: ExperimentConfig) -> None:
    """Raises ConfigError when the config cannot run this kind."""
    taskdefs.check_kind(cls.FACTS, config)

  @classmethod
  def labels_from(cls, task: TaskDef, records: list[Record]) -> tuple[str, ...]:
    """Label words a model of this kind predicts among (classification); () otherwise."""
    del task, records
    return ()

  # -- text -----------------------------------------------------------------------------------

  def source(self, record: Record) -> str:
    raise NotImplementedError

  def target(self, record: Record) -> str:
    raise NotImplementedError

  def references(self, record: Record) -> list[str]:
    return [self.target(record)]

  def input_text(self, record: Record) -> Any:
    """What the predictions file shows as the example's input."""
    return self.source(record)

  def tokenizer_texts(self, records: list[Record]):
    for record in records:
      yield self.source(record)
      yield self.target(record)

  def metric(self, predictions: list[str], references: list[list[str]]) -> dict[str, Any]:
    return METRICS[self.task.metric][0](predictions, references)

  def example_score(self, prediction: str, references: list[str]) -> dict[str, Any]:
    return METRICS[self.task.metric][1](prediction, references)

  # -- generative features ---------------------------------------------------------------------

  def source_ids(self, record: Record, budget: int) -> np.ndarray:
    room = budget - len(self.before) - len(self.after)
    if room < 1:
      raise DataError(f"the {self.task.name} template takes {budget - room} tokens, more than "
                      f"the {budget} available; raise data.seq_len")
    return np.concatenate([self.before, self._encode(self.source(record))[:room],
                           self.after]).astype(np.int32)

  def response_ids(self, record: Record) -> np.ndarray:
    ids = self._encode(self.target(record))[:self.target_len - 1]
    return np.append(ids, self.end_id).astype(np.int32)

  def prompt_ids(self, record: Record) -> np.ndarray:
    """The decoder's prompt: room is left for target_len generated tokens."""
    return self.source_ids(record, self.seq_len - self.target_len)

  def encoder_ids(self, record: Record) -> np.ndarray:
    return np.append(self.source_ids(record, self.input_len - 1), self.tokenizer.eos_id)

  def features(self, records: Sequence[Record]) -> list[Feature]:
    if self.format == "seq2seq":
      return [{"source": self.encoder_ids(r), "target": self.response_ids(r), "example": i}
              for i, r in enumerate(records)]
    return [{"prompt": self.prompt_ids(r), "target": self.response_ids(r), "example": i}
            for i, r in enumerate(records)]

  # -- batches ---------------------------------------------------------------------------------

  def _pad(self, rows: list[np.ndarray | None], length: int) -> np.ndarray:
    out = np.full((len(rows), length), self.tokenizer.pad_id, np.int32)
    for i, row in enumerate(rows):
      if row is not None:
        out[i, :len(row)] = row[:length]
    return out

  def collate(self, features: list[Feature | None]) -> Batch:
    """Pads features to the batch shape; None rows are padding (weight 0)."""
    if self.format == "seq2seq":
      return self._collate_seq2seq(features)
    return self._collate_prompt(features)

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

  # -- packed batches (task.packing) -----------------------------------------------------------

  def pack_lengths(self, features: Sequence[Feature | None] = ()) -> dict[str, int]:
    """The row length of each packed array (research.data.packing.pack_windows): data.seq_len + 1
    tokens for the decoder; for the encoder-decoder, data.seq_len input tokens (at least
    max_input_len), so that a data.seq_len longer than max_input_len makes rows that hold
    several examples each, and targets in the proportion of the training `features` (cut as
    pack_example cuts them), rounded to the nearest multiple of 8: rows sized by max lengths
    instead left a translation's target rows 57% full while its input rows were 96% full
    (Spanish runs longer than English, and the input holds a task prefix). Rounding up instead
    (spa_eng_t5, 96 inputs: 57.3 -> 64 targets, not 56) left the rows 91.2% full, not 93.3%."""
    if self.format == "seq2seq":
      inputs = max(self.seq_len, self.input_len)
      return {"source": inputs, "target": self._packed_target_len(inputs, features)}
    return {"tokens": self.seq_len + 1, "loss_mask": self.seq_len + 1}

  def _packed_target_len(self, inputs: int, features: Sequence[Feature | None]) -> int:
    """Target tokens per packed row: `inputs` times the features' ratio of target to input
    tokens, at least max_target_len (one example always fits) and at most the proportion of
    the max lengths (what it was without features)."""
    _, by_max_lengths = objectives.sequence_lengths(self.config)  # the config-only bound
    source = sum(min(len(f["source"]), self.input_len) for f in features if f is not None)
    target = sum(min(len(f["target"]), self.target_len) for f in features if f is not None)
    if not source:
      return by_max_lengths
    by_data = 8 * round(inputs * target / (8 * source))
    return min(by_max_lengths, max(self.target_len, by_data))

  def pack_example(self, feature: Feature) -> dict[str, np.ndarray]:
    """A feature as the arrays pack_windows packs: what collate would put in its row."""
    if self.format == "seq2seq":
      return {"source": feature["source"][:self.input_len],
              "target": feature["target"][:self.target_len]}
    tokens = np.concatenate([feature["prompt"], feature["target"]])[:self.seq_len + 1]
    response = np.arange(len(tokens)) >= len(feature["prompt"])  # the response and its EOS
    return {"tokens": tokens.astype(np.int32), "loss_mask": response.astype(np.int32)}

  def collate_packed(self, rows: Batch) -> Batch:
    """A batch of packed rows -> collate's batch plus segment ids and positions, the weights
    on the same tokens as unpacked (research/data/packing.py)."""
    if self.format == "seq2seq":
      return packing.seq2seq_batch(
          rows["source"], rows["source_segment_ids"], rows["source_positions"], rows["target"],
          rows["target_segment_ids"], rows["target_positions"], self.tokenizer.pad_id)
    return packing.next_token_batch(rows["tokens"], rows["tokens_segment_ids"],
                                    rows["tokens_positions"], rows["loss_mask"])

  # -- what a run computes once and keeps in its workdir -----------------------------------------

  def prepare(self, exp, params, workdir) -> None:
    """Before a fresh run's first step (research.train): what the kind computes once from the
    model the run starts from and keeps in the workdir (the preference kind's reference
    log-probabilities). exp: the research.experiment.Experiment; params: its first state's
    (exp.model_params gives the model's tree). Nothing for most kinds."""
    del exp, params, workdir

  def restore(self, workdir) -> None:
    """Reads back what `prepare` kept in the workdir (a resumed run, an evaluation)."""
    del workdir

  # -- model and loss --------------------------------------------------------------------------

  def build_model(self, model_config: models.ModelConfig):
    return models.build_model(model_config)

  def loss(self, model, params, batch, *, rngs=None, deterministic=True):
    fn = objectives.seq2seq_loss if self.format == "seq2seq" else objectives.decoder_loss
    return fn(model, params, batch, rngs=rngs, deterministic=deterministic)

  # -- predictions -----------------------------------------------------------------------------

  def predict(self, model, params, data, split: str, max_examples: int = 0) -> list[str]:
    """The predicted text of each example of the split (its first max_examples; 0: all);
    data: research.tasks.TaskData."""
    records = data.records(split)[:max_examples or None]
    seq2seq = self.format == "seq2seq"
    inputs = [self.encoder_ids(r) if seq2seq else self.prompt_ids(r) for r in records]
    generated = self._generate(model, params, inputs, seq2seq)
    return [self.tokenizer.decode(g).strip() for g in generated]

  def _generate(self, model, params, inputs: list[np.ndarray], seq2seq: bool) -> list[np.ndarray]:
    """Generated ids (the end token and after removed) for each input, in batches of
    task.eval_batch_size."""
    task, tokenizer, end_id = self.config.task, self.tokenizer, self.end_id
    batch_size = task.eval_batch_size
    width = max(len(x) for x in inputs)
    if not seq2seq:  # a KV cache of what is generated, not of the model's whole context
      model = _sized_for(model, width + task.max_target_len + 1)
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
            model, params, padded, task.beam_size, task.max_target_len, end_id,
            input_mask=mask, length_penalty=task.length_penalty, start_id=tokenizer.pad_id,
            prompt_lengths=None if seq2seq else lengths)
        new = tokens[:, 0]
      elif seq2seq:
        new = decode.generate_seq2seq(
            model, params, padded, mask, task.max_target_len, jax.random.key(0),
            decode.SamplingConfig(temperature=0.0), eos_id=end_id,
            start_id=tokenizer.pad_id)
      else:
        new = decode.generate_padded(model, params, padded, lengths, task.max_target_len,
                                     eos_id=end_id)
      for row in np.asarray(new)[:len(chunk)]:
        hits = np.flatnonzero(row == end_id)
        outputs.append(row[:hits[0]] if hits.size else row)
    return outputs

  def batched(self, fn, model, params, batch):
    """fn(model, params, batch) under jit, compiled once per (fn, model)."""
    return _jitted(params, batch, fn=fn, model=model)
