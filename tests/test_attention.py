"""One mask description (attention.MaskSpec), sliding windows, and the one decoding step.

Cached decoding must give the logits of the full forward pass (teacher forcing) for every
family: with right-padded prompts (padding segments), with a sliding window whose cache holds
fewer slots than the sequence, with a prefix-LM prompt, and through an encoder-decoder whose
cross-attention keys and values are cached at the prefill. Float32 throughout; 2e-5 tolerance.
"""

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import attention, decode, hf, layers, models
from research.config import ModelConfig

TINY = ModelConfig(family="decoder", vocab_size=37, num_layers=2, num_heads=4, num_kv_heads=2,
                   embed_dim=32, mlp_dim=64, max_len=24)
TOL = dict(atol=2e-5, rtol=1e-5)


def _init(cfg, *args):
  model = models.build_model(cfg)
  args = args or models.dummy_inputs(cfg, 8, 2)
  return model, model.init(jax.random.key(0), *args)["params"]


def _tokens(seed, shape, vocab=37):
  return jax.random.randint(jax.random.key(seed), shape, 1, vocab)


def test_mask_spec_dense_combines_segments_causality_prefix_and_window():
  # One row holding two packed documents (3 and 2 tokens) and a padding token.
  segments = jnp.array([[1, 1, 1, 2, 2, 0]])
  positions = jnp.array([[0, 1, 2, 0, 1, 0]])
  causal = attention.MaskSpec.self_attention(positions, segments, causal=True).dense()[0, 0]
  expected = np.array([[1, 0, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0, 0],
                       [1, 1, 1, 0, 0, 0],
                       [0, 0, 0, 1, 0, 0],
                       [0, 0, 0, 1, 1, 0],
                       [0, 0, 0, 0, 0, 0]], bool)  # padding sees nothing, is seen by nothing
  np.testing.assert_array_equal(causal, expected)
  windowed = attention.MaskSpec.self_attention(positions, segments, causal=True,
                                               window=2).dense()[0, 0]
  np.testing.assert_array_equal(windowed, expected & ~np.tri(6, k=-2, dtype=bool))
  prefix = attention.MaskSpec.self_attention(positions[:, :3], segments[:, :3], causal=True,
                                             prefix_lengths=jnp.array([2])).dense()[0, 0]
  np.testing.assert_array_equal(prefix, [[1, 1, 0], [1, 1, 0], [1, 1, 1]])
  both_ways = attention.MaskSpec.self_attention(positions[:, :3], None, causal=False,
                                                window=2).dense()[0, 0]
  np.testing.assert_array_equal(both_ways, [[1, 1, 0], [1, 1, 1], [0, 1, 1]])
  cross = attention.MaskSpec.cross_attention(jnp.array([[1, 2]]), segments).dense()[0, 0]
  np.testing.assert_array_equal(cross, [[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0]])


def _teacher_forced(model, params, prompt, mask, continuation, **prefill_kw):
  """Logits from decode.prefill then decode.step fed `continuation` (B, n) -> (B, 1 + n, V)."""
  logits, cache = jax.jit(functools.partial(decode.prefill, model, **prefill_kw))(
      params, prompt, mask)
  step = jax.jit(functools.partial(decode.step, model))  # compiled once, run per token
  out = [logits]
  for t in range(continuation.shape[1]):
    logits, cache = step(params, cache, continuation[:, t])
    out.append(logits)
  return jnp.stack(out, axis=1), cache


DECODER_VARIANTS = {
    "learned": {},
    "rope_window": dict(position="rope", attention_window=5),
    "relative_window_scanned": dict(position="relative", attention_window=4, scan_layers=True),
    "mqa_window_1": dict(num_kv_heads=1, position="rope", attention_window=1),
}


@pytest.mark.parametrize("variant", sorted(DECODER_VARIANTS))
def test_decoder_cached_decoding_matches_the_full_pass(variant):
  cfg = dataclasses.replace(TINY, **DECODER_VARIANTS[variant])
  model, params = _init(cfg)
  x = _tokens(1, (2, 16))
  full = model.apply({"params": params}, x)  # (B, 16, V)
  # A 9-token prefill (longer than every window here: the cache keeps its tail), then steps.
  got, cache = _teacher_forced(model, params, x[:, :9], jnp.ones((2, 9), bool), x[:, 9:15])
  np.testing.assert_allclose(got, full[:, 8:15], **TOL)
  slots = jax.tree.leaves(jax.tree_util.tree_map_with_path(
      lambda p, a: a.shape if "cached_key" in jax.tree_util.keystr(p) else None, cache),
      is_leaf=lambda a: isinstance(a, tuple))
  assert slots and all(s[-3] == layers.cache_size(cfg) for s in slots)  # W slots with a window
  if cfg.attention_window:
    assert layers.cache_size(cfg) == cfg.attention_window


