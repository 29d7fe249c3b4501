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
Losses return sums (not means) plus the token count, so that padding, packing and gradient
accumulation never bias the average: the host divides once.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.config import ObjectiveConfig

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


def decoder_loss(model, params, batch, *, rngs=None, deterministic=True):
  logits = model.apply({"params": params}, batch["inputs"], positions=batch.get("positions"),
                       segment_ids=batch.get("segment_ids"),
                       prefix_lengths=batch.get("prefix_lengths"), deterministic=deterministic,
                       rngs=rngs)
  return token_cross_entropy(logits, batch["targets"], batch["weights"])


def encoder_loss(model, params, batch, *, rngs=None, deterministic=True):
  logits = model.apply({"params": params}, batch["inputs"], input_mask=batch["input_mask"],
                       deterministic=deterministic, rngs=rngs)
  return token_cross_entropy(logits, batch["targets"], batch["weights"])


def seq2seq_loss(model, params, batch, *, rngs=None, deterministic=True):
  logits = model.apply({"params": params}, batch["encoder_inputs"], batch["decoder_inputs"],
                       encoder_mask=batch["encoder_mask"], deterministic=deterministic,
                       rngs=rngs)
  return token_cross_entropy(logits, batch["targets"], batch["weights"])


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


def prefix_lm_decoder(batch: Batch, rng: np.random.Generator, info: TokenInfo,
                      objective: ObjectiveConfig) -> Batch:
  """A random split point per row: attention is bidirectional before it, loss only after."""
  del info, objective
  _, lengths = raw_windows(batch)
  # prefix p in [1, n-1] leaves at least one token to predict (n = real tokens in the row).
  prefix = 1 + np.floor(rng.random(len(lengths)) * np.maximum(lengths - 1, 1)).astype(np.int32)
  t = np.arange(batch["targets"].shape[1])
  weights = batch["weights"] * (t[None, :] >= prefix[:, None] - 1)  # target t is token t+1
  return dict(batch, weights=weights.astype(np.float32), prefix_lengths=prefix.astype(np.int32))


def masked_lm(batch: Batch, rng: np.random.Generator, info: TokenInfo,
              objective: ObjectiveConfig) -> Batch:
  """BERT's masking on the first T tokens of each window."""
  tokens = batch["inputs"]  # (B, T)
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
  return {"inputs": inputs.astype(np.int32), "targets": tokens.astype(np.int32),
          "weights": selected.astype(np.float32), "input_mask": real}


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


def span_corruption(batch: Batch, rng: np.random.Generator, info: TokenInfo,
                    objective: ObjectiveConfig) -> Batch:
  seq_len = batch["inputs"].shape[1]  # the encoder sees at most T tokens

  def pair(tokens):
    noise = random_spans_noise_mask(len(tokens), objective.noise_density,
                                    objective.mean_span_length, rng)
    return corrupt_spans(tokens, noise, info.sentinel_ids)

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
  rows = _seq2seq_rows(batch, seq_len, lambda tokens: _split_at_random(tokens, rng))
  return _seq2seq_batch(rows, seq_len, seq_len, info)


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


class BatchTransform:
  """The objective's transform bound to a tokenizer: callable(batch, rng) for grain's
  random_map (a class, not a closure, so grain worker processes can pickle it)."""

  def __init__(self, objective: ObjectiveConfig, family: str, tokenizer):
    self._fn = TRANSFORMS[(objective.name, family)]
    self._info = TokenInfo.from_tokenizer(tokenizer, objective)
    self._objective = objective

  def __call__(self, batch: Batch, rng: np.random.Generator) -> Batch:
    return self._fn(batch, rng, self._info, self._objective)
