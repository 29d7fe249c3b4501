"""Text corpora as TFDS builders written to ArrayRecord and read back without TensorFlow.

Three kinds of corpus, one entry point (`load_texts`):
  * 'tiny_shakespeare': data/tiny_shakespeare/input.txt, nanoGPT's 90%/10% character split;
  * 'text_files': a researcher's folder or glob of .txt (one document each) and .jsonl (one
    document per line) files, the last `validation_fraction` of documents held out;
  * any other name: a TFDS catalog dataset, read through `tfds.data_source`.

Project builders are prepared on first use under `data_cfg.data_dir` (default data/tfds) and
reused afterwards. They are not registered in the TFDS catalog (the catalog already has a
'tiny_shakespeare' of its own), so they are instantiated directly rather than by name.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import glob
import hashlib
import importlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Any, Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from research import locks, paths
from research.config import DataConfig, DataError

TINY_SHAKESPEARE_FILE = paths.DATA_ROOT / "tiny_shakespeare" / "input.txt"
TRAIN_FRACTION = 0.9  # nanoGPT's split: train = text[:int(n * 0.9)]
CHUNK_CHARS = 16 * 1024  # characters per stored example of a long document
_TEXT_SUFFIXES = (".txt", ".jsonl")
# Legacy catalog builders live in modules that `tfds.builder` does not import by itself.
_CATALOG_PACKAGES = ("text", "translate", "summarization", "question_answering", "structured")


class _ProjectBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the project's builders."""

  # TFDS derives code_path through `importlib_resources` (not installed, not needed) for
  # builders in packages; naming the file directly avoids that lookup.
  code_path = pathlib.Path(__file__)


def _features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({"text": tfds.features.Text(), "index": np.int64})


class TinyShakespeare(_ProjectBuilder, skip_registration=True):
  """Tiny Shakespeare as ordered chunks: concatenating a split's chunks gives the split's text."""

  name = "tiny_shakespeare_chunks"
  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, input_file: str | os.PathLike = TINY_SHAKESPEARE_FILE, **kwargs):
    self._input_file = epath.Path(input_file)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # disable_shuffling: examples are stored in key order, which is document order.
    return tfds.core.DatasetInfo(
        builder=self, description="Tiny Shakespeare (Karpathy), chunked in document order.",
        features=_features(), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # The file is bundled with the repository.
    text = _read_utf8(self._input_file)
    n_train = int(len(text) * TRAIN_FRACTION)
    return {"train": self._generate_examples(text[:n_train]),
            "validation": self._generate_examples(text[n_train:])}

  def _generate_examples(self, text: str):
    for index, start in enumerate(range(0, len(text), CHUNK_CHARS)):
      yield index, {"text": text[start:start + CHUNK_CHARS], "index": index}


@dataclasses.dataclass(eq=False)
class TextFilesConfig(tfds.core.BuilderConfig):
  """A corpus of text files; `name` is a hash of these fields and of the files' contents."""

  files: tuple[str, ...] = ()
  text_key: str = "text"
  validation_fraction: float = 0.1


class TextFiles(_ProjectBuilder, skip_registration=True):
  """A researcher's .txt/.jsonl corpus; the last `validation_fraction` of documents is held out.

  Document order: files sorted by path, then line order inside a .jsonl file.
  """

  name = "text_files"
  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description="Documents from local .txt/.jsonl files.",
        features=_features(), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    # A first full pass validates every file before anything is written, and counts documents.
    num_docs, num_chars = 0, 0
    for document in _iter_documents(cfg.files, cfg.text_key):
      num_docs += 1
      num_chars += len(document)
    if num_docs == 0 or num_chars == 0:
      raise DataError(f"text corpus {list(cfg.files)} is empty (no documents, or only empty "
                       "ones); add text to the files or point data.files elsewhere")
    if num_docs < 2:
      raise DataError(f"text corpus {list(cfg.files)} holds a single document, which cannot be "
                       "split into train and validation; split it into several .txt files or "
                       "one .jsonl line per document")
    num_val = min(max(1, round(num_docs * cfg.validation_fraction)), num_docs - 1)
    return {"train": self._generate_examples(0, num_docs - num_val),
            "validation": self._generate_examples(num_docs - num_val, num_docs)}

  def _generate_examples(self, start: int, stop: int):
    cfg = self.builder_config
    for doc_index, text in enumerate(_iter_documents(cfg.files, cfg.text_key)):
      if start <= doc_index < stop:
        yield doc_index - start, {"text": text, "index": doc_index - start}


def _read_utf8(path: epath.Path) -> str:
  if not path.is_file():
    raise FileNotFoundError(f"data file {path} not found; restore it (see data/README.md) or "
                            "point the config at another corpus")
  try:
    return path.read_text(encoding="utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it "
                     "to UTF-8 or remove it from the corpus") from None


def _iter_documents(files: collections.abc.Iterable[str], text_key: str) -> Iterator[str]:
  """Yields the documents of the files in order, checking encoding and jsonl syntax."""
  for name in files:
    path = epath.Path(name)
    text = _read_utf8(path)
    if path.suffix == ".txt":
      if text.strip():  # an empty file is no document (nor, last, the whole validation split)
        yield text
      continue
    for line_no, line in enumerate(text.splitlines(), start=1):
      if not line.strip():
        continue  # Blank lines (often a trailing one) are not documents.
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{line_no}: malformed JSON line ({e.msg}); fix or remove "
                         "the line") from None
      if not isinstance(record, dict) or not isinstance(record.get(text_key), str):
        raise DataError(f"{path}:{line_no}: line has no string field '{text_key}'; set "
                         "data.text_key to the field holding the text")
      if record[text_key].strip():  # an empty text is no document
        yield record[text_key]


