"""The encoder and encoder-decoder families: no leakage, published sizes, every block option."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import decode
from research.config import ModelConfig
from research.models import (Decoder, EncoderClassifier, EncoderDecoder, EncoderLM,
                             parameter_count)

SMALL = ModelConfig(vocab_size=40, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64,
                    max_len=16, use_bias=True)
B, T = 2, 10


def init(model, *args, **kwargs):
  return nn.unbox(model.init(jax.random.key(0), *args, **kwargs)["params"])


def tokens(seed=1, shape=(B, T)):
  return jax.random.randint(jax.random.key(seed), shape, 3, SMALL.vocab_size)


def perturb(x, t):
  return x.at[:, t].set((x[:, t] + 1 - 3) % (SMALL.vocab_size - 3) + 3)


# --- No leakage ----------------------------------------------------------------------------


def test_encoder_sees_every_real_position_and_no_padding():
  model = EncoderLM(SMALL)
  x = tokens()
  valid = jnp.arange(T)[None, :] < jnp.array([[7], [T]])  # row 0 has 3 padding positions
  params = init(model, x, input_mask=valid)
  base = model.apply({"params": params}, x, input_mask=valid)
  for t in range(T):
    out = model.apply({"params": params}, perturb(x, t), input_mask=valid)
    changed = np.abs(np.asarray(out - base)).max(axis=-1) > 1e-6  # (B, T) positions affected
    if t >= 7:  # a padding token of row 0 changes nothing in row 0's real positions
      assert not changed[0, :7].any()
    else:
      assert changed[0, :7].all()  # bidirectional: every real position sees every real token
    assert changed[1].all()


def test_prefix_lm_decoder_is_bidirectional_exactly_over_the_prefix():
  model = Decoder(SMALL)
  x = tokens()
  prefix = jnp.array([4, 6])
  params = init(model, x)
  base = model.apply({"params": params}, x, prefix_lengths=prefix)
  for t in range(T):
    out = model.apply({"params": params}, perturb(x, t), prefix_lengths=prefix)
    changed = np.abs(np.asarray(out - base)).max(axis=-1) > 1e-6
    for row, p in enumerate([4, 6]):
      # position q sees token t iff t <= q (causal) or t is inside the prefix
      expected = np.array([t <= q or t < p for q in range(T)])
      np.testing.assert_array_equal(changed[row], expected)


def test_encoder_decoder_causal_decoder_and_full_cross_attention():
  model = EncoderDecoder(SMALL)
  src, tgt = tokens(1), tokens(2, (B, 8))
  src_valid = jnp.arange(T)[None, :] < jnp.array([[6], [T]])
  params = init(model, src, tgt, encoder_mask=src_valid)
  base = model.apply({"params": params}, src, tgt, encoder_mask=src_valid)
  for t in range(T):  # every real encoder position reaches every decoder position
    out = model.apply({"params": params}, perturb(src, t), tgt, encoder_mask=src_valid)
    changed = np.abs(np.asarray(out - base)).max(axis=-1) > 1e-6
    assert changed[0].all() == (t < 6) and not (t >= 6 and changed[0].any())
    assert changed[1].all()
  for t in range(8):  # the decoder is causal
    out = model.apply({"params": params}, src, perturb(tgt, t), encoder_mask=src_valid)
    changed = np.abs(np.asarray(out - base)).max(axis=-1) > 1e-6
    np.testing.assert_array_equal(changed, np.broadcast_to(np.arange(8) >= t, (B, 8)))


# Slow: the default suite checks the same through decode.prefill + decode.step, the path that
# decoding takes, in tests/test_attention.py::test_encoder_decoder_caches_cross_attention_once_
# and_matches_the_full_pass (relative positions, cross-attention projected once, a padded input).
@pytest.mark.slow
def test_encoder_decoder_cached_decoding_matches_the_full_pass():
  model = EncoderDecoder(dataclasses.replace(SMALL, position="relative"))
  src, tgt = tokens(1), tokens(2, (B, 8))
  params = init(model, src, tgt)
  full = model.apply({"params": params}, src, tgt)
  encoded = model.apply({"params": params}, src, method=EncoderDecoder.encode)
  cache = decode.init_cache(model, B, T)
  steps = []
  for t in range(8):  # the encoder's keys and values are projected at the first step only
    logits, mutated = model.apply({"params": params, "cache": cache},
                                  encoded if t == 0 else None, tgt[:, t:t + 1],
                                  decode=True, mutable=["cache"], method=EncoderDecoder.decode)
    cache = mutated["cache"]
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=2e-5, rtol=1e-5)


# --- Published parameter counts ------------------------------------------------------------

BERT_BASE = ModelConfig(family="encoder", vocab_size=30522, num_layers=12, num_heads=12,
                        embed_dim=768, mlp_dim=3072, max_len=512, num_token_types=2,
                        norm_position="post", norm_eps=1e-12, use_bias=True)
T5_SMALL = ModelConfig(family="encoder_decoder", vocab_size=32128, num_layers=6, num_heads=8,
                       head_dim=64, embed_dim=512, mlp_dim=2048, max_len=512, position="relative",
                       norm="rmsnorm", mlp_activation="relu", use_bias=False, tie_embeddings=True)


def shapes(model, *args):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), *args))["params"]


def test_bert_base_parameter_counts():
  ids = jnp.zeros((1, 8), jnp.int32)
  assert parameter_count(shapes(EncoderClassifier(BERT_BASE, num_classes=0), ids)) == 109_482_240
  assert parameter_count(shapes(EncoderLM(BERT_BASE), ids)) == 109_514_298


def test_t5_small_parameter_count():
  ids = jnp.zeros((1, 8), jnp.int32)
  assert parameter_count(shapes(EncoderDecoder(T5_SMALL), ids, ids)) == 60_506_624


# --- Every block option in every family ----------------------------------------------------

OPTIONS = {
    "mha_learned_layernorm_gelu_pre": {},
    "gqa_rope_rmsnorm_swiglu": dict(num_kv_heads=2, position="rope", norm="rmsnorm",
                                    mlp_activation="swiglu"),
    "mqa_relative_geglu_nobias": dict(num_kv_heads=1, position="relative",
                                      mlp_activation="geglu", use_bias=False),
    "post_norm_relu_dropout_untied": dict(norm_position="post", mlp_activation="relu",
                                          dropout_rate=0.1, tie_embeddings=False),
    "gelu_tanh_no_positions": dict(mlp_activation="gelu_tanh", position="none"),
}
FAMILIES = {
    "decoder": lambda cfg: (Decoder(cfg), (tokens(),)),
    "encoder": lambda cfg: (EncoderLM(cfg), (tokens(),)),
    "encoder_decoder": lambda cfg: (EncoderDecoder(cfg), (tokens(1), tokens(2, (B, 6)))),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_forward_and_backward_for_every_option(family, option):
  cfg = dataclasses.replace(SMALL, num_layers=1, **OPTIONS[option])
  model, args = FAMILIES[family](cfg)
  params = init(model, *args)

  def loss(p):
    logits = model.apply({"params": p}, *args, deterministic=False,
                         rngs={"dropout": jax.random.key(1)})
    assert logits.shape == args[-1].shape + (cfg.vocab_size,)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 5])

  value, grads = jax.value_and_grad(loss)(params)
  assert np.isfinite(float(value))
  norms = jax.tree.leaves(jax.tree.map(lambda g: float(jnp.abs(g).max()), grads))
  assert all(np.isfinite(norms)) and max(norms) > 0


# Slow: the default suite checks the same through decode.prefill + decode.step in
# tests/test_attention.py::test_prefix_lm_prefill_is_bidirectional_then_causal.
@pytest.mark.slow
def test_prefix_lm_cached_decoding_matches_the_full_pass():
  model = Decoder(dataclasses.replace(SMALL, position="rope"))
  x = tokens(3, (B, 12))
  params = init(model, x)
  prefix = jnp.array([5, 5])
  full = model.apply({"params": params}, x, prefix_lengths=prefix)
  cache = decode.init_cache(model, B)
  logits, mutated = model.apply({"params": params, "cache": cache}, x[:, :5], decode=True,
                                prefix_lengths=prefix, mutable=["cache"])  # bidirectional prefill
  steps = [logits]
  for t in range(5, 12):
    logits, mutated = model.apply({"params": params, "cache": mutated["cache"]}, x[:, t:t + 1],
                                  decode=True, mutable=["cache"])
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=2e-5, rtol=1e-5)


# Slow: the default suite checks one beam = greedy for the encoder-decoder in
# tests/test_attention.py::test_one_beam_is_greedy_through_the_one_step_for_every_decoding_family
# and sorted beams in tests/test_models.py::test_beam_search_sorts_beams_and_ends_them_at_eos
# (the beam search is one function for every family).
@pytest.mark.slow
def test_encoder_decoder_beam_search_with_one_beam_is_greedy():
  model = EncoderDecoder(SMALL)
  src = tokens(1)
  params = init(model, src, tokens(2, (B, 4)))
  greedy = decode.generate_seq2seq(model, params, np.asarray(src), np.ones((B, T), bool), 6,
                                   jax.random.key(0), decode.SamplingConfig(temperature=0.0))
  beams, scores, _ = decode.beam_search(model, params, np.asarray(src), beam_size=3,
                                        max_new_tokens=6, eos_id=SMALL.vocab_size + 1)
  one, _, _ = decode.beam_search(model, params, np.asarray(src), beam_size=1, max_new_tokens=6,
                                 eos_id=SMALL.vocab_size + 1)
  np.testing.assert_array_equal(one[:, 0], greedy)
  assert beams.shape == (B, 3, 6) and (np.diff(scores, axis=1) <= 0).all()
