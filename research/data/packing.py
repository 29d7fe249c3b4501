"""Packing: several examples to a row, kept apart by segment ids.

In a packed row the examples sit one after another, and each token carries
  segment_ids  1, 2, 3, ... the example it belongs to within its row; 0 on padding
  positions    its position within that example (0 at the example's first token)
The models attend only within a segment and the weights are 0 wherever a target would cross an
example boundary, so an example's loss in a packed row equals its loss alone in a row.

  pretraining (data.packing="documents")  EOS-terminated documents, cut into row-sized pieces,
                                          first-fit packed into rows of T+1 tokens (grain);
                                          objectives.py then works per segment
  fine-tuning (task.packing)              a kind's examples (research/kinds/base.py), packed
                                          window by window (pack_windows): an encoder-decoder
                                          row has two sides to fill, and first-fit left them
                                          93% full where this packer fills 97%

Batch keys of a packed batch, besides those of the unpacked one:
  decoder          positions, segment_ids                                        (B, T)
  encoder          positions, segment_ids (input_mask = segment_ids > 0)         (B, T)
  encoder_decoder  encoder_positions, encoder_segment_ids                        (B, S)
                   decoder_positions, decoder_segment_ids                        (B, T)
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import grain
import numpy as np

Batch = dict[str, np.ndarray]
# Rows grain's first-fit packer fills at once: more rows leave less padding (a piece that fits
# no open row closes them all) at the cost of replaying up to that many rows on resume.
PACKING_BINS = 64


def split_document(tokens: np.ndarray, row_len: int) -> list[np.ndarray]:
  """A document as pieces of at most row_len tokens, consecutive pieces sharing one token.

  A piece's last token is the next piece's first, so every next-token target of the document
  (all tokens but the first) is the target of exactly one piece. A document of fewer than two
  tokens has no target and gives no piece.
  """
  n = len(tokens)
  if n < 2:
    return []
  return [tokens[s:s + row_len] for s in range(0, n - 1, row_len - 1)]


class SplitDocuments(grain.experimental.FlatMapTransform):
  """grain flat map: {"tokens": a document} -> its pieces of at most row_len tokens."""

  def __init__(self, row_len: int, max_document_len: int = 1 << 20):
    if row_len < 2:
      raise ValueError(f"rows of {row_len} tokens hold no next-token target")
    self._row_len = row_len
    self.max_fan_out = -(-max_document_len // (row_len - 1))

  def flat_map(self, element: dict[str, np.ndarray]) -> Sequence[dict[str, np.ndarray]]:
    return [{"tokens": p} for p in split_document(element["tokens"], self._row_len)]


def first_fit(examples: grain.IterDataset, lengths: dict[str, int], *, seed: int,
              padding: dict[str, int] | None = None) -> grain.IterDataset:
  """Examples (dicts of 1-D arrays, each at most lengths[k] long) first-fit packed into rows.

  Each row holds every key k of `lengths` (lengths[k],), padded with padding[k] (default 0),
  with k_segment_ids and k_positions beside it; the keys of one example share its segment id.
  Rows come out one at a time, shuffled within each packing round (seeded); the iterator's
  state resumes exactly.
  """
  padding = {k: (padding or {}).get(k, 0) for k in lengths}
  return grain.experimental.FirstFitPackIterDataset(
      examples, length_struct=dict(lengths), num_packing_bins=PACKING_BINS, seed=seed,
      shuffle_bins=True, padding_struct=padding)


# pack_windows: examples packed together, and how balanced_rows weighs a row's room.
PACKING_WINDOW = 1024
CLOSING_SLACK = 0.04  # close a row with one or two examples that leave at most this much room
BALANCE = 3.0  # weight against rooms that run out on one side before the other


def balanced_rows(sizes: np.ndarray, capacity: Sequence[int]) -> list[list[int]]:
  """Examples of `sizes` (n, K): example i needs sizes[i, k] slots on side k of a row of
  `capacity` (K,) -> rows, each a list of example indices; every example in exactly one row.

  One row at a time: if one or two examples fill the row's room to within CLOSING_SLACK (room
  measured as a share of each side, summed), the pair (or single) that fills most closes it;
  otherwise the example that takes the most room, less BALANCE times how unevenly it leaves the
  sides' room, joins it. Keeping the sides' room even is what fills both sides of an
  encoder-decoder row: a side that runs out first strands the other's room.
  """
  capacity = np.asarray(capacity, np.int64)
  sizes = np.asarray(sizes, np.int64).reshape(len(sizes), len(capacity))
  if (sizes > capacity).any():
    i, k = np.argwhere(sizes > capacity)[0]
    raise ValueError(f"example {i} has {sizes[i, k]} tokens on side {k}, more than a row's "
                     f"{capacity[k]}: cut examples to the row lengths before packing")
  # Examples of one size are interchangeable: work on the distinct sizes, each with its queue.
  distinct, which = np.unique(sizes, axis=0, return_inverse=True)  # (T, K)
  queues = [list(np.flatnonzero(which.ravel() == t)) for t in range(len(distinct))]
  left = np.array([len(q) for q in queues])
  share = (distinct / capacity).sum(axis=1)  # (T,) the shares of the sides each size takes
  rows = []
  while left.any():
    row, room = [], capacity.copy()
    while True:
      fits = np.flatnonzero((left > 0) & (distinct <= room).all(axis=1))
      if not fits.size:
        break
      closing = _closing_sizes(distinct[fits], share[fits], left[fits], room,
                               (room / capacity).sum())
      if closing is not None:
        chosen = [fits[t] for t in closing]
      else:
        after = (room - distinct[fits]) / capacity
        score = share[fits] - BALANCE * (after.max(axis=1) - after.min(axis=1))
        chosen = [fits[np.argmax(score)]]
      for t in chosen:
        row.append(queues[t].pop(0))
        left[t] -= 1
        room -= distinct[t]
    rows.append(row)
  return rows


def _closing_sizes(sizes: np.ndarray, share: np.ndarray, left: np.ndarray, room: np.ndarray,
                   free: float) -> tuple[int, ...] | None:
  """The one or two of these sizes (T, K), each taking `share` (T,) of a row, that fill `room`
  (a share `free` of the row) most, if they leave at most CLOSING_SLACK of it; None otherwise.
  Every size fits the room alone; `left` says how many examples of each remain."""
  if 2 * share.max() < free - CLOSING_SLACK:  # no two close it (most steps of a row)
    return None
  fits = np.ones((len(sizes), len(sizes)), bool)
  for k in range(sizes.shape[1]):
    fits &= sizes[:, None, k] + sizes[None, :, k] <= room[k]
  fill = np.where(fits, share[:, None] + share[None, :], -1.0)
  np.fill_diagonal(fill, np.where(left >= 2, np.diag(fill), -1.0))  # a size twice: two left
  a, b = np.unravel_index(np.argmax(fill), fill.shape)
  single = int(np.argmax(share))
  if fill[a, b] >= share[single] and fill[a, b] >= free - CLOSING_SLACK:
    return (a, b)
  if share[single] >= free - CLOSING_SLACK:
    return (single,)
  return None


def pack_row(examples: Sequence[dict[str, np.ndarray]], lengths: dict[str, int],
             padding: dict[str, int]) -> dict[str, np.ndarray]:
  """Examples laid one after another in one row: for every key k of `lengths`, k padded with
  padding[k] to lengths[k], k_segment_ids (1, 2, ...; 0 on padding) and k_positions."""
  row = {}
  for k, n in lengths.items():
    parts = [np.asarray(e[k]) for e in examples]
    used = sum(len(p) for p in parts)
    dtype = parts[0].dtype if parts else np.int32
    row[k] = np.concatenate(parts + [np.full(n - used, padding.get(k, 0), dtype)])
    row[f"{k}_segment_ids"] = np.concatenate(
        [np.full(len(p), s, np.int32) for s, p in enumerate(parts, 1)] +
        [np.zeros(n - used, np.int32)])
    row[f"{k}_positions"] = np.concatenate(
        [np.arange(len(p), dtype=np.int32) for p in parts] + [np.zeros(n - used, np.int32)])
  return row


class _WindowPackIterator(grain.DatasetIterator):
  """Reads PACKING_WINDOW examples, packs them (balanced_rows), yields the rows in a seeded
  order, and so on. Its state is the parent's at the window's start and the rows given out of
  it: set_state reads and packs that window again and skips what was given."""

  def __init__(self, parent: grain.DatasetIterator, lengths: dict[str, int],
               padding: dict[str, int], seed: int, window: int):
    super().__init__(parent)
    self._lengths, self._padding, self._seed, self._window = lengths, padding, seed, window
    self._start, self._index = parent.get_state(), 0  # the window being given out
    self._rows: list[dict[str, np.ndarray]] = []
    self._given = 0

  def _pack_window(self) -> None:
    examples = list(itertools.islice(self._parent, self._window))
    sizes = [[len(e[k]) for k in self._lengths] for e in examples]
    rows = balanced_rows(np.array(sizes, np.int64), list(self._lengths.values()))
    order = np.random.default_rng([self._seed, self._index]).permutation(len(rows))
    self._rows = [pack_row([examples[i] for i in rows[r]], self._lengths, self._padding)
                  for r in order]

  def __next__(self) -> dict[str, np.ndarray]:
    if self._given == len(self._rows):  # this window is given out (or none was read yet)
      if self._rows:
        self._start, self._index = self._parent.get_state(), self._index + 1
      self._given = 0
      self._pack_window()
      if not self._rows:
        raise StopIteration
    self._given += 1
    return self._rows[self._given - 1]

  def get_state(self) -> dict[str, Any]:
    return {"window_start": self._start, "window_index": self._index, "rows_given": self._given}

  def set_state(self, state: dict[str, Any]) -> None:
    self._start, self._index = state["window_start"], state["window_index"]
    self._parent.set_state(self._start)
    self._rows, self._given = [], 0
    if state["rows_given"]:
      self._pack_window()
      self._given = state["rows_given"]


class _WindowPackDataset(grain.IterDataset):

  def __init__(self, parent: grain.IterDataset, lengths: dict[str, int],
               padding: dict[str, int], seed: int, window: int):
    super().__init__(parent)
    self._args = (lengths, padding, seed, window)

  def __iter__(self) -> _WindowPackIterator:
    return _WindowPackIterator(self._parent.__iter__(), *self._args)


def pack_windows(examples: grain.IterDataset, lengths: dict[str, int], *, seed: int,
                 padding: dict[str, int] | None = None,
                 window: int = PACKING_WINDOW) -> grain.IterDataset:
  """Examples (dicts of 1-D arrays, each at most lengths[k] long) packed into rows, `window`
  examples at a time (balanced_rows), each row as pack_row makes it; the rows of a window come
  out in a seeded order. The iterator's state resumes exactly."""
  padding = {k: (padding or {}).get(k, 0) for k in lengths}
  return _WindowPackDataset(examples, dict(lengths), padding, seed, window)