def resolve_text_files(pattern: str) -> list[str]:
  """The sorted .txt/.jsonl files named by a folder or glob (relative: to cwd, then repo root;
  or gs://bucket/folder, gs://bucket/corpus/*.jsonl)."""
  if paths.is_url(pattern):
    return _resolve_url_files(pattern)
  matches: list[str] = []
  for base in (pathlib.Path.cwd(), paths.REPO_ROOT):
    path = base / pathlib.Path(pattern).expanduser()
    if path.is_dir():
      matches = [str(p) for p in path.iterdir() if p.is_file()]
    else:
      matches = glob.glob(str(path), recursive=True)
    matches = sorted(m for m in matches if m.endswith(_TEXT_SUFFIXES))
    if matches or pathlib.Path(pattern).is_absolute():
      break
  if not matches:
    raise FileNotFoundError(f"data.files={pattern!r} matched no .txt or .jsonl files; give a "
                            "folder or a glob such as 'corpus/*.jsonl'")
  return matches


def _resolve_url_files(pattern: str) -> list[str]:
  if "**" in pattern:  # epath refuses it on cloud storage: one listing per folder
    raise FileNotFoundError(f"data.files={pattern!r}: '**' is not supported on cloud storage; "
                            "name the folders, e.g. 'gs://bucket/corpus/*/*.jsonl'")
  paths.check_bucket(pattern)
  path = epath.Path(pattern)
  if path.is_dir():
    matches = [str(p) for p in path.iterdir() if p.is_file()]
  else:  # a glob from the deepest folder without wildcards
    parts = pattern.split("/")
    fixed = next(i for i, part in enumerate(parts) if any(c in part for c in "*?[") or
                 i == len(parts) - 1)
    matches = [str(p) for p in epath.Path("/".join(parts[:fixed])).glob("/".join(parts[fixed:]))]
  matches = sorted(m for m in matches if m.endswith(_TEXT_SUFFIXES))
  if not matches:
    raise FileNotFoundError(f"data.files={pattern!r} matched no .txt or .jsonl files; give a "
                            "folder or a glob such as 'gs://bucket/corpus/*.jsonl'")
  return matches


