"""Fine-tuning tasks: a task's records -> its kind's features and batches, the model, the loss,
predictions, metrics and the predictions file.

A task is a description (research.kinds.TaskDef: a bundled entry of research.kinds.TASKS, or a
user's files named by task.kind / task.train_files / task.eval_files / the field options) run by
the object of its kind (research/kinds/: classification, span_qa, text_to_text, instruction),
in the format that kind gives the model's family:

  kind            encoder                 decoder                       encoder_decoder
  classification  [lead] a [eos] (b [eos]) a ([eos] b) [eos]             writes the label word
                  -> pooled classifier    -> last-token classifier
  span_qa         sliding windows ->      prompt -> answer              question + context
                  start/end scores                                      -> answer
  text_to_text    -                       prompt -> continuation        input -> target
  instruction     -                       chat template, loss on the    instruction -> response
                                          response only
  preference      -                       prompt -> chosen and rejected -
                                          responses, DPO loss

Generation formats are scored by decoding the evaluation split (greedy or beam search,
task.decoding) and computing the task's metric on the text. With task.packing, their training
examples are packed several to a row, 1,024 at a time, kept apart by segment ids
(research/data/packing.py, pack_windows); evaluation and generation stay one example per row.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterator

import grain
import numpy as np
from etils import epath

from research import kinds, paths
from research import workdir as workdir_lib
from research.config import DataError, ExperimentConfig
from research.data import corpora, packing, pipeline, tasks as task_data, tokenizers as tokenizers_lib
from research.kinds.base import TaskDef, encode_with_offsets, lead_id  # noqa: F401 (re-exported)
from research.kinds.instruction import (  # noqa: F401 (research.chat speaks the template)
    ASSISTANT_PREFIX, TURN_SEPARATOR, USER_PREFIX, instruction_text)
from research.kinds.span_qa import best_span  # noqa: F401

Batch = dict[str, np.ndarray]
Record = dict[str, Any]
Feature = dict[str, Any]

LABELS_FILE = "labels.json"  # a classification task's labels, listed in the workdir


def format_name(config: ExperimentConfig) -> str:
  """The batch format the config's task kind uses on its family: classify | span | seq2seq |
  prompt (research.bench and research.aot make synthetic batches of it)."""
  return kinds.kind_class(config).format_for(config.model.family)


def task_name(config: ExperimentConfig) -> str:
  """What reports call the task: the bundled name, or 'user (<kind>)'."""
  task = kinds.task_of(config)
  return f"user ({task.kind})" if kinds.is_user_task(config) else task.name


def records(task: TaskDef, split: str, data_dir: str) -> list[Record]:
  """Every record of a split, read from the task's TFDS dataset (built on first use)."""
  if task.files:
    return task_data.load_user_records(task, split, data_dir)
  return task_data.load_records(task.dataset_name, split, data_dir)


def _data_dir(config: ExperimentConfig) -> str:
  return corpora.data_dir(config.data)


def kind_of(config: ExperimentConfig, tokenizer=None) -> kinds.Kind:
  """The object of the config's task kind; a classification task's labels come from its
  description or, for a user's task, from its training records."""
  task = kinds.task_of(config)
  cls = kinds.KINDS[task.kind]
  labels = ()
  if cls.LABELLED:  # every training record, even when data.train_split takes a slice
    labels = task.labels or cls.labels_from(
        task, records(task, config.data.train_split.split("[")[0], _data_dir(config)))
  return cls(task, config, tokenizer, labels)


# ---------------------------------------------------------------------------------------------
# Data: what the trainer needs
# ---------------------------------------------------------------------------------------------


class _Collate:
  """grain map: a batch of feature indices -> the padded batch (picklable for workers)."""

  def __init__(self, kind: kinds.Kind, features: list[Feature]):
    self._kind, self._features = kind, features

  def __call__(self, indices: np.ndarray) -> Batch:
    return self._kind.collate([self._features[int(i)] for i in indices])


class _PackExample:
  """grain map: a feature index -> the arrays its kind packs (task.packing)."""

  def __init__(self, kind: kinds.Kind, features: list[Feature]):
    self._kind, self._features = kind, features

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    return self._kind.pack_example(self._features[int(index)])


class _CollatePacked:
  """grain map: a batch of packed rows -> the packed training batch."""

  def __init__(self, kind: kinds.Kind):
    self._kind = kind

  def __call__(self, rows: Batch) -> Batch:
    return self._kind.collate_packed(rows)


@dataclasses.dataclass
class TaskData:
  tokenizer: Any
  kind: kinds.Kind
  train: grain.IterDataset
  data_dir: str
  process_index: int = 0
  process_count: int = 1
  # (input, target) lengths of a training row where they differ from what the config alone says
  # (research.flops.sequence_lengths): a packed encoder-decoder's, whose target rows follow the
  # data (Kind.pack_lengths). None: the config's.
  row_lengths: tuple[int, int] | None = None
  _records: dict = dataclasses.field(default_factory=dict)
  _features: dict = dataclasses.field(default_factory=dict)

  def records(self, split: str) -> list[Record]:
    if split not in self._records:
      self._records[split] = records(self.kind.task, split, self.data_dir)
    return self._records[split]

  def eval_features(self, split: str, max_examples: int = 0) -> list[Feature]:
    key = (split, max_examples)
    if key not in self._features:
      rows = self.records(split)
      self._features[key] = self.kind.features(rows[:max_examples] if max_examples else rows)
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
      yield self.kind.collate([features[r] if r < len(features) else None for r in rows])


def tokenizer_texts(kind: kinds.Kind, train_records: list[Record]) -> Iterator[str]:
  yield kind.task.before + kind.task.after + USER_PREFIX + ASSISTANT_PREFIX
  yield from kind.tokenizer_texts(train_records)