def next_token_batch(tokens: np.ndarray, segment_ids: np.ndarray, positions: np.ndarray,
                     loss_mask: np.ndarray | None = None) -> Batch:
  """Packed rows (b, T+1) -> a decoder batch of inputs, targets, weights, positions and
  segment_ids (b, T). Target t (token t+1) counts when tokens t and t+1 are of the same
  segment, and, with `loss_mask` (b, T+1), when token t+1 is marked."""
  same = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, :-1] > 0)
  if loss_mask is not None:
    same &= loss_mask[:, 1:].astype(bool)
  return {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32),
          "weights": same.astype(np.float32),
          "positions": positions[:, :-1].astype(np.int32),
          "segment_ids": segment_ids[:, :-1].astype(np.int32)}


def shift_right(targets: np.ndarray, positions: np.ndarray, start_id: int) -> np.ndarray:
  """Decoder inputs of packed targets (b, T): each token's predecessor within its segment, and
  start_id at each segment's first token."""
  previous = np.concatenate([np.full_like(targets[:, :1], start_id), targets[:, :-1]], axis=1)
  return np.where(positions == 0, start_id, previous).astype(np.int32)


def seq2seq_batch(inputs: np.ndarray, input_segments: np.ndarray, input_positions: np.ndarray,
                  targets: np.ndarray, target_segments: np.ndarray,
                  target_positions: np.ndarray, start_id: int) -> Batch:
  """Packed encoder inputs (b, S) and decoder targets (b, T), with their segment ids and
  positions -> an encoder-decoder batch; padding (segment 0) has weight 0."""
  real = target_segments > 0
  return {"encoder_inputs": inputs.astype(np.int32), "encoder_mask": input_segments > 0,
          "encoder_segment_ids": input_segments.astype(np.int32),
          "encoder_positions": input_positions.astype(np.int32),
          "decoder_inputs": np.where(real, shift_right(targets, target_positions, start_id),
                                     start_id).astype(np.int32),
          "decoder_segment_ids": target_segments.astype(np.int32),
          "decoder_positions": target_positions.astype(np.int32),
          "targets": targets.astype(np.int32), "weights": real.astype(np.float32)}


