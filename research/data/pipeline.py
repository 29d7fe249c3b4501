"""grain pipelines for language modelling: token streams, training windows, eval batches.

A batch is a dict of numpy arrays for the LOCAL batch b = global batch_size // process_count:
  inputs  int32   (b, T)  tokens t[0:T] of a window of T+1 tokens
  targets int32   (b, T)  tokens t[1:T+1] (next-token prediction)
  weights float32 (b, T)  1.0 on real targets, 0.0 on padding
Three ways to make training examples (data.packing):
  windows:   random windows over the whole split held as one token array (small corpora);
  stream:    documents read in a shuffled order, tokenized on the fly with EOS appended,
             concatenated and cut into T+1 windows (corpora too big for memory);
  documents: the same documents whole (a long one cut into row-sized pieces), first-fit packed
             into rows of T+1 tokens; the batch adds positions and segment_ids (b, T), which
             restart at each document, and no target crosses one (research/data/packing.py).
Every training dataset repeats forever, and its iterator's get_state()/set_state() resume
exactly where a checkpoint left off.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import io
import os
import re
import sys
from typing import Iterable, Iterator

import grain
import numpy as np
from etils import epath

from research import paths
from research.config import DataConfig, DataError
from research.data import corpora
from research.data import packing as packing_lib
from research.data import tokenizers as tokenizers_lib

Batch = dict[str, np.ndarray]
# Tokenizer training reads at most this many documents, evenly spread over the split.
_MAX_TOKENIZER_DOCS = 200_000


def local_batch_size(batch_size: int, process_count: int) -> int:
  """The per-process share of a global batch; ValueError if it does not divide evenly."""
  if process_count < 1 or batch_size % process_count:
    raise DataError(f"global batch size {batch_size} is not divisible by the {process_count} "
                     f"JAX processes; make data.batch_size a multiple of {process_count}")
  return batch_size // process_count


def _check_process(process_index: int, process_count: int) -> None:
  if not 0 <= process_index < process_count:
    raise DataError(f"process_index={process_index} is outside [0, {process_count})")


def _seed32(seed: int) -> int:
  # grain reshuffles epoch e with seed + e; mixing the user's seed first keeps nearby seeds
  # (0, 1, ...) from sharing epochs.
  return int(np.random.SeedSequence(seed).generate_state(1)[0])


def _lm_batch(windows: np.ndarray, weights: np.ndarray | None = None) -> Batch:
  """(b, T+1) windows -> inputs/targets (b, T) and weights (b, T)."""
  if weights is None:
    weights = np.ones((windows.shape[0], windows.shape[1] - 1), np.float32)
  return {"inputs": windows[:, :-1].astype(np.int32),
          "targets": windows[:, 1:].astype(np.int32),
          "weights": weights.astype(np.float32)}


def _to_iter(ds: grain.MapDataset, num_threads: int) -> grain.IterDataset:
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                              prefetch_buffer_size=4 * num_threads))


def _with_workers(it: grain.IterDataset, data_cfg: DataConfig) -> grain.IterDataset:
  if data_cfg.num_workers <= 0:
    return it
  # Worker processes need absl flags parsed: run the program under absl.app.run.
  return it.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(
      num_workers=data_cfg.num_workers))


def tokenize_stream(texts: Iterable[str], tokenizer: tokenizers_lib.Tokenizer,
                    separator_id: int | None = None, *,
                    cache_path: str | os.PathLike | None = None) -> np.ndarray:
  """The documents' tokens in order as one int32 array (n,).

  separator_id=None: the texts are consecutive pieces of one document, tokenized as one text.
  Otherwise each document is followed by `separator_id` (usually EOS).
  With `cache_path` (local or gs://) the result is read from that .npy if present, else
  computed and saved.
  """
  cache_path = None if cache_path is None else epath.Path(cache_path)
  if cache_path is not None and cache_path.exists():
    try:
      return np.load(io.BytesIO(cache_path.read_bytes()) if paths.is_url(cache_path)
                     else os.fspath(cache_path))
    except (ValueError, EOFError, OSError) as e:  # truncated (a crash or a full disk): derived
      print(f"note: token cache {cache_path} is unreadable ({e}); rebuilding it from the data",
            file=sys.stderr)
  if separator_id is None:
    tokens = tokenizer.encode("".join(texts))
  else:
    separator = np.array([separator_id], np.int32)
    parts = [p for text in texts for p in (tokenizer.encode(text), separator)]
    tokens = np.concatenate(parts) if parts else np.zeros((0,), np.int32)
  tokens = tokens.astype(np.int32)
  if cache_path is not None:
    # Never half written: a crash mid-write leaves no truncated cache behind.
    paths.write_atomic(cache_path, lambda f: np.save(f, tokens))
  return tokens


class _Windows:
  """Batch of start offsets (b,) -> LM batch of the windows tokens[o : o+T+1]."""

  def __init__(self, tokens: np.ndarray, seq_len: int):
    self._tokens = tokens
    self._span = np.arange(seq_len + 1)

  def __call__(self, offsets: np.ndarray) -> Batch:
    return _lm_batch(self._tokens[offsets[:, None] + self._span])  # (b, T+1)


def train_dataset(tokens: np.ndarray, data_cfg: DataConfig, *, process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
  """Random T+1 windows of `tokens`, every start offset once per epoch, repeating forever.

  Each epoch visits all len(tokens) - T offsets in a new seeded order; process p takes the
  examples p, p + P, p + 2P, ... of that order, so processes never share an example.
  """
  _check_process(process_index, process_count)
  local = local_batch_size(data_cfg.batch_size, process_count)
  seq_len = data_cfg.seq_len
  num_offsets = len(tokens) - seq_len
  if num_offsets < process_count:
    raise DataError(f"the training split has {len(tokens)} tokens, too few for windows of "
                     f"data.seq_len+1={seq_len + 1} tokens on {process_count} processes; "
                     "lower data.seq_len or use a larger corpus")
  ds = grain.MapDataset.range(num_offsets).shuffle(seed=_seed32(data_cfg.shuffle_seed))
  ds = ds[process_index::process_count].repeat()  # Reshuffled each epoch.
  ds = ds.batch(local, drop_remainder=True).map(_Windows(np.asarray(tokens, np.int32), seq_len))
  # In memory: reader threads would only contend for the GIL.
  return _with_workers(_to_iter(ds, num_threads=0), data_cfg)


class _EncodeDocument:
  def __init__(self, tokenizer: tokenizers_lib.Tokenizer):
    self._tokenizer = tokenizer

  def __call__(self, text: str) -> dict[str, np.ndarray]:
    ids = np.append(self._tokenizer.encode(text), self._tokenizer.eos_id)
    return {"tokens": ids.astype(np.int32)}


def _packed_example(packed: dict[str, np.ndarray]) -> Batch:
  # segment_ids are 0 only on the padding of a final, partly filled window.
  weights = (packed["tokens_segment_ids"][None, 1:] != 0)
  return {k: v[0] for k, v in _lm_batch(packed["tokens"][None], weights).items()}


def _encoded_documents(texts: collections.abc.Sequence[str],
                       tokenizer: tokenizers_lib.Tokenizer, data_cfg: DataConfig,
                       process_index: int, process_count: int
                       ) -> tuple[int, grain.IterDataset]:
  """(local batch size, this process's share of the documents in a seeded order per epoch,
  tokenized and EOS-terminated, repeating forever): what stream and documents packing read."""
  _check_process(process_index, process_count)
  local = local_batch_size(data_cfg.batch_size, process_count)
  if len(texts) < process_count:
    raise DataError(f"the training split has {len(texts)} documents, fewer than the "
                     f"{process_count} processes reading it")
  ds = grain.MapDataset.source(texts).shuffle(seed=_seed32(data_cfg.shuffle_seed))
  ds = ds[process_index::process_count].repeat().map(_EncodeDocument(tokenizer))
  return local, _to_iter(ds, num_threads=2)


def stream_dataset(texts: collections.abc.Sequence[str], tokenizer: tokenizers_lib.Tokenizer,
                   data_cfg: DataConfig, *, process_index: int = 0,
                   process_count: int = 1) -> grain.IterDataset:
  """Documents in a seeded order per epoch, EOS-terminated, concatenated and cut into T+1 windows.

  Windows are contiguous pieces of the stream and may span documents (GPT-2 style); each
  process reads its own share of the documents.
  """
  local, docs = _encoded_documents(texts, tokenizer, data_cfg, process_index, process_count)
  it = grain.experimental.ConcatThenSplitIterDataset(
      docs, length_struct={"tokens": data_cfg.seq_len + 1})
  it = it.map(_packed_example).batch(local, drop_remainder=True)
  return _with_workers(it, data_cfg)


class _DocumentRows:
  """A batch of packed rows (b, T+1) -> the LM batch with positions and segment_ids."""

  def __call__(self, rows: dict[str, np.ndarray]) -> Batch:
    return packing_lib.next_token_batch(rows["tokens"], rows["tokens_segment_ids"],
                                        rows["tokens_positions"])


def documents_dataset(texts: collections.abc.Sequence[str], tokenizer: tokenizers_lib.Tokenizer,
                      data_cfg: DataConfig, *, process_index: int = 0,
                      process_count: int = 1) -> grain.IterDataset:
  """Documents in a seeded order per epoch, EOS-terminated, packed whole into rows of T+1.

  A document longer than a row is cut into pieces of T+1 tokens (consecutive pieces share a
  token, so none of its targets is lost); each piece is a segment of its own. Each process
  reads its own share of the documents.
  """
  local, docs = _encoded_documents(texts, tokenizer, data_cfg, process_index, process_count)
  pieces = grain.experimental.FlatMapIterDataset(
      docs, packing_lib.SplitDocuments(data_cfg.seq_len + 1))
  rows = packing_lib.first_fit(pieces, {"tokens": data_cfg.seq_len + 1},
                               seed=_seed32(data_cfg.shuffle_seed),
                               padding={"tokens": tokenizer.pad_id})
  it = rows.batch(local, drop_remainder=True).map(_DocumentRows())
  return _with_workers(it, data_cfg)


def eval_batches(tokens: np.ndarray, data_cfg: DataConfig, batch_size: int, *, pad_id: int = 0,
                 process_index: int = 0, process_count: int = 1,
                 max_batches: int = 0) -> Iterator[Batch]:
  """Every target token of `tokens` exactly once, in fixed-shape local batches.

  Window k holds tokens[kT : kT+T+1] (stride T); the last one is padded with `pad_id` at
  weight 0, and the last global batch is filled with all-zero-weight rows. Row r of global
  batch j is window j*batch_size + r; process p takes rows [p*b, (p+1)*b). Every process
  yields the same number of batches. max_batches > 0 keeps only the first max_batches.
  """
  _check_process(process_index, process_count)
  local = local_batch_size(batch_size, process_count)
  seq_len = data_cfg.seq_len
  num_targets = len(tokens) - 1
  if num_targets < 1:
    raise DataError(f"the evaluation split has {len(tokens)} tokens; it needs at least 2")
  num_windows = -(-num_targets // seq_len)
  num_batches = -(-num_windows // batch_size)
  if max_batches > 0:
    num_batches = min(num_batches, max_batches)
  padded = np.full(num_windows * seq_len + 1, pad_id, np.int32)
  padded[:len(tokens)] = tokens
  span = np.arange(seq_len + 1)

  def batches():
    for j in range(num_batches):
      rows = j * batch_size + process_index * local + np.arange(local)  # (b,) window ids
      real = rows < num_windows
      positions = np.minimum(rows, num_windows - 1)[:, None] * seq_len + span  # (b, T+1)
      windows = np.where(real[:, None], padded[positions], pad_id)
      weights = (positions[:, 1:] <= num_targets) & real[:, None]
      yield _lm_batch(windows, weights)

  return batches()


@dataclasses.dataclass
class LMData:
  """What the trainer needs: the tokenizer, the training dataset and the evaluation tokens."""

  tokenizer: tokenizers_lib.Tokenizer
  train: grain.IterDataset
  eval_tokens: np.ndarray
  data_cfg: DataConfig
  process_index: int = 0
  process_count: int = 1

  def eval_batches(self, batch_size: int = 0, max_batches: int = 0) -> Iterator[Batch]:
    """Evaluation batches of data_cfg.eval_split; batch_size is global (0: data.batch_size)."""
    return eval_batches(self.eval_tokens, self.data_cfg, batch_size or self.data_cfg.batch_size,
                        pad_id=self.tokenizer.pad_id, process_index=self.process_index,
                        process_count=self.process_count, max_batches=max_batches)


def _sample(texts: collections.abc.Sequence[str], max_docs: int) -> Iterator[str]:
  if len(texts) <= max_docs:
    yield from texts
  else:
    for i in np.linspace(0, len(texts) - 1, max_docs).astype(int):
      yield texts[int(i)]


def _lazy(load) -> Iterator[str]:
  yield from load()  # Nothing is loaded until the first document is wanted.


def _files_digest(directory: epath.Path) -> str:
  digest = hashlib.sha256()
  for path in sorted(directory.iterdir()):
    digest.update(path.name.encode() + b"\0" + path.read_bytes())
  return digest.hexdigest()


def build_lm_data(data_cfg: DataConfig, workdir: str | os.PathLike, *, process_index: int = 0,
                  process_count: int = 1,
                  extra_special_tokens: collections.abc.Sequence[str] = ()) -> LMData:
  """Loads the corpus, builds or reloads `<workdir>/tokenizer/`, tokenizes (cached in workdir)."""
  _check_process(process_index, process_count)
  local_batch_size(data_cfg.batch_size, process_count)  # Fail before any work.
  workdir = epath.Path(workdir)
  loaded: dict[str, collections.abc.Sequence[str]] = {}

  def texts(split: str) -> collections.abc.Sequence[str]:
    if split not in loaded:
      loaded[split] = corpora.load_texts(data_cfg, split)
    return loaded[split]

  tokenizer = tokenizers_lib.build_tokenizer(
      data_cfg, workdir,
      _lazy(lambda: _sample(texts(data_cfg.train_split), _MAX_TOKENIZER_DOCS)),
      extra_special_tokens)
  # Tiny Shakespeare's records are pieces of one text; other corpora hold whole documents.
  separator = None if data_cfg.dataset == "tiny_shakespeare" else tokenizer.eos_id
  tokenizer_digest = _files_digest(workdir / "tokenizer")

  def tokens(split: str) -> np.ndarray:
    key = hashlib.sha256(f"{corpora.fingerprint(data_cfg)}|{split}|{separator}|"
                         f"{tokenizer_digest}".encode()).hexdigest()[:16]
    name = re.sub(r"[^\w.-]+", "_", f"{data_cfg.dataset}-{split}")
    return tokenize_stream(_lazy(lambda: texts(split)), tokenizer, separator,
                           cache_path=workdir / "data_cache" / f"{name}-{key}.npy")

  kwargs = dict(process_index=process_index, process_count=process_count)
  if data_cfg.packing == "windows":
    train = train_dataset(tokens(data_cfg.train_split), data_cfg, **kwargs)
  elif data_cfg.packing == "stream":
    train = stream_dataset(texts(data_cfg.train_split), tokenizer, data_cfg, **kwargs)
  elif data_cfg.packing == "documents":
    train = documents_dataset(texts(data_cfg.train_split), tokenizer, data_cfg, **kwargs)
  else:
    raise DataError(f"unknown data.packing={data_cfg.packing!r}; use 'windows', 'stream' or "
                    "'documents'")
  eval_tokens = tokens(data_cfg.eval_split)
  if len(eval_tokens) < 2:  # said at the start, not at the final evaluation
    raise DataError(f"the evaluation split '{data_cfg.eval_split}' of {data_cfg.dataset} has "
                    f"{len(eval_tokens)} tokens; it needs at least 2: add text to the last "
                    "documents of the corpus (they are held out), or raise "
                    "data.validation_fraction")
  return LMData(tokenizer=tokenizer, train=train, eval_tokens=eval_tokens,
                data_cfg=data_cfg, **kwargs)