def record_labels(workdir: epath.Path, labels: tuple[str, ...], task: TaskDef,
                  write: bool) -> None:
  """Lists a user's classification labels in the workdir (labels.json); a workdir that lists
  others (the files now carry other label names) is refused: its trained head's outputs mean
  those labels, in that order."""
  path = workdir / LABELS_FILE
  if path.exists():
    saved = workdir_lib.read_json(path, "delete it to list the labels of these files again "
                                        "(only if the labels are those the run trained on)")
    saved = saved.get("labels") if isinstance(saved, dict) else saved
    if saved == list(labels):
      return
    raise DataError(f"the task's files carry other labels ({', '.join(labels)}) than the run in "
                    f"{workdir} was trained on ({', '.join(map(str, saved or []))}, in "
                    f"{path}); its classifier's outputs mean those: use a new --workdir, or "
                    f"files whose '{task.label_field}' holds the same labels")
  if write:
    paths.write_atomic(path, json.dumps({"labels": list(labels)}, indent=1) + "\n")


def build_task_data(config: ExperimentConfig, workdir: str | os.PathLike, *,
                    process_index: int = 0, process_count: int = 1) -> TaskData:
  """Prepares the task's TFDS dataset, builds (or reloads) the workdir's tokenizer, and makes
  the training dataset: every training feature once per epoch in a seeded order, forever."""
  task = kinds.task_of(config)
  data_dir = _data_dir(config)
  train_records = records(task, config.data.train_split, data_dir)
  kind = kind_of(config)
  tokenizer = tokenizers_lib.build_tokenizer(config.data, workdir,
                                             tokenizer_texts(kind, train_records))
  kind = kinds.KINDS[task.kind](task, config, tokenizer, kind.labels)
  if task.files and kind.labels:
    record_labels(epath.Path(workdir), kind.labels, task, process_index == 0)
  kind.restore(epath.Path(workdir))  # what a run's start kept there (Kind.prepare)
  features = kind.features(train_records)
  local = pipeline.local_batch_size(config.data.batch_size, process_count)
  if len(features) < config.data.batch_size:
    raise DataError(f"task {task.name} has {len(features)} training examples, fewer than "
                    f"data.batch_size={config.data.batch_size}")
  seed = int(np.random.SeedSequence(config.data.shuffle_seed).generate_state(1)[0])
  ds = grain.MapDataset.range(len(features)).shuffle(seed=seed)
  ds = ds[process_index::process_count].repeat()
  read = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  row_lengths = None
  if config.task.packing:  # examples packed into rows, a window at a time, then batched
    lengths = kind.pack_lengths(features)
    if kind.format == "seq2seq":
      row_lengths = (lengths["source"], lengths["target"])
    rows = packing.pack_windows(
        ds.map(_PackExample(kind, features)).to_iter_dataset(read), lengths, seed=seed,
        padding={k: tokenizer.pad_id for k in lengths if k != "loss_mask"})
    train = rows.batch(local, drop_remainder=True).map(_CollatePacked(kind))
  else:
    ds = ds.batch(local, drop_remainder=True).map(_Collate(kind, features))
    train = ds.to_iter_dataset(read)
  return TaskData(tokenizer, kind, train, data_dir, process_index, process_count, row_lengths)


# ---------------------------------------------------------------------------------------------
# Models and losses (the kind's, for the family)
# ---------------------------------------------------------------------------------------------


def build_model(config: ExperimentConfig):
  return kind_of(config).build_model(config.model)


def loss_fn(config: ExperimentConfig) -> Callable:
  return kind_of(config).loss


# ---------------------------------------------------------------------------------------------
# Predictions and metrics
# ---------------------------------------------------------------------------------------------


def predict_texts(exp, params, split: str, max_examples: int = 0) -> tuple[list[str], list]:
  """(predicted text, references) for each example of the split."""
  data: TaskData = exp.data
  kind = data.kind
  rows = data.records(split)[:max_examples or None]
  references = [kind.references(r) for r in rows]
  return kind.predict(exp.model, params, data, split, max_examples), references


def task_metrics(exp, params, split: str, max_examples: int = 0,
                 predictions_file: str | os.PathLike | None = None) -> dict[str, Any]:
  """The task's metric(s) on a split, from the model's predictions; with predictions_file,
  also one JSON line per example: input, reference(s), prediction and correct / score."""
  predictions, references = predict_texts(exp, params, split, max_examples)
  kind = exp.data.kind
  result = kind.metric(predictions, references)
  result["examples"] = len(predictions)
  if predictions_file:
    rows = exp.data.records(split)[:max_examples or None]
    lines = []
    for row, prediction, refs in zip(rows, predictions, references):
      line = {"input": kind.input_text(row),
              "reference": refs[0] if len(refs) == 1 else refs,
              "prediction": prediction, **kind.example_score(prediction, refs)}
      lines.append(json.dumps(line, ensure_ascii=False) + "\n")
    paths.write_atomic(epath.Path(predictions_file), "".join(lines))
  return result


# ---------------------------------------------------------------------------------------------
# Starting from a pretrained workdir
# ---------------------------------------------------------------------------------------------


def copy_tokenizer(source_workdir: str | os.PathLike, workdir: str | os.PathLike) -> None:
  """Gives `workdir` the pretrained run's tokenizer (unless it already has one)."""
  source = epath.Path(source_workdir) / "tokenizer"
  target = epath.Path(workdir) / "tokenizer"
  # On cloud storage the manifest, copied last, says a copy is whole (as in build_tokenizer).
  if not (target / tokenizers_lib.MANIFEST if paths.is_url(target) else target).exists():
    target.parent.mkdir(parents=True, exist_ok=True)
    paths.copy_tree(source, target, last=(tokenizers_lib.MANIFEST,))