def pack_pairs(pairs: Sequence[tuple[np.ndarray, np.ndarray]], rows: int, input_len: int,
               target_len: int, pad_id: int, start_id: int) -> tuple[Batch, int]:
  """(input, target) pairs, first-fit in order into `rows` rows of (input_len, target_len).

  Returns the encoder-decoder batch (seq2seq_batch) and the number of pairs that fit no row
  (left out).
  """
  arrays = {k: np.full((rows, n), pad_id if k in ("inputs", "targets") else 0, np.int32)
            for k, n in (("inputs", input_len), ("input_segments", input_len),
                         ("input_positions", input_len), ("targets", target_len),
                         ("target_segments", target_len), ("target_positions", target_len))}
  used_in, used_out = np.zeros(rows, int), np.zeros(rows, int)
  count = np.zeros(rows, int)
  left_out = 0
  for inp, tgt in pairs:
    fits = np.flatnonzero((used_in + len(inp) <= input_len) & (used_out + len(tgt) <= target_len))
    if not fits.size:
      left_out += 1
      continue
    r = fits[0]
    count[r] += 1
    for name, value, used in (("input", inp, used_in), ("target", tgt, used_out)):
      span = slice(used[r], used[r] + len(value))
      arrays["inputs" if name == "input" else "targets"][r, span] = value
      arrays[f"{name}_segments"][r, span] = count[r]
      arrays[f"{name}_positions"][r, span] = np.arange(len(value))
      used[r] += len(value)
  return seq2seq_batch(arrays["inputs"], arrays["input_segments"], arrays["input_positions"],
                       arrays["targets"], arrays["target_segments"], arrays["target_positions"],
                       start_id), left_out


def segments(tokens: np.ndarray, segment_ids: np.ndarray) -> list[list[np.ndarray]]:
  """The tokens of each segment of each packed row, in order: [row][segment] -> (n,)."""
  return [[row[ids == s] for s in range(1, int(ids.max(initial=0)) + 1)]
          for row, ids in zip(tokens, segment_ids)]