def test_right_padded_prompts_decode_as_each_prompt_alone():
  cfg = dataclasses.replace(TINY, position="rope", attention_window=4)
  model, params = _init(cfg)
  x = _tokens(2, (2, 14))
  lengths = np.array([7, 4])
  padded = jnp.where(jnp.arange(7)[None] < lengths[:, None], x[:, :7], 0)  # padding: token 0
  mask = jnp.arange(7)[None] < lengths[:, None]
  for row, n in enumerate(lengths):  # row r continues its own prompt with x[r, n:n+5]
    cont = jnp.stack([x[r, n:n + 5] for r, n in enumerate(lengths)])
    got, _ = _teacher_forced(model, params, padded, mask, cont)
    alone = model.apply({"params": params}, x[row:row + 1, :n + 5])
    np.testing.assert_allclose(got[row], alone[0, n - 1:n + 5], **TOL)


def test_prefix_lm_prefill_is_bidirectional_then_causal():
  cfg = dataclasses.replace(TINY, position="rope")
  model, params = _init(cfg)
  x = _tokens(3, (2, 12))
  full = model.apply({"params": params}, x, prefix_lengths=jnp.array([6, 6]))
  got, _ = _teacher_forced(model, params, x[:, :6], jnp.ones((2, 6), bool), x[:, 6:11],
                           prefix_lm=True)
  np.testing.assert_allclose(got, full[:, 5:11], **TOL)


@pytest.mark.parametrize("window", [0, 3])
def test_encoder_decoder_caches_cross_attention_once_and_matches_the_full_pass(window):
  cfg = dataclasses.replace(TINY, family="encoder_decoder", position="relative",
                            attention_window=window)
  src, tgt = _tokens(4, (2, 10)), _tokens(5, (2, 8))
  src_mask = jnp.arange(10)[None] < jnp.array([[10], [6]])  # the second input is padded
  model, params = _init(cfg, src, tgt)
  start = jnp.zeros((2, 1), jnp.int32)
  full = model.apply({"params": params}, src, jnp.concatenate([start, tgt[:, :-1]], 1),
                     encoder_mask=src_mask)
  got, cache = _teacher_forced(model, params, src, src_mask, tgt[:, :7], start_id=0)
  np.testing.assert_allclose(got, full, **TOL)
  cross = [a for p, a in jax.tree_util.tree_flatten_with_path(cache)[0]
           if "cross_key" in jax.tree_util.keystr(p)]
  assert len(cross) == cfg.num_layers and cross[0].shape[1] == 10  # the encoder's 10 keys


def test_one_beam_is_greedy_through_the_one_step_for_every_decoding_family():
  for cfg, prefix_lm in ((dataclasses.replace(TINY, attention_window=3), False),
                         (TINY, True),
                         (dataclasses.replace(TINY, family="encoder_decoder"), False)):
    inputs = np.asarray(_tokens(6, (2, 5)))
    model, params = _init(cfg)
    beams, _, _ = decode.beam_search(model, params, inputs, beam_size=1, max_new_tokens=6,
                                     eos_id=-1, length_penalty=0.0, prefix_lm=prefix_lm)
    if cfg.family == "encoder_decoder":
      greedy = decode.generate_seq2seq(model, params, inputs, np.ones_like(inputs, bool), 6,
                                       jax.random.key(0), decode.SamplingConfig(temperature=0.0))
    else:
      greedy = decode.generate(model, params, inputs, 6, jax.random.key(0),
                               decode.SamplingConfig(temperature=0.0),
                               prefix_lm=prefix_lm)[:, 5:]
    np.testing.assert_array_equal(beams[:, 0], greedy)


def test_a_window_changes_only_what_lies_beyond_it():
  cfg = dataclasses.replace(TINY, position="rope")
  model, params = _init(cfg)
  x = _tokens(7, (2, 12))
  plain = model.apply({"params": params}, x)
  wide = models.build_model(dataclasses.replace(cfg, attention_window=12)).apply(
      {"params": params}, x)
  narrow = models.build_model(dataclasses.replace(cfg, attention_window=4)).apply(
      {"params": params}, x)
  np.testing.assert_allclose(wide, plain, **TOL)  # a window as long as the row: no change
  np.testing.assert_allclose(narrow[:, :4], plain[:, :4], **TOL)  # the first 4 see everything
  assert not np.allclose(narrow[:, 4:], plain[:, 4:], atol=1e-4)


def test_hf_export_refuses_a_sliding_window():
  cfg = dataclasses.replace(TINY, attention_window=4)
  _, params = _init(cfg)
  with pytest.raises(hf.ConvertError, match="attention_window=4"):
    hf.export_params(cfg, params)


def test_a_variant_the_kernel_cannot_express_falls_back_and_says_so_once(caplog):
  q = jax.random.normal(jax.random.key(0), (1, 128, 2, 8))
  spec = attention.MaskSpec.self_attention(jnp.broadcast_to(jnp.arange(128), (1, 128)),
                                           causal=True)
  bias = jnp.zeros((1, 2, 128, 128))
  attention._say_once.cache_clear()
  with caplog.at_level(logging.WARNING, logger="research.attention"):
    outs = [attention.attend(q, q, q, spec, choice="splash", platform="cpu", scale=None,
                             operand_dtype=jnp.float32, bias=bias) for _ in range(2)]
  want = attention.reference_attention(q, q, q, spec.dense(), scale=None, bias=bias)
  np.testing.assert_allclose(outs[0], want, **TOL)
  messages = [r.getMessage() for r in caplog.records if "splash" in r.getMessage()]
  assert len(messages) == 1 and "relative" in messages[0] and "XLA" in messages[0]
