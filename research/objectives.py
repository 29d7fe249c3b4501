"""Pretraining objectives: a batch transform (in the grain pipeline) plus a loss (in the step).

Every objective starts from the language-model batch the pipeline makes from raw text,
  inputs (B, T), targets (B, T) = inputs shifted by one, weights (B, T) = 1 on real targets,
and turns it, on the host with a seeded numpy generator, into what its family consumes:

  causal_lm        decoder          inputs, targets, weights
  prefix_lm        decoder          + prefix_lengths (B,): bidirectional prefix, loss after it
                   encoder_decoder  prefix -> encoder, continuation -> decoder
  masked_lm        encoder          15% of tokens selected; of those 80% <mask>, 10% random, 10% kept
  span_corruption  encoder_decoder  T5: noise spans replaced by sentinels in the encoder input;
                                    the decoder writes sentinel + span for each
  ul2              encoder_decoder  mixture of denoisers: R (spans), S (prefix LM), X (extreme
                                    spans), each row led by its mode token

Encoder-decoder batches hold encoder_inputs, encoder_mask, decoder_inputs, targets, weights.

A packed LM batch (data.packing="documents") also holds positions and segment_ids (B, T), one
segment per document; the transforms then work per document (research/data/packing.py):
causal_lm keeps the batch, masked_lm masks within segments, and the encoder-decoder objectives
make each document its own (input, target) pair and pack those pairs into rows again, with
encoder_/decoder_ segment ids and positions. prefix_lm on the decoder is refused there (its
one prefix length per row cannot describe a prefix per document).

Losses return sums (not means) plus the token count, so that padding, packing and gradient
accumulation never bias the average: the host divides once.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import layers, models
from research.data import packing
from research.config import ConfigError, ExperimentConfig, ObjectiveConfig

Array = jax.Array
Batch = dict[str, np.ndarray]

MASK_TOKEN = "<mask>"
MODE_TOKENS = {"R": "[R]", "S": "[S]", "X": "[X]"}


def sentinel(i: int) -> str:
  return f"<extra_id_{i}>"


# ---------------------------------------------------------------------------------------------
# Losses (device side)
# ---------------------------------------------------------------------------------------------


def token_cross_entropy(logits: Array, targets: Array, weights: Array) -> dict[str, Array]:
  """Summed cross-entropy and accuracy of logits (B, T, V) against targets (B, T)."""
  logits = logits.astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # (B, T)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return {
      "loss_sum": jnp.sum(losses * weights),
      "correct_sum": jnp.sum(correct * weights),
      "weight_sum": jnp.sum(weights),
  }


def decoder_logits(model, params, batch, *, rngs=None, deterministic=True):
  return model.apply({"params": params}, batch["inputs"], positions=batch.get("positions"),
                     segment_ids=batch.get("segment_ids"),
                     prefix_lengths=batch.get("prefix_lengths"), deterministic=deterministic,
                     rngs=rngs)


def encoder_logits(model, params, batch, *, rngs=None, deterministic=True):
  return model.apply({"params": params}, batch["inputs"], input_mask=batch["input_mask"],
                     positions=batch.get("positions"), segment_ids=batch.get("segment_ids"),
                     deterministic=deterministic, rngs=rngs)


def seq2seq_logits(model, params, batch, *, rngs=None, deterministic=True):
  return model.apply({"params": params}, batch["encoder_inputs"], batch["decoder_inputs"],
                     encoder_mask=batch["encoder_mask"],
                     encoder_segment_ids=batch.get("encoder_segment_ids"),
                     decoder_segment_ids=batch.get("decoder_segment_ids"),
                     encoder_positions=batch.get("encoder_positions"),
                     decoder_positions=batch.get("decoder_positions"),
                     deterministic=deterministic, rngs=rngs)


def _decoder_hidden(model, params, batch, *, rngs=None, deterministic=True):
  """(hidden states (B, T, E), the output layer as a function of them) of a decoder whose
  model.logits_chunk asks for logits only where the loss is; None when it does not."""
  if not (model.config.logits_chunk and isinstance(model, models.Decoder)):
    return None
  hidden = model.apply({"params": params}, batch["inputs"], positions=batch.get("positions"),
                       segment_ids=batch.get("segment_ids"),
                       prefix_lengths=batch.get("prefix_lengths"),
                       deterministic=deterministic, rngs=rngs, return_hidden=True)
  head = model.config
  if layers.target_platform() == "cpu":
    # XLA's CPU runtime runs a dot inside a loop or conditional with no bfloat16 x bfloat16
    # -> float32 kernel ("Unsupported element type for DotThunk"): float32 operands there.
    head = dataclasses.replace(head, matmul_dtype="float32")
  return hidden, functools.partial(output_logits, head, params)


def decoder_loss(model, params, batch, *, rngs=None, deterministic=True):
  chunked = _decoder_hidden(model, params, batch, rngs=rngs, deterministic=deterministic)
  if chunked is not None:
    hidden, logits_fn = chunked
    return chunked_token_cross_entropy(hidden, logits_fn, batch["targets"], batch["weights"],
                                       model.config.logits_chunk)
  logits = decoder_logits(model, params, batch, rngs=rngs, deterministic=deterministic)
  return token_cross_entropy(logits, batch["targets"], batch["weights"])


def decoder_row_logprobs(model, params, batch, *, rngs=None, deterministic=True) -> Array:
  """Each row's summed log-probability of its targets where its weights are not 0 (B,) float32:
  what a preference loss compares (research/kinds/preference.py). With model.logits_chunk the
  logits are computed only there, as decoder_loss computes them."""
  chunked = _decoder_hidden(model, params, batch, rngs=rngs, deterministic=deterministic)
  if chunked is not None:
    hidden, logits_fn = chunked
    return chunked_row_logprobs(hidden, logits_fn, batch["targets"], batch["weights"],
                                model.config.logits_chunk)
  logits = decoder_logits(model, params, batch, rngs=rngs, deterministic=deterministic)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                           batch["targets"])  # (B, T)
  return -jnp.sum(losses * batch["weights"], axis=1)


def output_logits(config, params, hidden: Array) -> Array:
  """The decoder's output layer (models.lm_head) on hidden states (..., E) -> (..., V) float32,
  from the model's parameter tree: the same modules, applied to their own parameters."""
  if config.tie_embeddings:
    logits = layers.Embed(config.vocab_size, config).apply(
        {"params": params["token_embed"]}, hidden, method="attend")
  else:
    logits = layers.Linear((config.vocab_size,), ("embed", "vocab"), config).apply(
        {"params": params["lm_head"]}, hidden)
  return layers.softcap(logits.astype(jnp.float32), config.final_logit_softcap)


