"""Autoregressive decoding with a KV cache: greedy, temperature, top-k and top-p sampling.

The cache lives in the model's 'cache' collection (layers.Attention): a prefill call writes the
prompt's keys and values, then each step feeds one token. When the context window is full the
cache is rebuilt from the most recent half window and decoding continues (a model with learned
positions cannot see past max_len).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import models

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  temperature: float = 1.0  # 0: greedy
  top_k: int = 0  # 0: no top-k filter
  top_p: float = 1.0  # 1: no nucleus filter


def sample_logits(logits: Array, rng: Array, sampling: SamplingConfig) -> Array:
  """Picks one token per row of logits (B, V)."""
  logits = logits.astype(jnp.float32)
  if sampling.temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / sampling.temperature
  neg_inf = jnp.finfo(jnp.float32).min
  if sampling.top_k > 0:
    kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]  # (B, 1)
    logits = jnp.where(logits < kth, neg_inf, logits)
  if sampling.top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (always at least the best token).
    cutoff_index = jnp.sum(cumulative < sampling.top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, neg_inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def init_cache(model: nn.Module, batch_size: int, encoder_len: int = 1) -> Any:
  """A zero cache for `batch_size` rows, shaped by the model's max_len."""
  tokens = jnp.zeros((batch_size, 1), jnp.int32)
  args = (tokens,)
  if isinstance(model, models.EncoderDecoder):
    args = (jnp.zeros((batch_size, encoder_len), jnp.int32), tokens)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, decode=True))
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


@functools.partial(jax.jit, static_argnames=("model", "num_steps", "sampling", "prefix_lm"))
def _decode_window(params, context: Array, rng: Array, *, model: nn.Module, num_steps: int,
                   sampling: SamplingConfig, prefix_lm: bool = False) -> Array:
  """Prefills `context` (B, C) into a fresh cache, then samples num_steps tokens -> (B, n).
  prefix_lm: the context is a bidirectional prefix, as the model was trained."""
  cache = init_cache(model, context.shape[0])
  extra = {}
  if prefix_lm:
    extra["prefix_lengths"] = jnp.full((context.shape[0],), context.shape[1], jnp.int32)
  logits, updates = model.apply({"params": params, "cache": cache}, context, decode=True,
                                mutable=["cache"], **extra)

  def step(carry, i):
    cache, last_logits = carry
    token = sample_logits(last_logits, jax.random.fold_in(rng, i), sampling)
    logits, updates = model.apply({"params": params, "cache": cache}, token[:, None],
                                  decode=True, mutable=["cache"])
    return (updates["cache"], logits[:, -1]), token

  _, tokens = jax.lax.scan(step, (updates["cache"], logits[:, -1]), jnp.arange(num_steps))
  return tokens.T  # (B, n)


def generate(model: nn.Module, params: Any, prompt: np.ndarray, max_new_tokens: int, rng: Array,
             sampling: SamplingConfig = SamplingConfig(), eos_id: int | None = None,
             prefix_lm: bool = False) -> np.ndarray:
  """Continues each row of `prompt` (B, P) by max_new_tokens tokens; returns (B, P + new).

  Rows that emit eos_id keep it for the rest of the output. prefix_lm: attend bidirectionally
  over the context at each (re)fill, as a prefix-LM model was trained.
  """
  max_len = model.config.max_len
  tokens = np.asarray(prompt, np.int32)
  if tokens.shape[1] == 0:
    raise ValueError("the prompt is empty; give at least one token to condition on")
  remaining = max_new_tokens
  window = 0
  while remaining > 0:
    # Context: the whole history if it fits, else the most recent half window.
    keep = tokens.shape[1] if tokens.shape[1] < max_len else max_len // 2
    context = tokens[:, -keep:]
    steps = min(remaining, max_len - keep)
    new = np.asarray(_decode_window(params, jnp.asarray(context), jax.random.fold_in(rng, window),
                                    model=model, num_steps=steps, sampling=sampling,
                                    prefix_lm=prefix_lm))
    tokens = np.concatenate([tokens, new], axis=1)
    remaining -= steps
    window += 1
    if eos_id is not None:
      done = np.cumsum(tokens[:, prompt.shape[1]:] == eos_id, axis=1) > 0
      if done[:, -1].all():
        break
  if eos_id is not None:  # everything after a row's first EOS becomes EOS
    generated = tokens[:, prompt.shape[1]:]
    after = np.cumsum(generated == eos_id, axis=1) > 0
    tokens[:, prompt.shape[1]:] = np.where(after, eos_id, generated)
  return tokens


