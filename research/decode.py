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
import re
from typing import Any, Callable, Iterator

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


@functools.partial(jax.jit, static_argnames=("model", "prefix_lm"))
def _prefill(params, inputs: Array, input_mask: Array, *, model: nn.Module,
             prefix_lm: bool = False) -> tuple[Array, Any]:
  return prefill(model, params, inputs, input_mask, prefix_lm=prefix_lm)


@functools.partial(jax.jit, static_argnames=("model", "num_steps", "sampling"),
                   donate_argnames=("cache",))
def _continue(params, cache: Any, logits: Array, rng: Array, offset: Array, *,
              model: nn.Module, num_steps: int, sampling: SamplingConfig
              ) -> tuple[Array, Any, Array]:
  """num_steps more tokens (B, num_steps) from a cache and the logits of the next token; token
  i of the window is drawn with fold_in(rng, i), as `_sample` draws it."""

  def body(carry, i):
    cache, logits = carry
    token = sample_logits(logits, jax.random.fold_in(rng, i), sampling)
    logits, cache = step(model, params, cache, token)
    return (cache, logits), token

  (cache, logits), tokens = jax.lax.scan(body, (cache, logits), offset + jnp.arange(num_steps))
  return tokens.T, cache, logits


def stream(model: nn.Module, params: Any, prompt: np.ndarray, max_new_tokens: int, rng: Array,
           sampling: SamplingConfig = SamplingConfig(), eos_id: int | None = None,
           prefix_lm: bool = False, chunk: int = 16) -> Iterator[np.ndarray]:
  """Continues each row of a decoder's `prompt` (B, P), yielding the new tokens (B, n) as they
  come, `chunk` steps at a time, until max_new_tokens or every row has emitted eos_id. When the
  context window (model.max_len) is full, the cache is refilled from the most recent half
  window (prefix_lm: attended bidirectionally at each refill, as a prefix-LM was trained)."""
  max_len = model.config.max_len
  tokens = np.asarray(prompt, np.int32)
  if tokens.shape[1] == 0:
    raise ValueError("the prompt is empty; give at least one token to condition on")
  done = np.zeros(tokens.shape[0], bool)
  remaining, window = max_new_tokens, 0
  while remaining > 0 and not done.all():
    # Context: the whole history if it fits, else the most recent half window.
    keep = tokens.shape[1] if tokens.shape[1] < max_len else max_len // 2
    context = jnp.asarray(tokens[:, -keep:])
    steps = min(remaining, max_len - keep)
    logits, cache = _prefill(params, context, jnp.ones(context.shape, bool), model=model,
                             prefix_lm=prefix_lm)
    window_rng = jax.random.fold_in(rng, window)
    taken = 0
    while taken < steps and not done.all():
      # Always `chunk` steps (one compiled program); steps past the window are dropped, and
      # the cache is refilled before it is used again.
      new, cache, logits = _continue(params, cache, logits, window_rng, jnp.int32(taken),
                                     model=model, num_steps=min(chunk, steps), sampling=sampling)
      new = np.asarray(new)[:, :steps - taken]
      if eos_id is not None:  # a row's tokens after its first EOS are EOS
        new = np.where(done[:, None] | (np.cumsum(new == eos_id, axis=1) > 0), eos_id, new)
        done |= (new == eos_id).any(axis=1)
      tokens = np.concatenate([tokens, new], axis=1)
      taken += new.shape[1]
      yield new
    remaining -= taken
    window += 1


class Stopped(Exception):
  """Ctrl-C stopped a generation; `texts` holds what was generated until then."""

  def __init__(self, texts):
    super().__init__("interrupted")
    self.texts = texts


def generate(model: nn.Module, params: Any, prompt: np.ndarray, max_new_tokens: int, rng: Array,
             sampling: SamplingConfig = SamplingConfig(), eos_id: int | None = None,
             prefix_lm: bool = False) -> np.ndarray:
  """Continues each row of `prompt` (B, P) by max_new_tokens tokens; returns (B, P + new), the
  whole of `stream`. Rows that emit eos_id keep it for the rest of the output."""
  prompt = np.asarray(prompt, np.int32)
  new = list(stream(model, params, prompt, max_new_tokens, rng, sampling, eos_id, prefix_lm))
  out = np.concatenate([prompt, *new], axis=1)
  missing = prompt.shape[1] + max_new_tokens - out.shape[1]
  if missing > 0 and eos_id is not None:  # stopped early: every row has ended
    out = np.pad(out, ((0, 0), (0, missing)), constant_values=eos_id)
  return out


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
  seq2seq = models.family_of(model.config).seq2seq
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


# ---------------------------------------------------------------------------------------------
# Text in, text out: what the tools that generate share (generate, chat, few-shot evaluation)
# ---------------------------------------------------------------------------------------------


def encode_with_specials(tokenizer, text: str, specials: list[str]) -> np.ndarray:
  """Tokenizes text, turning each literal special-token marker (e.g. <mask>) into its id."""
  present = [s for s in specials if s in text]
  if not present:
    return np.asarray(tokenizer.encode(text), np.int32)
  pattern = "(" + "|".join(re.escape(s) for s in sorted(present, key=len, reverse=True)) + ")"
  ids = []
  for piece in re.split(pattern, text):
    if piece in present:
      ids.append(tokenizer.token_to_id(piece))
    elif piece:
      ids.extend(int(i) for i in tokenizer.encode(piece))
  return np.asarray(ids, np.int32)


def begin_of_text(tokenizer) -> list[int]:
  """The ids a Hugging Face tokenizer's template puts before a text (Gemma's <bos>, Llama 3's
  <|begin_of_text|>; none for GPT-2): a decoder trained with them expects them."""
  if getattr(tokenizer, "kind", "") != "hf":
    return []
  ids = [int(i) for i in tokenizer.encode("", add_special_tokens=True)]
  return [i for i in ids if i != tokenizer.eos_id]


def sized_for(model: nn.Module, config, length: int):
  """(model, config) whose context is `length` positions, rounded up to 64, when that is less
  than model.max_len and no parameter depends on it (rotary or no positions): the KV cache then
  holds what a generation needs, not the model's whole context."""
  m = config.model
  length = -(-length // 64) * 64
  if m.position == "learned" or not models.family_of(m).generates or length >= m.max_len:
    return model, config
  config = dataclasses.replace(config, model=dataclasses.replace(m, max_len=length))
  return type(model)(config.model), config


class Streamer:
  """Shows a generation as it grows: the text of (prefix + new ids) is decoded anew at each
  update and what was not shown yet goes to `on_text` (held back while it ends in a partial
  UTF-8 character). With no prefix (a chat reply) leading whitespace is dropped."""

  def __init__(self, tokenizer, prefix_ids, on_text: Callable[[str], None] | None):
    self.tokenizer, self.prefix, self.on_text = tokenizer, [int(i) for i in prefix_ids], on_text
    self.shown = ""

  def _show(self, text: str) -> None:
    if not self.prefix:
      text = text.lstrip()
    if self.on_text and text.startswith(self.shown) and len(text) > len(self.shown):
      self.on_text(text[len(self.shown):])
      self.shown = text

  def update(self, new_ids) -> None:
    text = self.tokenizer.decode(self.prefix + [int(i) for i in new_ids])
    if not text.endswith("\ufffd"):
      self._show(text)

  def finish(self, text: str) -> None:
    """The final text: whatever of it was not shown yet."""
    self._show(text)
