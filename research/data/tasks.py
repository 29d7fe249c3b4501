"""Fine-tuning tasks as TFDS builders over the bundled files in data/.

  task       files                                   splits                       record fields
  sst2       data/sst2/{train,dev}.tsv               train, validation (= dev)    sentence, label
  squad      data/squad_v1_1/{train,validation}.jsonl train, validation           id, context, question,
                                                                                   answers, answer_starts
  spa_eng    data/spa_eng/{train,validation,test}.tsv train, validation, test     es, en
  scitldr    data/scitldr/{train,validation,test}.jsonl train, validation, test   id, document, summary,
                                                                                   all_summaries
  alpaca     data/alpaca_instructions/*.jsonl         train, validation           instruction, input, output

Each builder writes ArrayRecord files under data.data_dir (default data/tfds) on first use and
is read back with `as_data_source`, without TensorFlow. Malformed rows are errors, not skipped:
the builder stops with a DataError naming the file, the line and the fix (a TSV row with a
missing column, a label that is not 0/1, an answer span outside its context, an empty
document or summary), and nothing is written.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import functools
import hashlib
import io
import json
import os
import pathlib
import sys
from typing import Any, Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from research import paths
from research.config import DataError
from research.data import corpora

Record = dict[str, Any]


def _lines(path: pathlib.Path) -> Iterator[tuple[int, str]]:
  """(line number, line) of a UTF-8 file, blank lines skipped."""
  text = corpora._read_utf8(path)  # pylint: disable=protected-access
  for line_no, line in enumerate(text.split("\n"), start=1):
    if line.strip():
      yield line_no, line.rstrip("\r")


def read_tsv(path: pathlib.Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
  """Rows of a TSV with a header naming at least `columns`; a short row is a DataError."""
  rows = _lines(path)
  try:
    _, header_line = next(rows)
  except StopIteration:
    raise DataError(f"{path} is empty; it needs a header row {'<TAB>'.join(columns)}") from None
  header = header_line.split("\t")
  missing = [c for c in columns if c not in header]
  if missing:
    raise DataError(f"{path}:1: header {header} lacks column(s) {missing}; the first row must "
                    f"name the columns {'<TAB>'.join(columns)}")
  index = {c: header.index(c) for c in columns}
  for line_no, line in rows:
    fields = line.split("\t")
    if len(fields) != len(header):
      raise DataError(f"{path}:{line_no}: expected {len(header)} tab-separated columns "
                      f"({', '.join(header)}), got {len(fields)}; fix or delete the row")
    yield line_no, {c: fields[i] for c, i in index.items()}


def read_jsonl(path: pathlib.Path, fields: dict[str, type]) -> Iterator[tuple[int, dict]]:
  """Records of a JSON-lines file; a bad line or a missing/mistyped field is a DataError."""
  for line_no, line in _lines(path):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{line_no}: malformed JSON line ({e.msg}); fix or delete it") from None
    if not isinstance(record, dict):
      raise DataError(f"{path}:{line_no}: expected a JSON object per line")
    for name, kind in fields.items():
      if not isinstance(record.get(name), kind):
        raise DataError(f"{path}:{line_no}: field '{name}' is missing or not a "
                        f"{kind.__name__}; fix or delete the line")
    yield line_no, record


def read_csv(path: pathlib.Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
  """Rows of a CSV (quoted fields may hold commas and newlines) with a header naming at least
  `columns`; a short row is a DataError."""
  reader = csv.reader(io.StringIO(corpora._read_utf8(path)))  # pylint: disable=protected-access
  header = next(reader, None)
  if not header:
    raise DataError(f"{path} is empty; it needs a header row {','.join(columns)}")
  missing = [c for c in columns if c not in header]
  if missing:
    raise DataError(f"{path}:1: header {header} lacks column(s) {missing}; the first row must "
                    f"name the columns {','.join(columns)}")
  for fields in reader:
    if not any(f.strip() for f in fields):
      continue
    if len(fields) != len(header):
      raise DataError(f"{path}:{reader.line_num}: expected {len(header)} comma-separated "
                      f"columns ({', '.join(header)}), got {len(fields)}; quote a field that "
                      "holds a comma, or fix or delete the row")
    yield reader.line_num, {c: fields[header.index(c)] for c in columns}


def read_rows(path: pathlib.Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
  """Rows of a JSONL, TSV or CSV file (by its extension), each holding `columns`."""
  suffix = path.name.rsplit(".", 1)[-1].lower()
  if suffix == "tsv":
    yield from read_tsv(path, columns)
  elif suffix == "csv":
    yield from read_csv(path, columns)
  elif suffix in ("jsonl", "json"):
    for line_no, record in read_jsonl(path, {}):
      for name in columns:
        if name not in record:
          raise DataError(f"{path}:{line_no}: field '{name}' is missing; fix or delete the line")
      yield line_no, record
  else:
    raise DataError(f"{path}: task files are .jsonl, .tsv or .csv (one example a line or row)")


def _nonempty(path: pathlib.Path, line_no: int, record: Record, *names: str) -> None:
  for name in names:
    if not str(record[name]).strip():
      raise DataError(f"{path}:{line_no}: empty '{name}'; fill it in or delete the line")


# ---------------------------------------------------------------------------------------------
# Parsers: file -> records, validating every row
# ---------------------------------------------------------------------------------------------


def parse_sst2(path: pathlib.Path) -> Iterator[Record]:
  for line_no, row in read_tsv(path, ("sentence", "label")):
    if row["label"] not in ("0", "1"):
      raise DataError(f"{path}:{line_no}: label {row['label']!r} is not 0 or 1")
    _nonempty(path, line_no, row, "sentence")
    yield {"sentence": row["sentence"], "label": int(row["label"])}


def parse_squad(path: pathlib.Path) -> Iterator[Record]:
  fields = {"id": str, "context": str, "question": str, "answers": list}
  for line_no, record in read_jsonl(path, fields):
    _nonempty(path, line_no, record, "context", "question")
    context, texts, starts = record["context"], [], []
    if not record["answers"]:
      raise DataError(f"{path}:{line_no}: question {record['id']} has no answer")
    for answer in record["answers"]:
      text, start = answer.get("text"), answer.get("answer_start")
      if not isinstance(text, str) or not isinstance(start, int) or not text:
        raise DataError(f"{path}:{line_no}: an answer needs a non-empty 'text' and an integer "
                        "'answer_start'")
      if start < 0 or context[start:start + len(text)] != text:
        raise DataError(f"{path}:{line_no}: answer {text!r} at answer_start={start} is not in "
                        "the context there (span outside its context); fix the offset")
      texts.append(text)
      starts.append(start)
    yield {"id": record["id"], "context": context, "question": record["question"],
           "answers": texts, "answer_starts": starts}


def parse_spa_eng(path: pathlib.Path) -> Iterator[Record]:
  for line_no, row in read_tsv(path, ("es", "en")):
    _nonempty(path, line_no, row, "es", "en")
    yield row


def parse_scitldr(path: pathlib.Path) -> Iterator[Record]:
  for line_no, record in read_jsonl(path, {"id": str, "document": str, "summary": str}):
    _nonempty(path, line_no, record, "document", "summary")
    summaries = record.get("all_summaries") or [record["summary"]]
    if isinstance(summaries, str):  # some dumps store the list as its Python repr
      summaries = ast.literal_eval(summaries)
    summaries = [s for s in summaries if isinstance(s, str) and s.strip()] or [record["summary"]]
    yield {"id": record["id"], "document": record["document"], "summary": record["summary"],
           "all_summaries": summaries}


def parse_alpaca(path: pathlib.Path) -> Iterator[Record]:
  for line_no, record in read_jsonl(path, {"instruction": str, "input": str, "output": str}):
    _nonempty(path, line_no, record, "instruction", "output")
    yield {k: record[k] for k in ("instruction", "input", "output")}


def parse_preference(path: pathlib.Path) -> Iterator[Record]:
  """Preference pairs (a user's task of kind preference): prompt, chosen, rejected."""
  for line_no, record in read_jsonl(path, {"prompt": str, "chosen": str, "rejected": str}):
    _nonempty(path, line_no, record, "chosen", "rejected")
    yield {k: record[k] for k in ("prompt", "chosen", "rejected")}


# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------

_TEXT = tfds.features.Text()


class _TaskBuilder(corpora._ProjectBuilder, skip_registration=True):  # pylint: disable=protected-access
  """A task over bundled files: `FILES` maps split -> file name, `parse` validates the rows."""

  VERSION = tfds.core.Version("1.0.0")
  FOLDER: str
  FILES: dict[str, str]
  FEATURES: dict[str, Any]
  DESCRIPTION: str
  parse: Callable[[pathlib.Path], Iterator[Record]]

  def __init__(self, *, folder: str | os.PathLike | None = None, **kwargs):
    self._folder = epath.Path(folder) if folder else epath.Path(paths.DATA_ROOT / self.FOLDER)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({**self.FEATURES, "index": np.int64}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # The files are bundled with the repository.
    # Parse every split fully first, so a malformed row fails before anything is written.
    return {split: self._generate_examples(list(type(self).parse(self._folder / name)))
            for split, name in self.FILES.items()}

  def _generate_examples(self, records: list[Record]):
    for index, record in enumerate(records):
      yield index, {**record, "index": index}


class Sst2(_TaskBuilder, skip_registration=True):
  name = "sst2_tsv"
  FOLDER = "sst2"
  FILES = {"train": "train.tsv", "validation": "dev.tsv"}
  FEATURES = {"sentence": _TEXT, "label": tfds.features.ClassLabel(names=["negative", "positive"])}
  DESCRIPTION = "GLUE SST-2 binary sentiment (dev as validation)."
  parse = staticmethod(parse_sst2)


class Squad(_TaskBuilder, skip_registration=True):
  name = "squad_v1_1_jsonl"
  FOLDER = "squad_v1_1"
  FILES = {"train": "train.jsonl", "validation": "validation.jsonl"}
  FEATURES = {"id": _TEXT, "context": _TEXT, "question": _TEXT,
              "answers": tfds.features.Sequence(_TEXT),
              "answer_starts": tfds.features.Sequence(np.int64)}
  DESCRIPTION = "SQuAD v1.1 extractive QA (a split of the official dev set by article)."
  parse = staticmethod(parse_squad)


class SpaEng(_TaskBuilder, skip_registration=True):
  name = "spa_eng_tsv"
  FOLDER = "spa_eng"
  FILES = {"train": "train.tsv", "validation": "validation.tsv", "test": "test.tsv"}
  FEATURES = {"es": _TEXT, "en": _TEXT}
  DESCRIPTION = "Tatoeba Spanish-English sentence pairs."
  parse = staticmethod(parse_spa_eng)


class SciTldr(_TaskBuilder, skip_registration=True):
  name = "scitldr_jsonl"
  FOLDER = "scitldr"
  FILES = {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}
  FEATURES = {"id": _TEXT, "document": _TEXT, "summary": _TEXT,
              "all_summaries": tfds.features.Sequence(_TEXT)}
  DESCRIPTION = "SciTLDR-A: paper abstract -> one-sentence TLDR (several references in test)."
  parse = staticmethod(parse_scitldr)


class Alpaca(_TaskBuilder, skip_registration=True):
  name = "alpaca_jsonl"
  FOLDER = "alpaca_instructions"
  FILES = {"train": "train.jsonl", "validation": "validation.jsonl"}
  FEATURES = {"instruction": _TEXT, "input": _TEXT, "output": _TEXT}
  DESCRIPTION = "A 2,000-example subset of Stanford Alpaca instructions."
  parse = staticmethod(parse_alpaca)


BUILDERS: dict[str, type[_TaskBuilder]] = {
    "sst2": Sst2, "squad": Squad, "spa_eng": SpaEng, "scitldr": SciTldr, "alpaca": Alpaca}


def prepared_builder(task: str, data_dir: str, folder: str | None = None) -> _TaskBuilder:
  """The task's builder, prepared on first use (a no-op afterwards)."""
  if task not in BUILDERS:
    raise DataError(f"unknown task {task!r}; choose one of {sorted(BUILDERS)}")
  make = lambda d: BUILDERS[task](folder=folder, data_dir=d, file_format="array_record")
  builder = make(data_dir)
  if not builder.is_prepared():
    print(f"preparing the {task} dataset under {data_dir} (once)", file=sys.stderr)
    tfds.disable_progress_bar()  # keep the terminal for the training progress bar
    builder = corpora.prepare(make, data_dir)
  return builder


def _decode(value):
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return [_decode(v) for v in value.tolist()]
  if isinstance(value, list):
    return [_decode(v) for v in value]
  if isinstance(value, np.integer):
    return int(value)
  return value


def load_records(task: str, split: str, data_dir: str, folder: str | None = None) -> list[Record]:
  """Every record of a split as a plain dict (str, int, list), in file order. TFDS slices
  work too: 'train[:1000]', 'validation[:10%]'. Read once per process in one bulk request
  (array_record serves a whole split ~6x faster so than record by record) and cached: callers
  must not modify what it returns."""
  return _cached_records(task, split, str(data_dir), None if folder is None else str(folder))


@functools.lru_cache(maxsize=32)
def _cached_records(task: str, split: str, data_dir: str, folder: str | None) -> list[Record]:
  return _records_of(prepared_builder(task, data_dir, folder), split, f"task {task}")


def _records_of(builder, split: str, task: str) -> list[Record]:
  if split.split("[")[0] not in builder.info.splits:
    raise DataError(f"{task} has no split {split!r}; its splits are "
                    f"{sorted(builder.info.splits)}")
  source = builder.as_data_source(split=split)
  return [{k: _decode(v) for k, v in row.items() if k != "index"}
          for row in source.__getitems__(range(len(source)))]


# ---------------------------------------------------------------------------------------------
# A user's task: files named in the config, read by the fields of its kind
# ---------------------------------------------------------------------------------------------


def _text_fields(path, line_no: int, row: Record, names) -> dict[str, str]:
  for name in names:
    if not isinstance(row[name], str):
      raise DataError(f"{path}:{line_no}: field '{name}' is not text; fix or delete the line")
  _nonempty(path, line_no, row, *names)
  return {name: row[name] for name in names}


def _parse_classification(task, path, train_rows):
  known = None if train_rows is None else {r[task.label_field] for r in train_rows}
  for line_no, row in read_rows(path, (*task.text_fields, task.label_field)):
    texts = _text_fields(path, line_no, row, task.text_fields)
    label = row[task.label_field]
    if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
      raise DataError(f"{path}:{line_no}: label {label!r} in '{task.label_field}' must be a "
                      "non-empty string or an integer; fix or delete the line")
    label = str(label).strip()
    if known is not None and label not in known:
      raise DataError(f"{path}:{line_no}: label {label!r} does not occur in the training files "
                      f"(labels {sorted(known)}); fix the label or add training examples of it")
    yield {**texts, task.label_field: label}


def _parse_text_to_text(task, path, train_rows):
  del train_rows
  for line_no, row in read_rows(path, (task.input_field, task.target_field)):
    yield _text_fields(path, line_no, row, (task.input_field, task.target_field))


def _jsonl_only(parse):
  def parse_user(task, path, train_rows):
    del task, train_rows
    if not path.name.lower().endswith((".jsonl", ".json")):
      raise DataError(f"{path}: this task kind reads JSON lines (.jsonl), one example a line")
    return parse(path)
  return parse_user


# kind -> (the record's TFDS features, parse(task, path, training records or None)).
USER_FORMATS: dict[str, tuple[Callable, Callable]] = {
    "classification": (lambda t: {**{f: _TEXT for f in t.text_fields}, t.label_field: _TEXT},
                       _parse_classification),
    "text_to_text": (lambda t: {t.input_field: _TEXT, t.target_field: _TEXT},
                     _parse_text_to_text),
    "span_qa": (lambda t: Squad.FEATURES, _jsonl_only(parse_squad)),
    "instruction": (lambda t: Alpaca.FEATURES, _jsonl_only(parse_alpaca)),
    "preference": (lambda t: {"prompt": _TEXT, "chosen": _TEXT, "rejected": _TEXT},
                   _jsonl_only(parse_preference)),
}


class UserTask(_TaskBuilder, skip_registration=True):
  """A user's task (research.kinds.TaskDef with files): every file of a split, in order."""

  name = "user_task"
  DESCRIPTION = "A task from the user's files (task.train_files, task.eval_files)."

  def __init__(self, *, task, **kwargs):
    self._task = task
    features, self._parse = USER_FORMATS[task.kind]
    self.FEATURES = features(task)
    self.FILES = dict(task.files)
    super().__init__(folder=paths.DATA_ROOT, **kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager
    parsed = {"train": [r for f in self.FILES["train"]
                        for r in self._parse(self._task, epath.Path(f), None)]}
    for split, files in self.FILES.items():
      if split != "train":
        parsed[split] = [r for f in files
                         for r in self._parse(self._task, epath.Path(f), parsed["train"])]
    return {split: self._generate_examples(rows) for split, rows in parsed.items()}


def user_data_dir(task, data_dir: str) -> str:
  """Where a user's task is built: keyed by its kind, fields and the files' content, so an
  edited file is built again."""
  digest = hashlib.sha256(repr(dataclasses.replace(task, files=())).encode())
  for split, files in task.files:
    for name in files:
      path = epath.Path(name)
      if not path.is_file():
        raise DataError(f"task file {name} ({split}) not found; check task.train_files / "
                        "task.eval_files")
      digest.update(f"{split}\0{name}\0".encode() + path.read_bytes())
  return str(epath.Path(data_dir) / "user_tasks" / digest.hexdigest()[:16])


def load_user_records(task, split: str, data_dir: str) -> list[Record]:
  """Every record of a split of a user's task (see load_records)."""
  return _cached_user_records(task, split, user_data_dir(task, str(data_dir)))


@functools.lru_cache(maxsize=8)
def _cached_user_records(task, split: str, data_dir: str) -> list[Record]:
  make = lambda d: UserTask(task=task, data_dir=d, file_format="array_record")
  builder = make(data_dir)
  if not builder.is_prepared():
    print(f"preparing your {task.kind} task under {data_dir} (once per content of its files)",
          file=sys.stderr)
    tfds.disable_progress_bar()
    builder = corpora.prepare(make, data_dir)
  return _records_of(builder, split, "your task")