def _loss_first_chunks(hidden: Array, targets: Array, weights: Array,
                       chunk: int) -> tuple[Array, Array, Array]:
  """hidden (B, T, E), targets and weights (B, T), each row's positions ordered loss-first
  (stably), padded and cut into chunks of `chunk`: (T/C, B, C, ...) each, weights float32."""
  b, t, _ = hidden.shape
  pad = -t % chunk
  order = jnp.argsort(weights == 0, axis=1, stable=True)  # (B, T): loss positions first
  take = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)),
                                       axis=1)
  cut = lambda x: jnp.moveaxis(jnp.pad(take(x), [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
                               .reshape((b, -1, chunk) + x.shape[2:]), 1, 0)
  return cut(hidden), cut(targets), cut(weights.astype(jnp.float32))


def chunked_token_cross_entropy(hidden: Array, logits_fn: Callable[[Array], Array],
                                targets: Array, weights: Array, chunk: int) -> dict[str, Array]:
  """token_cross_entropy's sums, the logits computed only where a row carries loss and `chunk`
  positions of each row at a time (model.logits_chunk).

  With a large vocabulary the (B, T, V) logits dominate a step's time and memory; a prompt's
  positions carry no loss. Each row's positions are ordered loss-first (stably), cut into
  chunks of `chunk`; a chunk where no row carries loss is skipped (lax.cond), and a computed
  chunk's logits (B, chunk, V) are recomputed in the backward pass rather than kept.
  hidden (B, T, E); logits_fn (B, C, E) -> (B, C, V) float32.
  """
  chunks = _loss_first_chunks(hidden, targets, weights, chunk)

  @jax.checkpoint
  def sums(h, tg, w):
    logits = logits_fn(h)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, tg)
    correct = (jnp.argmax(logits, axis=-1) == tg).astype(jnp.float32)
    return jnp.stack([jnp.sum(losses * w), jnp.sum(correct * w)])

  def body(total, xs):
    h, tg, w = xs
    return total + jax.lax.cond(jnp.any(w != 0), sums, lambda *_: jnp.zeros(2, jnp.float32),
                                h, tg, w), None

  total, _ = jax.lax.scan(body, jnp.zeros(2, jnp.float32), chunks)
  return {"loss_sum": total[0], "correct_sum": total[1], "weight_sum": jnp.sum(weights)}


def chunked_row_logprobs(hidden: Array, logits_fn: Callable[[Array], Array], targets: Array,
                         weights: Array, chunk: int) -> Array:
  """Each row's summed log-probability of its weighted targets (B,), the logits computed as
  chunked_token_cross_entropy computes them (only where a row carries weight, a chunk at a
  time, recomputed in the backward pass)."""
  rows = hidden.shape[0]
  chunks = _loss_first_chunks(hidden, targets, weights, chunk)

  @jax.checkpoint
  def row_sums(h, tg, w):  # (B,)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits_fn(h), tg)
    return -jnp.sum(losses * w, axis=1)

  def body(total, xs):
    h, tg, w = xs
    return total + jax.lax.cond(jnp.any(w != 0), row_sums,
                                lambda *_: jnp.zeros(rows, jnp.float32), h, tg, w), None

  total, _ = jax.lax.scan(body, jnp.zeros(rows, jnp.float32), chunks)
  return total


def encoder_loss(model, params, batch, *, rngs=None, deterministic=True):
  logits = encoder_logits(model, params, batch, rngs=rngs, deterministic=deterministic)
  return token_cross_entropy(logits, batch["targets"], batch["weights"])


def seq2seq_loss(model, params, batch, *, rngs=None, deterministic=True):
  logits = seq2seq_logits(model, params, batch, rngs=rngs, deterministic=deterministic)
  return token_cross_entropy(logits, batch["targets"], batch["weights"])


# family -> (model, params, batch) -> logits (B, T, V): what each loss scores.
LOGITS = {"decoder": decoder_logits, "encoder": encoder_logits,
          "encoder_decoder": seq2seq_logits}
LOSSES = {"decoder": decoder_loss, "encoder": encoder_loss, "encoder_decoder": seq2seq_loss}


# ---------------------------------------------------------------------------------------------
# Transforms (host side, numpy)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TokenInfo:
  """What the transforms need to know of the tokenizer."""

  vocab_size: int
  pad_id: int
  eos_id: int
  special_ids: tuple[int, ...]  # never selected for masking, never drawn as a random token
  mask_id: int = -1
  sentinel_ids: tuple[int, ...] = ()
  mode_ids: dict = dataclasses.field(default_factory=dict)

  @classmethod
  def from_tokenizer(cls, tokenizer, objective: ObjectiveConfig) -> "TokenInfo":
    specials = {tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id}
    specials.update(tokenizer.token_to_id(t) for t in required_special_tokens(objective))
    get = tokenizer.token_to_id
    return cls(
        vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id,
        special_ids=tuple(sorted(specials)),
        mask_id=get(MASK_TOKEN) if objective.name == "masked_lm" else -1,
        sentinel_ids=tuple(get(sentinel(i)) for i in range(objective.num_sentinels))
        if objective.name in ("span_corruption", "ul2") else (),
        mode_ids={k: get(v) for k, v in MODE_TOKENS.items()} if objective.name == "ul2" else {})


def required_special_tokens(objective: ObjectiveConfig) -> tuple[str, ...]:
  """Tokens the tokenizer must hold for this objective (added when it is built)."""
  if objective.name == "masked_lm":
    return (MASK_TOKEN,)
  sentinels = tuple(sentinel(i) for i in range(objective.num_sentinels))
  if objective.name == "span_corruption":
    return sentinels
  if objective.name == "ul2":
    return sentinels + tuple(MODE_TOKENS.values())
  return ()


def raw_windows(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
  """The LM batch back as windows (B, T+1) and the number of real tokens in each row (B,)."""
  windows = np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)
  targets = batch["weights"].sum(axis=1).astype(np.int64)
  lengths = np.where(targets > 0, targets + 1, 0)  # a row with no target holds no real token
  return windows, lengths


def causal_lm(batch: Batch, rng: np.random.Generator, info: TokenInfo,
              objective: ObjectiveConfig) -> Batch:
  del rng, info, objective
  return batch


def _packing(batch: Batch) -> bool:
  return "segment_ids" in batch


def prefix_lm_decoder(batch: Batch, rng: np.random.Generator, info: TokenInfo,
                      objective: ObjectiveConfig) -> Batch:
  """A random split point per row: attention is bidirectional before it, loss only after."""
  del info, objective
  if _packing(batch):
    raise ConfigError("objective.name='prefix_lm' on the decoder cannot use "
                      "data.packing='documents' (one prefix per row, not per document); use "
                      "data.packing='stream' or 'windows'")
  _, lengths = raw_windows(batch)
  # prefix p in [1, n-1] leaves at least one token to predict (n = real tokens in the row).
  prefix = 1 + np.floor(rng.random(len(lengths)) * np.maximum(lengths - 1, 1)).astype(np.int32)
  t = np.arange(batch["targets"].shape[1])
  weights = batch["weights"] * (t[None, :] >= prefix[:, None] - 1)  # target t is token t+1
  return dict(batch, weights=weights.astype(np.float32), prefix_lengths=prefix.astype(np.int32))


def masked_lm(batch: Batch, rng: np.random.Generator, info: TokenInfo,
              objective: ObjectiveConfig) -> Batch:
  """BERT's masking on the first T tokens of each window; in a packed batch, of each document
  (segment), which attends only within itself."""
  tokens = batch["inputs"]  # (B, T)
  if _packing(batch):
    real = batch["segment_ids"] > 0
  else:
    _, lengths = raw_windows(batch)
    real = np.arange(tokens.shape[1])[None, :] < np.minimum(lengths, tokens.shape[1])[:, None]
  eligible = real & ~np.isin(tokens, info.special_ids)
  selected = eligible & (rng.random(tokens.shape) < objective.mask_rate)
  action = rng.random(tokens.shape)
  to_mask = selected & (action < objective.mask_token_share)
  to_random = selected & (action >= objective.mask_token_share) & (
      action < objective.mask_token_share + objective.random_token_share)
  ordinary = np.setdiff1d(np.arange(info.vocab_size), info.special_ids)
  random_tokens = ordinary[rng.integers(0, len(ordinary), tokens.shape)]
  inputs = np.where(to_mask, info.mask_id, np.where(to_random, random_tokens, tokens))
  out = {"inputs": inputs.astype(np.int32), "targets": tokens.astype(np.int32),
         "weights": selected.astype(np.float32), "input_mask": real}
  if _packing(batch):
    out.update(positions=batch["positions"], segment_ids=batch["segment_ids"])
  return out


def random_spans_noise_mask(length: int, noise_density: float, mean_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
  """T5's noise mask: round(length * density) noise tokens in round(noise / mean) spans, the
  span lengths a random composition, alternating with non-noise spans (noise never first)."""
  if length < 2:
    return np.zeros(length, bool)
  num_noise = int(np.clip(round(length * noise_density), 1, length - 1))
  num_spans = int(np.clip(round(num_noise / mean_span_length), 1, min(num_noise,
                                                                      length - num_noise)))

  def composition(total, parts):  # `parts` positive integers summing to `total`, uniformly
    cuts = np.sort(rng.choice(np.arange(1, total), parts - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [total]]))

  noise_spans = composition(num_noise, num_spans)
  keep_spans = composition(length - num_noise, num_spans)
  mask = np.zeros(length, bool)
  position = 0
  for keep, noise in zip(keep_spans, noise_spans):
    position += keep
    mask[position:position + noise] = True
    position += noise
  return mask


def corrupt_spans(tokens: np.ndarray, noise: np.ndarray,
                  sentinels: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
  """(encoder input, decoder target) for one row: each noise span becomes one sentinel in the
  input; the target lists sentinel + the span's tokens for every span."""
  starts = noise & ~np.concatenate([[False], noise[:-1]])
  span_index = np.cumsum(starts) - 1  # which span each noise token belongs to
  if starts.sum() > len(sentinels):
    raise ValueError(f"{int(starts.sum())} noise spans need more than the {len(sentinels)} "
                     "sentinel tokens; raise objective.num_sentinels")
  sentinel_ids = np.asarray(sentinels, np.int32)
  inputs = np.where(starts, sentinel_ids[np.maximum(span_index, 0)], tokens)[~noise | starts]
  target_parts = []
  for i in range(int(starts.sum())):
    target_parts += [sentinel_ids[i:i + 1], tokens[noise & (span_index == i)]]
  targets = np.concatenate(target_parts) if target_parts else np.zeros(0, np.int32)
  return inputs.astype(np.int32), targets.astype(np.int32)


def _seq2seq_batch(rows: list[tuple[np.ndarray, np.ndarray]], input_len: int, target_len: int,
                   info: TokenInfo) -> Batch:
  """Pads (encoder input, target) pairs; targets end in EOS; decoder input = pad + targets[:-1]
  (T5 starts decoding from the pad id)."""
  b = len(rows)
  encoder_inputs = np.full((b, input_len), info.pad_id, np.int32)
  targets = np.full((b, target_len), info.pad_id, np.int32)
  weights = np.zeros((b, target_len), np.float32)
  for r, (inp, tgt) in enumerate(rows):
    if len(inp) == 0:
      continue  # an empty (padding) row: no input, nothing to predict
    tgt = np.append(tgt, info.eos_id)
    if len(inp) > input_len or len(tgt) > target_len:
      raise ValueError(f"a transformed example ({len(inp)} input / {len(tgt)} target tokens) "
                       f"exceeds the batch shape ({input_len} / {target_len})")
    encoder_inputs[r, :len(inp)] = inp
    targets[r, :len(tgt)] = tgt
    weights[r, :len(tgt)] = 1.0
  decoder_inputs = np.concatenate([np.full((b, 1), info.pad_id, np.int32), targets[:, :-1]], 1)
  return {"encoder_inputs": encoder_inputs, "encoder_mask": encoder_inputs != info.pad_id,
          "decoder_inputs": decoder_inputs, "targets": targets, "weights": weights}


def span_corruption_target_length(seq_len: int, objective: ObjectiveConfig) -> int:
  """The longest target a row of seq_len tokens can produce (sentinels + noise + EOS)."""
  num_noise = int(np.clip(round(seq_len * objective.noise_density), 1, seq_len - 1))
  num_spans = int(np.clip(round(num_noise / objective.mean_span_length), 1, num_noise))
  return num_noise + num_spans + 1


def _seq2seq_rows(batch: Batch, max_tokens: int, make_pair) -> list:
  """make_pair(real tokens of a row) -> (encoder input, target) for each row; rows with fewer
  than two real tokens (padding) become empty pairs."""
  _, lengths = raw_windows(batch)
  empty = (np.zeros(0, np.int32), np.zeros(0, np.int32))
  return [make_pair(row[:n]) if n >= 2 else empty
          for row, n in zip(batch["inputs"], np.minimum(lengths, max_tokens).astype(int))]


def packed_span_corruption_target_length(seq_len: int, objective: ObjectiveConfig) -> int:
  """Decoder length of a packed span-corruption batch: twice an unpacked row's, since each
  document adds its own EOS and rounding, capped at seq_len."""
  return min(seq_len, 2 * span_corruption_target_length(seq_len, objective))


def _packed_seq2seq(batch: Batch, max_tokens: int, target_len: int, make_pair,
                    info: TokenInfo) -> Batch:
  """A packed LM batch -> a packed encoder-decoder batch of as many rows: each document
  (segment, its first max_tokens tokens) becomes its own (input, target + EOS) pair, and the
  pairs are first-fit packed in order; a pair that fits no row is left out."""
  pairs = []
  for row in packing.segments(batch["inputs"], batch["segment_ids"]):
    for tokens in row:
      if len(tokens) >= 2:
        inputs, targets = make_pair(tokens[:max_tokens])
        pairs.append((inputs, np.append(targets, info.eos_id).astype(np.int32)))
  rows, seq_len = batch["inputs"].shape
  packed, _ = packing.pack_pairs(pairs, rows, seq_len, target_len, info.pad_id, info.pad_id)
  return packed


def span_corruption(batch: Batch, rng: np.random.Generator, info: TokenInfo,
                    objective: ObjectiveConfig) -> Batch:
  seq_len = batch["inputs"].shape[1]  # the encoder sees at most T tokens

  def pair(tokens):
    noise = random_spans_noise_mask(len(tokens), objective.noise_density,
                                    objective.mean_span_length, rng)
    return corrupt_spans(tokens, noise, info.sentinel_ids)

  if _packing(batch):
    return _packed_seq2seq(batch, seq_len, packed_span_corruption_target_length(
        seq_len, objective), pair, info)
  return _seq2seq_batch(_seq2seq_rows(batch, seq_len, pair), seq_len,
                        span_corruption_target_length(seq_len, objective), info)


def _split_at_random(tokens: np.ndarray, rng: np.random.Generator):
  split = int(rng.integers(1, len(tokens)))
  return tokens[:split], tokens[split:]


def prefix_lm_seq2seq(batch: Batch, rng: np.random.Generator, info: TokenInfo,
                      objective: ObjectiveConfig) -> Batch:
  """Encoder-decoder LM: a random prefix goes to the encoder, the rest is the target."""
  del objective
  seq_len = batch["inputs"].shape[1]
  pair = lambda tokens: _split_at_random(tokens, rng)
  if _packing(batch):
    return _packed_seq2seq(batch, seq_len, seq_len, pair, info)
  return _seq2seq_batch(_seq2seq_rows(batch, seq_len, pair), seq_len, seq_len, info)


UL2_DENOISERS = (  # (mode, kind, noise density, mean span length), as in the UL2 paper's mixture
    ("R", "spans", 0.15, 3.0), ("R", "spans", 0.15, 8.0),
    ("X", "spans", 0.5, 3.0), ("X", "spans", 0.15, 32.0), ("X", "spans", 0.5, 32.0),
    ("S", "prefix", 0.0, 0.0),
)


def ul2(batch: Batch, rng: np.random.Generator, info: TokenInfo,
        objective: ObjectiveConfig) -> Batch:
  """Each row draws one denoiser; its mode token leads the encoder input."""
  del objective
  seq_len = batch["inputs"].shape[1]

  def pair(tokens):
    mode, kind, density, span = UL2_DENOISERS[rng.integers(len(UL2_DENOISERS))]
    if kind == "prefix":
      inputs, targets = _split_at_random(tokens, rng)
    else:
      noise = random_spans_noise_mask(len(tokens), density, span, rng)
      inputs, targets = corrupt_spans(tokens, noise, info.sentinel_ids)
    return np.concatenate([[info.mode_ids[mode]], inputs]).astype(np.int32), targets

  # seq_len - 1 real tokens: one slot is the mode token's
  if _packing(batch):
    return _packed_seq2seq(batch, seq_len - 1, seq_len, pair, info)
  return _seq2seq_batch(_seq2seq_rows(batch, seq_len - 1, pair), seq_len, seq_len, info)


# (objective, family) -> transform. The families an objective fits are exactly these keys.
TRANSFORMS: dict[tuple[str, str], Callable] = {
    ("causal_lm", "decoder"): causal_lm,
    ("prefix_lm", "decoder"): prefix_lm_decoder,
    ("prefix_lm", "encoder_decoder"): prefix_lm_seq2seq,
    ("masked_lm", "encoder"): masked_lm,
    ("span_corruption", "encoder_decoder"): span_corruption,
    ("ul2", "encoder_decoder"): ul2,
}


@dataclasses.dataclass(frozen=True)
class Objective:
  """A pretraining objective, answering what the code outside the objectives asks of it."""
  name: str
  # Rows split into a prefix read both ways and a continuation predicted after it (prefix LM,
  # UL2's S mode): a decoder's batches carry prefix_lengths, and its prompts are read so.
  prefix: bool = False
  # (seq_len, config) -> the longest decoder target a row of seq_len tokens gives an
  # encoder-decoder (None: seq_len, both sides padded to it).
  target_length: Callable[[int, ObjectiveConfig], int] | None = None

  def decoder_length(self, seq_len: int, config: ObjectiveConfig) -> int:
    return self.target_length(seq_len, config) if self.target_length else seq_len


OBJECTIVES = {o.name: o for o in (
    Objective("causal_lm"), Objective("prefix_lm", prefix=True), Objective("masked_lm"),
    Objective("span_corruption", target_length=span_corruption_target_length),
    Objective("ul2", prefix=True),
)}


def objective_of(config: ObjectiveConfig) -> Objective:
  return OBJECTIVES[config.name]


def sequence_lengths(config: ExperimentConfig) -> tuple[int, int]:
  """(input length, decoder target length) of the batches the config trains on.

  Decoder-only and encoder: (seq_len, 0). Encoder-decoder: span corruption targets hold the
  sentinels, the noise and EOS (span_corruption_target_length); prefix LM and UL2
  pad both sides to seq_len; a fine-tuning task reads task.max_input_len (0: seq_len) and
  writes task.max_target_len; packed (task.packing), its rows hold max(seq_len,
  max_input_len) inputs and at most that many targets in the max lengths' proportion (a run
  sizes them from its data: tasks.TaskData.row_lengths).
  """
  seq_len = config.data.seq_len
  if not models.family_of(config.model).seq2seq:
    return seq_len, 0
  if config.task.name:
    input_len, target_len = config.task.max_input_len or seq_len, config.task.max_target_len
    if config.task.packing:
      rows = max(seq_len, input_len)
      return rows, -(-target_len * rows // input_len)
    return input_len, target_len
  objective = objective_of(config.objective)
  return seq_len, objective.decoder_length(seq_len, config.objective)


class BatchTransform:
  """The objective's transform bound to a tokenizer: callable(batch, rng) for grain's
  random_map (a class, not a closure, so grain worker processes can pickle it)."""

  def __init__(self, objective: ObjectiveConfig, family: str, tokenizer):
    self._fn = TRANSFORMS[(objective.name, family)]
    self._info = TokenInfo.from_tokenizer(tokenizer, objective)
    self._objective = objective

  def __call__(self, batch: Batch, rng: np.random.Generator) -> Batch:
    return self._fn(batch, rng, self._info, self._objective)
