"""Model behaviour: causality, KV-cache parity, published parameter counts, block options."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import attention, decode, layers, matmul
from research.config import ModelConfig
from research.models import Decoder

SMALL = ModelConfig(vocab_size=50, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64,
                    max_len=16, use_bias=True)


def _init(cfg, seq_len=8):
  model = Decoder(cfg)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((2, seq_len), jnp.int32))["params"])
  return model, params


def count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(tree))))


def test_gpt2_small_parameter_count():
  cfg = ModelConfig(vocab_size=50257, num_layers=12, num_heads=12, embed_dim=768, mlp_dim=3072,
                    max_len=1024, use_bias=True, tie_embeddings=True)
  shapes = jax.eval_shape(lambda: Decoder(cfg).init(jax.random.key(0),
                                                    jnp.zeros((1, 8), jnp.int32)))
  assert count(shapes["params"]) == 124_439_808


VARIANTS = {
    "learned_layernorm_gelu": {},
    "rope_rmsnorm_swiglu_gqa": dict(position="rope", norm="rmsnorm", mlp_activation="swiglu",
                                    num_kv_heads=2, use_bias=False),
    "relative_mqa_geglu_untied": dict(position="relative", mlp_activation="geglu", num_kv_heads=1,
                                      tie_embeddings=False),
    "postnorm_relu": dict(norm_position="post", mlp_activation="relu"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_changing_a_token_never_changes_earlier_logits(variant):
  model, params = _init(dataclasses.replace(SMALL, **VARIANTS[variant]))
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, SMALL.vocab_size)
  base = model.apply({"params": params}, tokens)
  for t in range(8):
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % SMALL.vocab_size)
    out = model.apply({"params": params}, changed)
    np.testing.assert_allclose(out[:, :t], base[:, :t], atol=1e-6, rtol=0)
    assert not np.allclose(out[:, t:], base[:, t:])  # and the change is seen from t on


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kv_cache_decode_matches_full_forward(variant):
  cfg = dataclasses.replace(SMALL, **VARIANTS[variant])
  model, params = _init(cfg)
  tokens = jax.random.randint(jax.random.key(2), (2, cfg.max_len), 0, cfg.vocab_size)
  full = model.apply({"params": params}, tokens)
  cache = decode.init_cache(model, 2)
  # Compiled once per input shape: op by op, each step dispatched every operation on its own.
  apply = jax.jit(lambda variables, x: model.apply(variables, x, decode=True, mutable=["cache"]))
  # A 5-token prefill, then one token at a time.
  logits, vars_ = apply({"params": params, "cache": cache}, tokens[:, :5])
  steps = [logits]
  for t in range(5, cfg.max_len):
    logits, vars_ = apply({"params": params, "cache": vars_["cache"]}, tokens[:, t:t + 1])
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=2e-5, rtol=1e-5)


def test_backward_pass_is_finite_for_every_variant():
  for variant, options in VARIANTS.items():
    model, params = _init(dataclasses.replace(SMALL, dropout_rate=0.1, **options))
    tokens = jnp.ones((2, 8), jnp.int32)

    def loss(p):
      return model.apply({"params": p}, tokens, deterministic=False,
                         rngs={"dropout": jax.random.key(0)}).mean()

    grads = jax.grad(loss)(params)
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)), variant
    assert sum(norms) > 0, variant


def test_bf16_matmul_policy_is_close_to_float32():
  model32, params = _init(SMALL)
  model16 = Decoder(dataclasses.replace(SMALL, matmul_dtype="bfloat16"))
  tokens = jax.random.randint(jax.random.key(3), (2, 8), 0, SMALL.vocab_size)
  out32 = model32.apply({"params": params}, tokens)
  out16 = model16.apply({"params": params}, tokens)
  assert out16.dtype == jnp.float32
  np.testing.assert_allclose(out16, out32, atol=5e-2)
  grads = jax.grad(lambda p: model16.apply({"params": p}, tokens).mean())(params)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("backend, native, want", [
    ("cpu", False, "float32"), ("cpu", True, "bfloat16"), ("gpu", False, "bfloat16"),
    ("tpu", False, "bfloat16")])
def test_auto_matmul_dtype_follows_the_hardware(monkeypatch, backend, native, want):
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  monkeypatch.setattr(matmul, "_cpu_has_native_bf16", lambda: native)
  assert layers.resolve_matmul_dtype("auto") == want
  assert layers.dtype("auto") == jnp.dtype(want)
  assert layers.resolve_matmul_dtype("float32") == "float32"  # explicit names stay as they are
  assert layers.resolve_matmul_dtype("bfloat16") == "bfloat16"


def test_auto_matmul_dtype_runs_what_it_resolves_to():
  _, params = _init(SMALL)
  tokens = jax.random.randint(jax.random.key(3), (2, 8), 0, SMALL.vocab_size)
  resolved = layers.resolve_matmul_dtype("auto")
  want = Decoder(dataclasses.replace(SMALL, matmul_dtype=resolved)).apply({"params": params}, tokens)
  auto = Decoder(dataclasses.replace(SMALL, matmul_dtype="auto")).apply({"params": params}, tokens)
  np.testing.assert_array_equal(auto, want)


@pytest.mark.parametrize("operand_dtype", [jnp.float32, jnp.bfloat16])
def test_linear_gradient_rules_match_autodiff(operand_dtype):
  # layers.dense and layers.dense_transposed (the tied output layer) have their own gradient
  # rules that lay out every product row-major; they must give autodiff's gradients of the
  # plain products (bfloat16 operands: to bfloat16's precision).
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (2, 5, 8))
  w = jax.random.normal(kw, (8, 6))
  cot = jax.random.normal(kg, (2, 5, 6))
  plain = lambda x, w: jnp.einsum("btc,cf->btf", x.astype(operand_dtype), w.astype(operand_dtype),
                                  preferred_element_type=jnp.float32)
  tol = dict(rtol=1e-5, atol=1e-5) if operand_dtype == jnp.float32 else dict(atol=0.1)
  for ours, weight in ((lambda x, w: layers.dense(x, w, operand_dtype), w),
                       (lambda x, w: layers.dense_transposed(x, w, operand_dtype), w.T)):
    reference = plain if weight is w else lambda x, wt: plain(x, wt.T)
    out, vjp = jax.vjp(jax.jit(ours), x, weight)
    ref_out, ref_vjp = jax.vjp(reference, x, weight)
    np.testing.assert_allclose(out, ref_out, **tol)
    for got, want in zip(vjp(cot), ref_vjp(cot)):
      assert got.shape == want.shape and got.dtype == jnp.float32
      np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("operand_dtype", [jnp.float32, jnp.bfloat16])
def test_batched_matmul_gradient_and_attention_match_the_library(operand_dtype):
  # layers.batched_matmul's gradient rule against autodiff, and the written-out attention
  # (grouped queries, a causal mask) against jax.nn.dot_product_attention, values and gradients.
  ka, kb, kg = jax.random.split(jax.random.key(1), 3)
  a, b = jax.random.normal(ka, (2, 3, 5, 4)), jax.random.normal(kb, (2, 3, 4, 6))
  cot = jax.random.normal(kg, (2, 3, 5, 6))
  # bfloat16: the library's gradients are bfloat16 themselves (8 bits of mantissa).
  tol = dict(rtol=1e-5, atol=1e-5) if operand_dtype == jnp.float32 else dict(rtol=2e-2, atol=0.1)
  plain = lambda a, b: jnp.matmul(a.astype(operand_dtype), b.astype(operand_dtype),
                                  preferred_element_type=jnp.float32)
  ours = jax.jit(lambda a, b: layers.batched_matmul(a, b, operand_dtype))
  for got, want in zip(jax.vjp(ours, a, b)[1](cot), jax.vjp(plain, a, b)[1](cot)):
    np.testing.assert_allclose(got, want, **tol)
  config = dataclasses.replace(SMALL, matmul_dtype=jnp.dtype(operand_dtype).name)
  kq, kk, kv = jax.random.split(jax.random.key(2), 3)
  q = jax.random.normal(kq, (2, 7, 4, 8))
  k, v = jax.random.normal(kk, (2, 7, 2, 8)), jax.random.normal(kv, (2, 7, 2, 8))
  mask = jnp.tril(jnp.ones((7, 7), bool))[None, None]
  ours = lambda q, k, v: attention.reference_attention(
      q, k, v, mask, scale=None, operand_dtype=layers.dtype(config.matmul_dtype))
  library = lambda q, k, v: jax.nn.dot_product_attention(
      q.astype(operand_dtype), k.astype(operand_dtype), v.astype(operand_dtype),
      mask=mask).astype(jnp.float32)
  np.testing.assert_allclose(jax.jit(ours)(q, k, v), library(q, k, v), **tol)
  loss = lambda f: lambda *x: jnp.sum(f(*x) * jnp.arange(8.0))
  for got, want in zip(jax.jit(jax.grad(loss(ours), (0, 1, 2)))(q, k, v),
                       jax.grad(loss(library), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, **tol)


def test_greedy_generation_matches_argmax_of_full_forward():
  model, params = _init(SMALL)
  prompt = np.array([[1, 2, 3]], np.int32)
  out = decode.generate(model, params, prompt, 20, jax.random.key(0),
                        decode.SamplingConfig(temperature=0.0))
  assert out.shape == (1, 23)
  # Within the first window the cached result must equal recomputing from scratch each step
  # (on a fixed-size buffer: causal attention never looks at the zeros after position t).
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x))
  seq = np.zeros((1, SMALL.max_len), np.int32)
  seq[:, :3] = prompt
  for t in range(3, SMALL.max_len):
    seq[:, t] = np.asarray(jnp.argmax(forward(params, seq)[:, t - 1], -1))
  np.testing.assert_array_equal(out[:, :SMALL.max_len], seq)


def test_top_k_and_top_p_only_sample_allowed_tokens():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  keys = jax.random.split(jax.random.key(0), 200)
  top_k = {int(decode.sample_logits(logits, k, decode.SamplingConfig(1.0, top_k=2))[0])
           for k in keys}
  assert top_k == {0, 1}
  top_p = {int(decode.sample_logits(logits, k, decode.SamplingConfig(1.0, top_p=0.7))[0])
           for k in keys}
  assert top_p == {0, 1}  # 0.5 < 0.7 <= 0.8


def test_beam_search_with_one_beam_is_greedy_decoding():
  model, params = _init(SMALL)
  prompt = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
  greedy = decode.generate(model, params, prompt, 10, jax.random.key(0),
                           decode.SamplingConfig(temperature=0.0))
  tokens, _, _ = decode.beam_search(model, params, prompt, beam_size=1, max_new_tokens=10,
                                    eos_id=SMALL.vocab_size + 1)  # an id never produced
  np.testing.assert_array_equal(tokens[:, 0], greedy[:, 3:])


def test_beam_search_sorts_beams_and_ends_them_at_eos():
  model, params = _init(SMALL)
  prompt = np.array([[1, 2, 3], [7, 8, 9]], np.int32)
  first = model.apply({"params": params}, jnp.asarray(prompt))[:, -1]
  eos = int(jnp.argmax(first[0]))  # row 0's most likely next token: its best beam ends at once
  tokens, scores, lengths = decode.beam_search(model, params, prompt, beam_size=4,
                                               max_new_tokens=8, eos_id=eos,
                                               length_penalty=0.0)
  assert (np.diff(scores, axis=1) <= 0).all()  # best first
  for row in range(2):
    for beam in range(4):
      seq = tokens[row, beam]
      hits = np.flatnonzero(seq == eos)
      if hits.size:  # everything after the first EOS is EOS, and the length stops there
        assert (seq[hits[0]:] == eos).all() and lengths[row, beam] == hits[0] + 1
      else:
        assert lengths[row, beam] == 8
  assert tokens[0, 0, 0] == eos and lengths[0, 0] == 1
  # its score is just log p(EOS | prompt): nothing was added after the beam ended
  np.testing.assert_allclose(scores[0, 0], jax.nn.log_softmax(first[0])[eos], rtol=1e-5)


@pytest.mark.parametrize("flags, native", [
    ("fpu avx2 avx512f avx512_bf16 avx512_vnni", True), ("fpu avx2 amx_bf16 amx_tile", True),
    ("fpu avx2 avx512f avx512bw", False), ("fpu avx2", False)])
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path, flags, native):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\n")
  real_open = open
  monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(
      cpuinfo if path == "/proc/cpuinfo" else path, *a, **k))
  assert matmul._cpu_has_native_bf16.__wrapped__() is native  # pylint: disable=protected-access
