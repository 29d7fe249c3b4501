"""Autoregressive decoding with a KV cache: greedy, temperature, top-k, top-p and beam search.

Each family gives two methods (models.py), the same shape for all: `prefill` (inputs -> the
first new token's logits, a fresh cache) and `decode_step` ((cache, tokens) -> (logits,
cache)). The cache lives in the model's 'cache' collection: keys and values per layer
(layers.Attention; an encoder-decoder's cross-attention keys and values are computed once, at
the prefill), and one position counter per row (models.Stack). Every strategy here is written
once over `prefill` and `step`. When a decoder's context window is full, the cache is rebuilt
from the most recent half window and decoding continues (a model with learned positions cannot
see past max_len).
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


# ---------------------------------------------------------------------------------------------
# One decoding step per family: prefill (inputs -> cache, first logits), then step
# (cache, tokens) -> (logits, cache). Every strategy below is written once over these two.
# ---------------------------------------------------------------------------------------------


def prefill(model: nn.Module, params: Any, inputs: Array, input_mask: Array, *,
            prefix_lm: bool = False, start_id: int = 0) -> tuple[Array, Any]:
  """A fresh cache for `inputs` (B, P) -> (logits of the first new token (B, V), cache).

  Decoder: right-padded prompts (input_mask True on their tokens). Encoder-decoder: the encoder
  input, encoded once (its cross-attention keys and values go into the cache), then the
  start token."""
  logits, variables = model.apply({"params": params}, inputs, input_mask, prefix_lm=prefix_lm,
                                  start_id=start_id, method="prefill", mutable=["cache"])
  return logits, variables["cache"]


def step(model: nn.Module, params: Any, cache: Any, tokens: Array) -> tuple[Array, Any]:
  """The one decoding step of every family: tokens (B,) -> (next-token logits (B, V), cache)."""
  logits, variables = model.apply({"params": params, "cache": cache}, tokens,
                                  method="decode_step", mutable=["cache"])
  return logits, variables["cache"]


def init_cache(model: nn.Module, batch_size: int, input_len: int = 1) -> Any:
  """A zero cache of the right shapes for `batch_size` rows (an encoder-decoder's holds the
  encoder's keys and values: input_len of them)."""
  tokens = jnp.zeros((batch_size, input_len), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens > -1,
                                             method="prefill"))
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


@functools.partial(jax.jit, static_argnames=("model", "num_steps", "sampling", "prefix_lm"))
def _sample(params, inputs: Array, input_mask: Array, rng: Array, start_id=0, *,
            model: nn.Module, num_steps: int, sampling: SamplingConfig,
            prefix_lm: bool = False) -> Array:
  """Prefill, then num_steps sampled tokens (B, num_steps) through the one step function."""
  logits, cache = prefill(model, params, inputs, input_mask, prefix_lm=prefix_lm,
                          start_id=start_id)

  def body(carry, i):
    cache, logits = carry
    token = sample_logits(logits, jax.random.fold_in(rng, i), sampling)
    logits, cache = step(model, params, cache, token)
    return (cache, logits), token

  _, tokens = jax.lax.scan(body, (cache, logits), jnp.arange(num_steps))
  return tokens.T  # (B, n)


def _repeat_eos(new: np.ndarray, eos_id: int | None) -> np.ndarray:
  """Everything after a row's first EOS becomes EOS."""
  if eos_id is None:
    return new
  return np.where(np.cumsum(new == eos_id, axis=1) > 0, eos_id, new)