@functools.partial(jax.jit, static_argnames=("model", "num_steps"))
def _greedy_padded(params, prompts: Array, prompt_lengths: Array, *, model: nn.Module,
                   num_steps: int) -> Array:
  """Greedy continuation of right-padded prompts (B, P) of lengths (B,) -> (B, num_steps)."""
  cache = init_cache(model, prompts.shape[0])
  logits, updates = model.apply({"params": params, "cache": cache}, prompts, decode=True,
                                prompt_lengths=prompt_lengths, mutable=["cache"])
  last = jnp.take_along_axis(logits, (prompt_lengths - 1)[:, None, None], axis=1)[:, 0]

  def step(carry, _):
    cache, last_logits = carry
    token = jnp.argmax(last_logits, axis=-1).astype(jnp.int32)
    logits, updates = model.apply({"params": params, "cache": cache}, token[:, None],
                                  decode=True, mutable=["cache"])
    return (updates["cache"], logits[:, -1]), token

  _, tokens = jax.lax.scan(step, (updates["cache"], last), None, length=num_steps)
  return tokens.T


def generate_padded(model: nn.Module, params: Any, prompts: np.ndarray,
                    prompt_lengths: np.ndarray, max_new_tokens: int,
                    eos_id: int | None = None) -> np.ndarray:
  """Greedy decoding of a batch of prompts of different lengths, right-padded into (B, P);
  returns only the new tokens (B, max_new_tokens), EOS repeated after a row's first EOS."""
  if prompts.shape[1] + max_new_tokens > model.config.max_len:
    raise ValueError(f"prompts ({prompts.shape[1]}) + max_new_tokens ({max_new_tokens}) exceed "
                     f"model.max_len={model.config.max_len}")
  new = np.asarray(_greedy_padded(params, jnp.asarray(prompts, jnp.int32),
                                  jnp.asarray(prompt_lengths, jnp.int32), model=model,
                                  num_steps=max_new_tokens))
  if eos_id is not None:
    new = np.where(np.cumsum(new == eos_id, axis=1) > 0, eos_id, new)
  return new


@functools.partial(jax.jit, static_argnames=("model", "num_steps", "sampling"))
def _decode_seq2seq(params, encoder_tokens: Array, encoder_mask: Array, rng: Array, start_id,
                    *, model: nn.Module, num_steps: int, sampling: SamplingConfig) -> Array:
  """Encodes once, then samples num_steps decoder tokens with the decoder's KV cache."""
  encoded = model.apply({"params": params}, encoder_tokens, input_mask=encoder_mask,
                        method="encode")
  b = encoder_tokens.shape[0]
  cache = init_cache(model, b, encoder_tokens.shape[1])

  def step(carry, i):
    cache, token = carry
    logits, updates = model.apply({"params": params, "cache": cache}, encoded, token[:, None],
                                  encoder_mask=encoder_mask, decode=True, mutable=["cache"],
                                  method="decode")
    token = sample_logits(logits[:, -1], jax.random.fold_in(rng, i), sampling)
    return (updates["cache"], token), token

  start = jnp.full((b,), start_id, jnp.int32)
  _, tokens = jax.lax.scan(step, (cache, start), jnp.arange(num_steps))
  return tokens.T  # (B, n)


