"""Tokenizers behind one interface: characters, SentencePiece (trained here), Hugging Face.

Every tokenizer saves itself into a directory holding `manifest.json` (its kind and files) and
`load_tokenizer(directory)` reads any of them back. `build_tokenizer` keeps one tokenizer per
workdir (`<workdir>/tokenizer/`), so a resumed run or a generation uses the identical one.

Special tokens come first: ids 0, 1, 2 are <pad>, <eos>, <unk> for the character and
SentencePiece tokenizers, followed by any `extra_special_tokens` (e.g. <mask>, T5 sentinels).
Special tokens are never produced by `encode` from text; use `token_to_id`.
"""

from __future__ import annotations

import abc
import collections.abc
import io
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
from typing import Any, ClassVar, Iterable

import numpy as np
from etils import epath

from research import paths
from research.config import DataConfig, DataError

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
MANIFEST = "manifest.json"
DEFAULT_SENTENCEPIECE_VOCAB = 8000
# SentencePiece samples at most this many sentences (lines) for training; more only slows it.
MAX_SENTENCEPIECE_SENTENCES = 1_000_000
_MAX_PIECE_CHARS = 4096  # longer lines are cut: the trainer silently drops over-long sentences


class Tokenizer(abc.ABC):
  """Maps text to int32 ids and back; `pad_id`, `eos_id`, `unk_id` are ints."""

  kind: ClassVar[str]
  pad_id: int
  eos_id: int
  unk_id: int

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    ...

  @abc.abstractmethod
  def encode(self, text: str) -> np.ndarray:
    """int32 ids of `text` (no special tokens added)."""

  @abc.abstractmethod
  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids`; padding is dropped."""

  @abc.abstractmethod
  def token_to_id(self, token: str) -> int:
    """The id of a (special) token; ValueError if it is not in the vocabulary."""

  @abc.abstractmethod
  def _save_files(self, directory: epath.Path) -> dict[str, Any]:
    """Writes the tokenizer's own files; returns the manifest entries that describe them."""

  def save(self, directory: str | os.PathLike) -> None:
    """Writes the tokenizer into `directory` (created if needed; local or gs://), the manifest
    last."""
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {"kind": self.kind, **self._save_files(directory)}
    paths.write_atomic(directory / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False))

  def _drop_pad(self, ids: Iterable[int]) -> list[int]:
    return [int(i) for i in np.asarray(ids).reshape(-1) if i != self.pad_id]


class CharTokenizer(Tokenizer):
  """One id per character: the special tokens first, then the characters in sorted order."""

  kind = "char"

  def __init__(self, chars: Iterable[str], extra_special_tokens: Iterable[str] = ()):
    self.special_tokens = SPECIAL_TOKENS + tuple(extra_special_tokens)
    self.chars = sorted(set(chars))
    if any(len(c) != 1 for c in self.chars):
      raise DataError("CharTokenizer takes single characters")
    self.pad_id, self.eos_id, self.unk_id = 0, 1, 2
    k = len(self.special_tokens)
    self._vocab = {t: i for i, t in enumerate(self.special_tokens)}
    self._vocab.update({c: k + i for i, c in enumerate(self.chars)})
    self._id_to_text = np.array(list(self.special_tokens) + self.chars, dtype=object)
    # Sorted code points: encode is one searchsorted over the whole text.
    self._code_points = np.array([ord(c) for c in self.chars], dtype=np.uint32)

  @classmethod
  def train(cls, texts: Iterable[str], extra_special_tokens: Iterable[str] = ()) -> CharTokenizer:
    chars: set[str] = set()
    for text in texts:
      chars.update(text)
    return cls(chars, extra_special_tokens)

  @property
  def vocab_size(self) -> int:
    return len(self._id_to_text)

  def encode(self, text: str) -> np.ndarray:
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (n,)
    if not len(self._code_points):
      return np.full(points.shape, self.unk_id, np.int32)
    pos = np.minimum(np.searchsorted(self._code_points, points), len(self._code_points) - 1)
    known = self._code_points[pos] == points
    return np.where(known, pos + len(self.special_tokens), self.unk_id).astype(np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    return "".join(self._id_to_text[self._drop_pad(ids)])

  def token_to_id(self, token: str) -> int:
    if token not in self._vocab:
      raise DataError(f"token {token!r} is not in the character vocabulary")
    return self._vocab[token]

  def _save_files(self, directory: epath.Path) -> dict[str, Any]:
    del directory  # The vocabulary is small enough to live in the manifest.
    return {"special_tokens": list(self.special_tokens), "chars": self.chars}


def _fitting_vocab_size(message: str) -> int | None:
  """The size SentencePiece's error names: "... Please set it to a value <= 4217." (too many
  pieces for the corpus) or "... smaller than required_chars. 100 vs 282." (too few)."""
  if match := re.search(r"set it to a value <= (\d+)", message):
    return int(match.group(1))
  if match := re.search(r"smaller than required_chars\. \d+ vs (\d+)", message):
    return int(match.group(1))
  return None


class _KeptTexts:
  """The training texts, iterable again when a retrain needs them: kept while they are small
  (a corpus too small for its vocabulary is), else passed through once (complete=False)."""

  LIMIT_CHARS = 64 * 2**20

  def __init__(self, texts: Iterable[str]):
    self._texts = iter(texts)
    self._kept: list[str] = []
    self._chars = 0
    self.complete = True
    self._read = False

  def __iter__(self):
    if self._read:  # a second pass: only what was kept
      yield from self._kept
      return
    self._read = True
    for text in self._texts:
      if self.complete:
        self._chars += len(text)
        if self._chars > self.LIMIT_CHARS:
          self.complete, self._kept = False, []
        else:
          self._kept.append(text)
      yield text


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model (ids 0/1/2 = pad/eos/unk, byte fallback: any text round-trips)."""

  kind = "sentencepiece"

  def __init__(self, model_proto: bytes):
    # SentencePiece: only for its own tokenizers
    import sentencepiece  # pylint: disable=g-import-not-at-top

    self._proto = model_proto
    self._sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
    self.pad_id, self.eos_id, self.unk_id = self._sp.pad_id(), self._sp.eos_id(), self._sp.unk_id()

  def __getstate__(self):  # Picklable for grain worker processes.
    return {"model_proto": self._proto}

  def __setstate__(self, state):
    self.__init__(state["model_proto"])

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int,
            extra_special_tokens: Iterable[str] = ()) -> SentencePieceTokenizer:
    """Trains a unigram model on the lines of `texts`, in-process. A corpus too small for
    `vocab_size` pieces gets the largest vocabulary it fills (too large for it: the smallest
    that holds its characters with byte fallback), with a note line on stderr."""
    extra_special_tokens = list(extra_special_tokens)
    kept = _KeptTexts(texts)
    size = vocab_size
    for _ in range(3):  # SentencePiece's bound is an estimate: a second try may lower it again
      try:
        model = cls._train_proto(kept, size, extra_special_tokens)
      except RuntimeError as e:
        fitting = _fitting_vocab_size(str(e))
        if fitting is None or fitting == size or not kept.complete:
          hint = ("the corpus is too small for data.vocab_size={}: lower data.vocab_size"
                  if "too high" in str(e) else "with byte fallback the vocabulary needs more "
                  "than 256 + #characters entries, so raise data.vocab_size (it was {})")
          raise DataError(f"SentencePiece training failed: {e}; " + hint.format(size)) from None
        size = fitting
        continue
      if size != vocab_size:
        reason = "fill at most" if size < vocab_size else "need at least"
        print(f"note: the tokenizer's training texts {reason} {size} SentencePiece pieces: "
              f"trained with {size} instead of data.vocab_size={vocab_size}",
              file=sys.stderr)
      return cls(model)
    raise DataError(f"SentencePiece training found no vocabulary size that fits the corpus "
                    f"(tried {vocab_size} down to {size}); set data.vocab_size")

  @staticmethod
  def _train_proto(texts: Iterable[str], vocab_size: int,
                   extra_special_tokens: list[str]) -> bytes:
    # SentencePiece: only for its own tokenizers
    import sentencepiece  # pylint: disable=g-import-not-at-top

    def sentences():
      for text in texts:
        for line in text.split("\n"):
          for start in range(0, len(line), _MAX_PIECE_CHARS):
            yield line[start:start + _MAX_PIECE_CHARS]

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=sentences(), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, byte_fallback=True,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece=SPECIAL_TOKENS[0], eos_piece=SPECIAL_TOKENS[1], unk_piece=SPECIAL_TOKENS[2],
        control_symbols=extra_special_tokens,
        # Text must round-trip exactly for an LM: no normalisation, whitespace kept, and the
        # newline (absent from the line-split training data) is a piece of its own.
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, allow_whitespace_only_pieces=True,
        user_defined_symbols=["\n"],
        # Training time grows with the input: sample at most this many sentences.
        input_sentence_size=MAX_SENTENCEPIECE_SENTENCES, shuffle_input_sentence=True,
        max_sentence_length=4 * _MAX_PIECE_CHARS, num_threads=min(os.cpu_count() or 1, 16),
        minloglevel=2)
    return model.getvalue()

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), dtype=np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode(self._drop_pad(ids))

  def token_to_id(self, token: str) -> int:
    i = self._sp.piece_to_id(token)
    if i == self.unk_id and token != SPECIAL_TOKENS[2]:
      raise DataError(f"token {token!r} is not in the SentencePiece vocabulary")
    return i

  def _save_files(self, directory: epath.Path) -> dict[str, Any]:
    (directory / "sentencepiece.model").write_bytes(self._proto)
    return {"model_file": "sentencepiece.model"}


class HFTokenizer(Tokenizer):
  """A Hugging Face `tokenizer.json`, through the `tokenizers` library.

  Special ids, from the tokens present in the vocabulary:
    eos: the first of </s>, <eos>, <|endoftext|>, <|end_of_text|>, [SEP] (required);
    pad: the first of <pad>, [PAD], <|pad|>, <|padding|>, else the file's padding token,
         else eos (GPT-2 style: pad positions carry weight 0 anyway);
    unk: the first of <unk>, [UNK], <|unk|>, else eos (byte-level models never emit unk).
  `encode` adds no special tokens (no [CLS]/[SEP] or BOS): the LM stream places EOS itself;
  `encode(text, add_special_tokens=True)` applies the file's template, as a model input from
  `transformers` has it (BERT: [CLS] text [SEP]). The file's padding and truncation are ignored.
  The project's <mask> token is BERT's [MASK] when the vocabulary has only that one.
  `special_tokens` ({"eos": "<eos>", "pad": ..., "unk": ...}) names them outright, as a
  checkpoint that states its ids does (a GGUF file; Gemma's vocabulary also holds "</s>", an
  ordinary token); it is saved with the tokenizer.
  """

  kind = "hf"
  _EOS = ("</s>", "<eos>", "<|endoftext|>", "<|end_of_text|>", "[SEP]")
  _PAD = ("<pad>", "[PAD]", "<|pad|>", "<|padding|>")
  _UNK = ("<unk>", "[UNK]", "<|unk|>")
  _ALIASES = {"<mask>": "[MASK]"}

  def __init__(self, tokenizer_json: str, special_tokens: dict[str, str] | None = None):
    # HF tokenizers: only for a tokenizer.json
    import tokenizers  # pylint: disable=g-import-not-at-top

    self._json = tokenizer_json
    self._special_tokens = dict(special_tokens or {})
    self._tok = tokenizers.Tokenizer.from_str(tokenizer_json)
    vocab = self._tok.get_vocab(with_added_tokens=True)
    named = {role: token for role, token in self._special_tokens.items() if token in vocab}
    find = lambda names, role=None: next(
        (vocab[n] for n in ((named[role],) if role in named else names) if n in vocab), None)
    self.eos_id = find(self._EOS, "eos")
    if self.eos_id is None:
      raise DataError(f"the tokenizer.json has none of the end-of-sequence tokens {self._EOS}; "
                       "add one to its added_tokens")
    padding = self._tok.padding
    pad = find(self._PAD, "pad")
    self.pad_id = pad if pad is not None else (padding["pad_id"] if padding else self.eos_id)
    unk = find(self._UNK, "unk")
    self.unk_id = unk if unk is not None else self.eos_id
    # A file saved for batched model inputs (e.g. padded to 128 and truncated there) would
    # otherwise pad or cut every text, a whole corpus included.
    self._tok.no_padding()
    self._tok.no_truncation()

  @classmethod
  def from_file(cls, path: str | os.PathLike,
                special_tokens: dict[str, str] | None = None) -> HFTokenizer:
    path = epath.Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"tokenizer file {path} not found; set data.tokenizer_path to a "
                              "Hugging Face tokenizer.json")
    text = path.read_text(encoding="utf-8")
    try:
      return cls(text, special_tokens)
    except DataError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (the tokenizers library's parse error)
      detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
      raise DataError(f"tokenizer file {path} is truncated or not a Hugging Face tokenizer.json "
                      f"({detail})") from None

  @property
  def tokenizer_json(self) -> str:
    """The tokenizer.json text this tokenizer was built from."""
    return self._json

  def __getstate__(self):
    return {"tokenizer_json": self._json, "special_tokens": self._special_tokens}

  def __setstate__(self, state):
    self.__init__(state["tokenizer_json"], state.get("special_tokens"))

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str, add_special_tokens: bool = False) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=add_special_tokens).ids,
                      dtype=np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    return self._tok.decode(self._drop_pad(ids), skip_special_tokens=False)

  def token_to_id(self, token: str) -> int:
    i = self._tok.token_to_id(token)
    if i is None and token in self._ALIASES:
      i = self._tok.token_to_id(self._ALIASES[token])
    if i is None:
      raise DataError(f"token {token!r} is not in the tokenizer.json vocabulary")
    return i

  def _save_files(self, directory: epath.Path) -> dict[str, Any]:
    # Not named tokenizer.json, so it cannot be mistaken for a manifest or vice versa.
    (directory / "hf_tokenizer.json").write_text(self._json, encoding="utf-8")
    return {"tokenizer_file": "hf_tokenizer.json",
            **({"special_tokens": self._special_tokens} if self._special_tokens else {})}


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
  """Reads back what `Tokenizer.save(directory)` wrote."""
  directory = epath.Path(directory)
  manifest_path = directory / MANIFEST
  if not manifest_path.is_file():
    raise FileNotFoundError(f"tokenizer manifest {manifest_path} not found; save a tokenizer "
                            "there first or delete the folder to build a new one")
  try:
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f"tokenizer manifest {manifest_path} is truncated or corrupt ({e}); delete "
                    f"{directory} and rerun to build the tokenizer again from the same data")
  kind = manifest.get("kind")
  if kind == "char":
    specials = manifest["special_tokens"]
    if tuple(specials[:3]) != SPECIAL_TOKENS:
      raise DataError(f"{manifest_path}: special tokens must start with {SPECIAL_TOKENS}")
    return CharTokenizer(manifest["chars"], specials[3:])
  if kind == "sentencepiece":
    model = directory / manifest["model_file"]
    if not model.is_file():
      raise FileNotFoundError(f"SentencePiece model {model} not found; delete {directory} to "
                              "train a new tokenizer")
    try:
      return SentencePieceTokenizer(model.read_bytes())
    except RuntimeError as e:  # sentencepiece's parse error of a cut-short or garbled file
      raise DataError(f"SentencePiece model {model} is truncated or corrupt ({e}); delete "
                      f"{directory} and rerun to train the tokenizer again from the same "
                      "data") from None
  if kind == "hf":
    return HFTokenizer.from_file(directory / manifest["tokenizer_file"],
                                 manifest.get("special_tokens"))
  raise DataError(f"{manifest_path} names an unknown tokenizer kind {kind!r}; expected one of "
                   "'char', 'sentencepiece', 'hf'")


def build_tokenizer(data_cfg: DataConfig, workdir: str | os.PathLike,
                    train_texts: Iterable[str],
                    extra_special_tokens: collections.abc.Sequence[str] = ()) -> Tokenizer:
  """Loads `<workdir>/tokenizer/`, or builds the configured tokenizer and saves it there.

  `train_texts` (the training split's documents) is iterated only when a tokenizer is built.
  """
  directory = epath.Path(workdir) / "tokenizer"
  # A folder on cloud storage is a name prefix that cannot be renamed in one step: there the
  # tokenizer is whole once its manifest, written last, exists.
  if (directory / MANIFEST if paths.is_url(directory) else directory).exists():
    tokenizer = load_tokenizer(directory)
    if tokenizer.kind != data_cfg.tokenizer:
      raise DataError(f"{directory} holds a '{tokenizer.kind}' tokenizer but data.tokenizer="
                       f"'{data_cfg.tokenizer}'; use another workdir or delete {directory}")
    for token in extra_special_tokens:
      tokenizer.token_to_id(token)  # Raises when the saved tokenizer lacks a wanted token.
    return tokenizer
  if data_cfg.tokenizer == "char":
    tokenizer = CharTokenizer.train(train_texts, extra_special_tokens)
  elif data_cfg.tokenizer == "sentencepiece":
    tokenizer = SentencePieceTokenizer.train(
        train_texts, data_cfg.vocab_size or DEFAULT_SENTENCEPIECE_VOCAB, extra_special_tokens)
  elif data_cfg.tokenizer == "hf":
    if not data_cfg.tokenizer_path:
      raise DataError("data.tokenizer='hf' needs data.tokenizer_path (a tokenizer.json)")
    tokenizer = HFTokenizer.from_file(data_cfg.tokenizer_path)  # Its vocabulary is fixed:
    for token in extra_special_tokens:
      tokenizer.token_to_id(token)  # the wanted special tokens must already be in it.
  else:
    raise DataError(f"unknown tokenizer kind data.tokenizer={data_cfg.tokenizer!r}; use "
                     "'char', 'sentencepiece' or 'hf'")
  if paths.is_url(directory):
    tokenizer.save(directory)
    return tokenizer
  # Save to a temporary folder and rename it, so an interrupted save never looks finished
  # (and when several processes race, the first complete tokenizer wins).
  directory = pathlib.Path(directory)
  directory.parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=directory.parent))
  umask = os.umask(0o022)
  os.umask(umask)
  staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make the folder private
  tokenizer.save(staging)
  try:
    staging.rename(directory)
  except OSError:
    shutil.rmtree(staging, ignore_errors=True)
    return load_tokenizer(directory)
  return tokenizer
