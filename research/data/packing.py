"""Packing: several examples to a row, kept apart by segment ids.

In a packed row the examples sit one after another, and each token carries
  segment_ids  1, 2, 3, ... the example it belongs to within its row; 0 on padding
  positions    its position within that example (0 at the example's first token)
The models attend only within a segment and the weights are 0 wherever a target would cross an
example boundary, so an example's loss in a packed row equals its loss alone in a row.

  pretraining (data.packing="documents")  EOS-terminated documents, cut into row-sized pieces,
                                          first-fit packed into rows of T+1 tokens (grain);
                                          objectives.py then works per segment
  fine-tuning (task.packing)              a kind's examples, first-fit packed the same way
                                          (research/kinds/base.py)

Batch keys of a packed batch, besides those of the unpacked one:
  decoder          positions, segment_ids                                        (B, T)
  encoder          positions, segment_ids (input_mask = segment_ids > 0)         (B, T)
  encoder_decoder  encoder_positions, encoder_segment_ids                        (B, S)
                   decoder_positions, decoder_segment_ids                        (B, T)
"""

from __future__ import annotations

from typing import Sequence

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