def generate_seq2seq(model: nn.Module, params: Any, encoder_tokens: np.ndarray,
                     encoder_mask: np.ndarray, max_new_tokens: int, rng: Array,
                     sampling: SamplingConfig = SamplingConfig(), eos_id: int | None = None,
                     start_id: int = 0) -> np.ndarray:
  """Encoder-decoder generation: returns the decoder's tokens (B, max_new_tokens), everything
  after a row's first EOS set to EOS. Decoding starts from `start_id` (T5: the pad id)."""
  max_len = model.config.max_len
  if max_new_tokens > max_len:
    raise ValueError(f"max_new_tokens={max_new_tokens} exceeds the decoder's context "
                     f"model.max_len={max_len}")
  out = np.asarray(_decode_seq2seq(params, jnp.asarray(encoder_tokens),
                                   jnp.asarray(encoder_mask, bool), rng, start_id, model=model,
                                   num_steps=max_new_tokens, sampling=sampling))
  if eos_id is not None:
    after = np.cumsum(out == eos_id, axis=1) > 0
    out = np.where(after, eos_id, out)
  return out


def fill_masks(model: nn.Module, params: Any, tokens: np.ndarray, mask_id: int,
               input_mask: np.ndarray | None = None, rng: Array | None = None,
               sampling: SamplingConfig = SamplingConfig(temperature=0.0)) -> np.ndarray:
  """Encoder-only "generation": every mask_id position of tokens (B, T) replaced by the MLM
  head's prediction, all in one pass."""
  tokens = np.asarray(tokens, np.int32)
  logits = model.apply({"params": params}, jnp.asarray(tokens),
                       input_mask=None if input_mask is None else jnp.asarray(input_mask))
  b, t, v = logits.shape
  rng = rng if rng is not None else jax.random.key(0)
  picked = np.asarray(sample_logits(logits.reshape(b * t, v), rng, sampling)).reshape(b, t)
  return np.where(tokens == mask_id, picked, tokens)


# ---------------------------------------------------------------------------------------------
# Beam search
# ---------------------------------------------------------------------------------------------


def _select_rows(cache: Any, rows: Array) -> Any:
  """Reorders the per-row cache arrays (leading axis B*K); scalar counters are shared. The
  caches of scanned layers (model.scan_layers) carry a layer axis first, rows second."""

  def select(path, x):
    scanned = any(getattr(k, "key", None) == models.SCANNED_LAYERS for k in path)
    if x.ndim == int(scanned):  # a counter (one per layer when scanned)
      return x
    return x[:, rows] if scanned else x[rows]

  return jax.tree_util.tree_map_with_path(select, cache)


@functools.partial(jax.jit, static_argnames=("model", "beam_size", "num_steps", "seq2seq",
                                             "prefix_lm"))