def generate(model: nn.Module, params: Any, prompt: np.ndarray, max_new_tokens: int, rng: Array,
             sampling: SamplingConfig = SamplingConfig(), eos_id: int | None = None,
             prefix_lm: bool = False) -> np.ndarray:
  """Continues each row of `prompt` (B, P) by max_new_tokens tokens; returns (B, P + new).

  Rows that emit eos_id keep it for the rest of the output. prefix_lm: attend bidirectionally
  over the context at each (re)fill, as a prefix-LM model was trained. When the context window
  (model.max_len) is full, the cache is refilled from the most recent half window.
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
    context = jnp.asarray(tokens[:, -keep:])
    steps = min(remaining, max_len - keep)
    new = np.asarray(_sample(params, context, jnp.ones(context.shape, bool),
                             jax.random.fold_in(rng, window), model=model, num_steps=steps,
                             sampling=sampling, prefix_lm=prefix_lm))
    tokens = np.concatenate([tokens, new], axis=1)
    remaining -= steps
    window += 1
    if eos_id is not None:
      done = np.cumsum(tokens[:, prompt.shape[1]:] == eos_id, axis=1) > 0
      if done[:, -1].all():
        break
  tokens[:, prompt.shape[1]:] = _repeat_eos(tokens[:, prompt.shape[1]:], eos_id)
  return tokens


def generate_padded(model: nn.Module, params: Any, prompts: np.ndarray,
                    prompt_lengths: np.ndarray, max_new_tokens: int,
                    eos_id: int | None = None) -> np.ndarray:
  """Greedy decoding of a batch of prompts of different lengths, right-padded into (B, P);
  returns only the new tokens (B, max_new_tokens), EOS repeated after a row's first EOS."""
  if prompts.shape[1] + max_new_tokens > model.config.max_len:
    raise ValueError(f"prompts ({prompts.shape[1]}) + max_new_tokens ({max_new_tokens}) exceed "
                     f"model.max_len={model.config.max_len}")
  mask = np.arange(prompts.shape[1])[None] < np.asarray(prompt_lengths)[:, None]
  new = _sample(params, jnp.asarray(prompts, jnp.int32), jnp.asarray(mask), jax.random.key(0),
                model=model, num_steps=max_new_tokens, sampling=SamplingConfig(temperature=0.0))
  return _repeat_eos(np.asarray(new), eos_id)


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
  out = _sample(params, jnp.asarray(encoder_tokens), jnp.asarray(encoder_mask, bool), rng,
                start_id, model=model, num_steps=max_new_tokens, sampling=sampling)
  return _repeat_eos(np.asarray(out), eos_id)


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
  """Reorders the per-row cache arrays (leading axis B*K). The caches of scanned layers
  (model.scan_layers) carry a layer axis first, rows second."""

  def select(path, x):
    scanned = any(getattr(k, "key", None) == models.SCANNED_LAYERS for k in path)
    return x[:, rows] if scanned else x[rows]

  return jax.tree_util.tree_map_with_path(select, cache)


@functools.partial(jax.jit, static_argnames=("model", "beam_size", "num_steps", "prefix_lm"))
def _beam_search(params, inputs: Array, input_mask: Array, eos_id, start_id, length_penalty, *,
                 model: nn.Module, beam_size: int, num_steps: int, prefix_lm: bool = False):
  b, k = inputs.shape[0], beam_size
  # Every beam starts from its row's input: B*K rows through the one prefill and step.
  logits, cache = prefill(model, params, jnp.repeat(inputs, k, axis=0),
                          jnp.repeat(input_mask, k, axis=0), prefix_lm=prefix_lm,
                          start_id=start_id)

  vocab = logits.shape[-1]
  eos_only = jnp.full((vocab,), -jnp.inf).at[eos_id].set(0.0)  # a finished beam stays put
  scores = jnp.tile(jnp.array([0.0] + [-jnp.inf] * (k - 1)), (b, 1))  # one live beam at first

  def beam_step(carry, t):
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
    logits, cache = step(model, params, _select_rows(cache, rows), token.reshape(-1))
    return (cache, logits, top_scores, finished, lengths, tokens), None

  carry = (cache, logits, scores, jnp.zeros((b, k), bool), jnp.zeros((b, k), jnp.int32),
           jnp.zeros((b, k, num_steps), jnp.int32))
  (_, _, scores, _, lengths, tokens), _ = jax.lax.scan(beam_step, carry, jnp.arange(num_steps))
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
  seq2seq = model.config.family == "encoder_decoder"
  inputs = np.asarray(inputs, np.int32)
  if not seq2seq and inputs.shape[1] + max_new_tokens > model.config.max_len:
    raise ValueError(f"prompt ({inputs.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds "
                     f"model.max_len={model.config.max_len}")
  if seq2seq and max_new_tokens > model.config.max_len:
    raise ValueError(f"max_new_tokens={max_new_tokens} exceeds model.max_len="
                     f"{model.config.max_len}")
  if input_mask is None:
    input_mask = np.ones(inputs.shape, bool)
  if prompt_lengths is not None:  # right-padded prompts of different lengths
    input_mask = np.arange(inputs.shape[1])[None] < np.asarray(prompt_lengths)[:, None]
  out = _beam_search(params, jnp.asarray(inputs), jnp.asarray(input_mask, bool), eos_id,
                     start_id, float(length_penalty), model=model, beam_size=beam_size,
                     num_steps=max_new_tokens, prefix_lm=prefix_lm)
  return tuple(np.asarray(x) for x in out)