@functools.lru_cache(maxsize=4096)
def _content_sha256(name: str, size: int, changed: str) -> str:
  del size, changed  # only the memo's key: a file written since is read again
  digest = hashlib.sha256()
  with epath.Path(name).open("rb") as f:
    for block in iter(lambda: f.read(4 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def file_fingerprint(name: str) -> tuple[int, str]:
  """(size, sha256 of the bytes) of a corpus file: an edit in place that keeps the size and
  the modification time is still seen. Hashed once per process and version of the file (about
  0.8 GB/s on a shared AMD EPYC core): the memo's key holds the inode's change time, which
  every write moves and no user can set back (an object in a bucket is never edited in place:
  a new one has a new mtime)."""
  if paths.is_url(name):
    stat = epath.Path(name).stat()
    size, changed = stat.length, str(stat.mtime)
  else:
    stat = pathlib.Path(name).stat()
    size, changed = stat.st_size, f"{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"
  return size, _content_sha256(name, size, changed)


def _file_signature(name: str) -> str:
  """The file's content (its sha256), which names the prepared corpus and its caches."""
  size, sha256 = file_fingerprint(name)
  return f"{size}\0{sha256}"


def _text_files_config(data_cfg: DataConfig) -> TextFilesConfig:
  files = tuple(resolve_text_files(data_cfg.files))
  digest = hashlib.sha256()
  digest.update(json.dumps([str(TextFiles.VERSION), data_cfg.text_key,
                            data_cfg.validation_fraction]).encode())
  for name in files:
    digest.update(f"{name}\0{_file_signature(name)}\0".encode())
  return TextFilesConfig(name=f"corpus_{digest.hexdigest()[:16]}", files=files,
                         text_key=data_cfg.text_key,
                         validation_fraction=data_cfg.validation_fraction)


def data_dir(data_cfg: DataConfig) -> str:
  """Where TFDS keeps prepared data: data.data_dir (a local folder or gs://...) or data/tfds."""
  if not data_cfg.data_dir:
    return str(paths.TFDS_DATA_DIR)
  paths.check_bucket(data_cfg.data_dir)
  return data_cfg.data_dir


def prepare(make: Callable[[str], tfds.core.DatasetBuilder],
            data_dir_: str) -> tfds.core.DatasetBuilder:
  """make(data_dir_), prepared on first use (a no-op afterwards).

  array_record writes local files only (it reads gs:// too): a builder for cloud storage is
  prepared in a local temporary folder and copied up, dataset_info.json last, since that file
  is what makes TFDS take a dataset as prepared.
  """
  builder = make(data_dir_)
  if builder.is_prepared():
    # A builder made while another process was still preparing the dataset holds empty split
    # information although the dataset is now there: read it again.
    return builder if builder.info.splits else make(data_dir_)
  if not paths.is_url(data_dir_):
    # Processes preparing the same dataset at once (ablation workers, two users' runs) take
    # turns; each later one finds it prepared. TFDS alone races on its 'incomplete.*' folder.
    name = os.path.relpath(os.fspath(builder.data_dir), data_dir_).replace(os.sep, "-")
    with locks.build_lock(data_dir_, name):
      builder = make(data_dir_)
      if not builder.is_prepared():
        _remove_unfinished(builder)
        builder.download_and_prepare()
    return builder
  with tempfile.TemporaryDirectory() as local:
    staged = make(local)
    staged.download_and_prepare()
    relative = os.path.relpath(os.fspath(staged.data_dir), local)
    paths.copy_tree(epath.Path(staged.data_dir), epath.Path(data_dir_) / relative,
                    last=("dataset_info.json",))
  return make(data_dir_)


def _remove_unfinished(builder: tfds.core.DatasetBuilder) -> None:
  """Removes what a preparation stopped midway (killed) left: TFDS writes into a folder
  `incomplete.XXXXXX_<version>` beside the version's and renames it when done, so such a folder
  holds partial data that nothing reads or deletes. Called under the dataset's build lock, when
  no other process is preparing it."""
  version = pathlib.Path(os.fspath(builder.data_dir))
  left = sorted(version.parent.glob(f"incomplete.*_{version.name}"))
  for folder in left:
    shutil.rmtree(folder, ignore_errors=True)
  if left:
    print(f"note: removed what an earlier preparation of {builder.name} left when it was "
          f"stopped ({', '.join(f.name for f in left)}); preparing it again", file=sys.stderr)


def prepared_builder(data_cfg: DataConfig) -> tfds.core.DatasetBuilder:
  """The project builder for data_cfg.dataset, prepared on first use (a no-op afterwards)."""
  if data_cfg.dataset == "tiny_shakespeare":
    make = lambda d: TinyShakespeare(data_dir=d, file_format="array_record")
  elif data_cfg.dataset == "text_files":
    config = _text_files_config(data_cfg)
    make = lambda d: TextFiles(config=config, data_dir=d, file_format="array_record")
  else:
    raise DataError(f"'{data_cfg.dataset}' is not a project corpus; use 'tiny_shakespeare' "
                     "or 'text_files'")
  return prepare(make, data_dir(data_cfg))


def fingerprint(data_cfg: DataConfig) -> str:
  """A short name for the corpus's content, used to key caches derived from it."""
  if data_cfg.dataset == "tiny_shakespeare":
    key = f"{TinyShakespeare.VERSION}"
  elif data_cfg.dataset == "text_files":
    key = _text_files_config(data_cfg).name
  else:
    key = f"{data_cfg.dataset}:{data_cfg.text_key}"
  return hashlib.sha256(key.encode()).hexdigest()[:12]


class TextSource(collections.abc.Sequence):
  """Random access to a split's documents as `str`, whatever the record type underneath.

  With `check_order`, every read checks that the record's 'index' feature equals its position
  (plus the split's first index), which proves the document order the LM stream relies on.
  """

  def __init__(self, source: Any, text_key: str, check_order: bool = False):
    self._source = source
    self._text_key = text_key
    self._first_index = int(source[0]["index"]) if check_order and len(source) else None

  def __len__(self) -> int:
    return len(self._source)

  def __iter__(self) -> Iterator[str]:
    return (self[i] for i in range(len(self)))

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    i = i + len(self) if i < 0 else i
    if not 0 <= i < len(self):
      raise IndexError(f"document {i} is outside the split's {len(self)} documents")
    record = self._source[i]
    if self._first_index is not None:
      if int(record["index"]) != self._first_index + i:
        raise RuntimeError(f"record {i} of the prepared corpus is out of order; delete the "
                           "prepared files under data.data_dir to rebuild them")
    if self._text_key not in record:
      raise DataError(f"records have no field '{self._text_key}' (fields: {sorted(record)}); "
                       "set data.text_key")
    text = record[self._text_key]
    return text.decode("utf-8") if isinstance(text, bytes) else str(text)


def _split_checked(load: Callable[[], Any], name: str, split: str) -> Any:
  """load(); an unknown split is a DataError that lists the dataset's splits."""
  try:
    return load()
  except ValueError as e:
    if "Unknown split" not in str(e):
      raise
    known = str(e).split("Should be one of", 1)[-1].strip(" .")
    raise DataError(f"dataset '{name}' has no split '{split}'; its splits are {known} (set "
                    "--split, data.eval_split or data.train_split to one of them)") from None


def _catalog_data_source(name: str, split: str, data_dir_: str | None) -> Any:
  """tfds.data_source; a dataset that is not prepared, or an unknown split, is a DataError."""
  try:
    return _split_checked(lambda: tfds.data_source(name, split=split, data_dir=data_dir_),
                          name, split)
  except (tfds.core.registered.DatasetNotFoundError, DataError, KeyboardInterrupt):
    raise
  except Exception:  # pylint: disable=broad-except  (TFDS tries to prepare it, and fails)
    base = name.split("/")[0].split(":")[0]
    data_dir_ = data_dir_ or tfds.core.constants.DATA_DIR
    if paths.is_url(data_dir_) or os.path.isdir(os.path.join(data_dir_, base)):
      raise
    target = name.split(":")[0]  # the dataset and its config (wmt14_translate/de-en)
    raise DataError(f"catalog dataset '{name}' is not prepared under {data_dir_}; prepare it "
                    f"once with `tfds build {target} --data_dir={data_dir_}` (or set "
                    "data.data_dir to where it is prepared)") from None


def catalog_source(name: str, split: str, data_dir_: str | None = None) -> Any:
  """`tfds.data_source` for a catalog name, importing legacy builder modules when needed."""
  try:
    return _catalog_data_source(name, split, data_dir_)
  except tfds.core.registered.DatasetNotFoundError:
    base = name.split("/")[0].split(":")[0]
    for package in _CATALOG_PACKAGES:
      for module in (base, base.removesuffix("_translate")):
        try:
          importlib.import_module(f"tensorflow_datasets.{package}.{module}")
        except ImportError:
          continue
        return _catalog_data_source(name, split, data_dir_)
    raise DataError(f"data.dataset='{name}' is neither a project corpus ('tiny_shakespeare', "
                     "'text_files') nor a TFDS catalog dataset; check the name") from None


def load_texts(data_cfg: DataConfig, split: str) -> TextSource:
  """The documents of one split, in order, as a random-access sequence of `str`.

  'tiny_shakespeare' documents are consecutive pieces of one text; concatenate them to get
  the split. 'text_files' and catalog documents are separate documents.
  """
  if data_cfg.dataset in ("tiny_shakespeare", "text_files"):
    builder = prepared_builder(data_cfg)
    source = _split_checked(lambda: builder.as_data_source(split=split), data_cfg.dataset, split)
    return TextSource(source, "text", check_order=True)
  return TextSource(catalog_source(data_cfg.dataset, split, data_dir(data_cfg)),
                    data_cfg.text_key)