def _beam_search(params, inputs: Array, input_mask: Array, eos_id, start_id,
                 length_penalty, prompt_lengths=None, *, model: nn.Module, beam_size: int,
                 num_steps: int, seq2seq: bool, prefix_lm: bool = False):
  b, k = inputs.shape[0], beam_size
  rows_in = jnp.repeat(inputs, k, axis=0)  # (B*K, P): every beam starts from its row's input
  if seq2seq:
    mask_in = jnp.repeat(input_mask, k, axis=0)
    encoded = model.apply({"params": params}, rows_in, input_mask=mask_in, method="encode")
    cache = init_cache(model, b * k, inputs.shape[1])

    def step_logits(cache, tokens):  # tokens (B*K, 1)
      logits, upd = model.apply({"params": params, "cache": cache}, encoded, tokens,
                                encoder_mask=mask_in, decode=True, mutable=["cache"],
                                method="decode")
      return logits[:, -1], upd["cache"]

    logits, cache = step_logits(cache, jnp.full((b * k, 1), start_id, jnp.int32))
  else:
    extra = {}
    lengths = jnp.full((b * k,), inputs.shape[1], jnp.int32)
    if prompt_lengths is not None:  # right-padded prompts of different lengths
      lengths = jnp.repeat(prompt_lengths, k, axis=0)
      extra["prompt_lengths"] = lengths
    if prefix_lm:
      extra["prefix_lengths"] = lengths
    logits, upd = model.apply({"params": params, "cache": init_cache(model, b * k)}, rows_in,
                              decode=True, mutable=["cache"], **extra)
    logits = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
    cache = upd["cache"]

    def step_logits(cache, tokens):
      logits, upd = model.apply({"params": params, "cache": cache}, tokens, decode=True,
                                mutable=["cache"])
      return logits[:, -1], upd["cache"]

  vocab = logits.shape[-1]
  eos_only = jnp.full((vocab,), -jnp.inf).at[eos_id].set(0.0)  # a finished beam stays put
  scores = jnp.tile(jnp.array([0.0] + [-jnp.inf] * (k - 1)), (b, 1))  # one live beam at first

  def step(carry, t):
    cache, logits, scores, finished, lengths, tokens = carry
    logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(b, k, vocab)
    logp = jnp.where(finished[..., None], eos_only, logp)
    top_scores, top = jax.lax.top_k((scores[..., None] + logp).reshape(b, k * vocab), k)
    beam, token = top // vocab, (top % vocab).astype(jnp.int32)  # (B, K)
    rows = (jnp.arange(b)[:, None] * k + beam).reshape(-1)
    was_finished = jnp.take_along_axis(finished, beam, axis=1)
    tokens = jnp.take_along_axis(tokens, beam[..., None], axis=1).at[:, :, t].set(token)
    lengths = jnp.take_along_axis(lengths, beam, axis=1) + (~was_finished).astype(jnp.int32)
    finished = was_finished | (token == eos_id)
    logits, cache = step_logits(_select_rows(cache, rows), token.reshape(-1, 1))
    return (cache, logits, top_scores, finished, lengths, tokens), None

  carry = (cache, logits, scores, jnp.zeros((b, k), bool), jnp.zeros((b, k), jnp.int32),
           jnp.zeros((b, k, num_steps), jnp.int32))
  (_, _, scores, _, lengths, tokens), _ = jax.lax.scan(step, carry, jnp.arange(num_steps))
  # GNMT length normalisation: score / ((5 + length) / 6) ** alpha; alpha = 0 keeps raw scores.
  normalized = scores / ((5.0 + lengths) / 6.0) ** length_penalty
  order = jnp.argsort(-normalized, axis=1)
  return (jnp.take_along_axis(tokens, order[..., None], axis=1),
          jnp.take_along_axis(normalized, order, axis=1),
          jnp.take_along_axis(lengths, order, axis=1))


def beam_search(model: nn.Module, params: Any, inputs: np.ndarray, beam_size: int,
                max_new_tokens: int, eos_id: int, *, input_mask: np.ndarray | None = None,
                length_penalty: float = 0.6, start_id: int = 0, prefix_lm: bool = False,
                prompt_lengths: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Batched beam search for a decoder (inputs = prompts) or an encoder-decoder (inputs =
  encoder tokens, decoding from start_id).

  Decoder prompts of different lengths come right-padded with `prompt_lengths` (B,).
  Returns (tokens (B, K, n), scores (B, K), lengths (B, K)), beams sorted best first by their
  length-normalised log-probability. A beam ends at its EOS: later positions hold EOS and
  add nothing to its score; its length counts the tokens up to and including that EOS.
  """
  seq2seq = isinstance(model, models.EncoderDecoder)
  inputs = np.asarray(inputs, np.int32)
  if not seq2seq and inputs.shape[1] + max_new_tokens > model.config.max_len:
    raise ValueError(f"prompt ({inputs.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds "
                     f"model.max_len={model.config.max_len}")
  if seq2seq and max_new_tokens > model.config.max_len:
    raise ValueError(f"max_new_tokens={max_new_tokens} exceeds model.max_len="
                     f"{model.config.max_len}")
  if input_mask is None:
    input_mask = np.ones(inputs.shape, bool)
  if prompt_lengths is not None:
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
  out = _beam_search(params, jnp.asarray(inputs), jnp.asarray(input_mask, bool), eos_id,
                     start_id, float(length_penalty), prompt_lengths, model=model,
                     beam_size=beam_size,
                     num_steps=max_new_tokens, seq2seq=seq2seq, prefix_lm=prefix_lm)
  return tuple(np.asarray(x) for x in out)
