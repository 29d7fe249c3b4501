"""research.splash: the TPU splash-attention kernel against a plain softmax attention, run in
Pallas interpret mode on this CPU; its shard_map wrapper compiled for a TPU slice (libtpu).

Tolerances (float32): the largest absolute error is at most 1e-5 (forward) and 2e-5
(gradients) of the reference's largest magnitude; the kernel came within 8e-7 and 1.4e-6
(December 2026), so a wrong mask, scale or head grouping (errors of order 1) cannot pass.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from research import aot, splash
from research.config import DEFAULT_RULES

FORWARD_TOL, GRAD_TOL = 1e-5, 2e-5


def reference(q, k, v, *, causal, q_segment_ids=None, kv_segment_ids=None, window=0, scale,
              softcap=0.0):
  """softmax(softcap(scale * q.k) over the allowed keys) v, with query head n reading key head
  n // (N / K), written out with jnp."""
  b, t, n, h = q.shape
  s, kv_heads = k.shape[1], k.shape[2]
  k, v = jnp.repeat(k, n // kv_heads, axis=2), jnp.repeat(v, n // kv_heads, axis=2)
  logits = jnp.einsum("btnh,bsnh->bnts", q, k, precision="highest") * scale
  if softcap:
    logits = softcap * jnp.tanh(logits / softcap)
  i, j = np.arange(t)[:, None], np.arange(s)[None, :]
  allowed = np.ones((t, s), bool)
  if causal:
    allowed &= j <= i
  if window:
    allowed &= j > i - window
  allowed = jnp.broadcast_to(allowed, (b, 1, t, s))
  if q_segment_ids is not None:
    allowed = allowed & (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :])[:, None]
  # A row with no key (padding) comes out uniform; it is compared nowhere.
  probs = jax.nn.softmax(jnp.where(allowed, logits, jnp.finfo(jnp.float32).min), axis=-1)
  return jnp.einsum("bnts,bsnh->btnh", probs, v, precision="highest")


def segments(*rows, length):
  """Segment ids (B, length): each row's documents numbered 1, 2, ... by their lengths, then
  padding (0) to `length`."""
  ids = np.zeros((len(rows), length), np.int32)
  for r, docs in enumerate(rows):
    ids[r, :sum(docs)] = np.repeat(np.arange(1, len(docs) + 1), docs)
  return jnp.asarray(ids)


def qkv(b, t, s, n, kv_heads, h, dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  return (jax.random.normal(keys[0], (b, t, n, h), dtype),
          jax.random.normal(keys[1], (b, s, kv_heads, h), dtype),
          jax.random.normal(keys[2], (b, s, kv_heads, h), dtype),
          jax.random.normal(keys[3], (b, t, n, h), jnp.float32))  # a cotangent


def assert_close(got, want, tol):
  got, want = np.asarray(got), np.asarray(want)
  assert np.isfinite(got).all()
  err, size = np.abs(got - want).max(), np.abs(want).max()
  assert err <= tol * size, f"largest error {err:.3g} against {tol} x {size:.3g}"


def output_and_grads(attend, q, k, v, cotangent):
  """attend(q, k, v) and the gradients of sum(attend(q, k, v) * cotangent), in one program."""
  @jax.jit
  def run(q, k, v):
    out, pullback = jax.vjp(attend, q, k, v)
    return out, pullback(cotangent.astype(out.dtype))
  return run(q, k, v)


# Lengths of 384 are three 128-blocks (the kernel takes the largest of 512, 256, 128 that
# divides a length): causal and window masks then skip, fully use and partly mask blocks.
VARIANTS = {
    "causal": dict(t=384, s=384, n=4, kv=4, h=64, causal=True),
    "bidirectional_padding": dict(t=384, s=384, n=4, kv=4, h=32, causal=False, scale=1.0,
                                  segments=[[384], [200]]),
    "packed_causal": dict(t=384, s=384, n=4, kv=4, h=32, causal=True,
                          segments=[[100, 150, 90], [128, 256]]),
    "gqa": dict(t=384, s=384, n=4, kv=2, h=32, causal=True, segments=[[384], [250]]),
    "mqa": dict(t=256, s=256, n=4, kv=1, h=32, causal=False, segments=[[256], [130]]),
    "window": dict(t=384, s=384, n=4, kv=2, h=32, causal=True, window=100,
                   segments=[[384], [300]]),
    # Gemma 2's attention soft-cap on a local layer (logits to ~6 against a cap of 5).
    "window_softcap": dict(t=256, s=256, n=4, kv=1, h=64, causal=True, window=64, softcap=5.0,
                           scale=1.5 / 8),
    # Cross-attention: 100 real decoder queries (28 padding) over 256 encoder keys, none of
    # them padding: the padding queries see no key at all and must still be finite.
    "cross": dict(t=128, s=256, n=4, kv=2, h=32, causal=False,
                  segments=[[100], [128]], kv_segments=[[256], [190]]),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_matches_reference_attention_in_interpret_mode(name):
  c = VARIANTS[name]
  q, k, v, cotangent = qkv(2, c["t"], c["s"], c["n"], c["kv"], c["h"])
  scale = c.get("scale", c["h"] ** -0.5)
  seg = {}
  real = np.ones((2, c["t"]), bool)
  if "segments" in c:
    seg = dict(q_segment_ids=segments(*c["segments"], length=c["t"]),
               kv_segment_ids=segments(*c.get("kv_segments", c["segments"]), length=c["s"]))
    real = np.asarray(seg["q_segment_ids"]) > 0
  cotangent = cotangent * real[:, :, None, None]  # padding rows' outputs are ignored
  masks = dict(causal=c["causal"], window=c.get("window", 0), scale=scale,
               softcap=c.get("softcap", 0.0), **seg)
  got = lambda q, k, v: splash.splash_attention(q, k, v, interpret=True, **masks)
  want = lambda q, k, v: reference(q, k, v, **masks)

  out, grads = output_and_grads(got, q, k, v, cotangent)
  ref_out, ref_grads = output_and_grads(want, q, k, v, cotangent)
  assert out.shape == q.shape and out.dtype == q.dtype
  assert np.isfinite(np.asarray(out)).all()  # padding rows too
  assert_close(np.asarray(out)[real], np.asarray(ref_out)[real], FORWARD_TOL)
  for g, r in zip(grads, ref_grads):
    assert g.shape == r.shape
    assert_close(g, r, GRAD_TOL)


def test_bfloat16_inputs_give_bfloat16_outputs():
  q, k, v, _ = qkv(1, 256, 256, 2, 2, 64, dtype=jnp.bfloat16)
  out = splash.splash_attention(q, k, v, causal=True, scale=0.125, interpret=True)
  assert out.dtype == jnp.bfloat16
  want = reference(*(x.astype(jnp.float32) for x in (q, k, v)), causal=True, scale=0.125)
  assert_close(out.astype(jnp.float32), want, 2e-2)


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_a_mesh_splits_batch_and_heads_and_matches_the_reference(kv_heads):
  # On 4 of the 8 CPU devices: batch over (data, fsdp), heads over tensor (2 ways), as the
  # default rules put them. With one key/value head (MQA) its gradient sums over the head shards.
  mesh = jax.make_mesh((1, 2, 2), ("data", "fsdp", "tensor"), devices=jax.devices()[:4],
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  q, k, v, cotangent = qkv(4, 256, 256, 4, kv_heads, 32, seed=1)
  ids = segments([256], [100, 156], [200], [60, 60, 60], length=256)
  cotangent = cotangent * (np.asarray(ids) > 0)[:, :, None, None]
  masks = dict(causal=True, q_segment_ids=ids, kv_segment_ids=ids, scale=32**-0.5)
  attend = lambda q, k, v: splash.splash_attention(q, k, v, interpret=True, **masks)
  with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
    out, grads = output_and_grads(attend, q, k, v, cotangent)
  ref_out, ref_grads = output_and_grads(lambda q, k, v: reference(q, k, v, **masks), q, k, v,
                                        cotangent)
  real = np.asarray(ids) > 0
  assert_close(np.asarray(out)[real], np.asarray(ref_out)[real], FORWARD_TOL)
  for g, r in zip(grads, ref_grads):
    assert_close(g, r, GRAD_TOL)


@pytest.mark.parametrize("kv_heads, window", [(2, 0), (1, 256)])
def test_compiles_for_a_tpu_slice_inside_shard_map(kv_heads, window):
  # Forward and gradients for v5e:2x2 (libtpu describes the chips; none is needed). The
  # kernels are Mosaic custom calls, which XLA refuses to partition: without the shard_map
  # this fails with "Mosaic kernels cannot be automatically partitioned".
  b, t, n, h = 4, 512, 4, 128
  mesh = jax.make_mesh((1, 2, 2), ("data", "fsdp", "tensor"),
                       devices=aot.tpu_devices(aot.parse_topology("v5e:2x2")),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  heads = "tensor" if kv_heads % 2 == 0 else None
  spec = lambda *names: NamedSharding(mesh, P(*names))
  args = (jax.ShapeDtypeStruct((b, t, n, h), jnp.bfloat16,
                               sharding=spec(("data", "fsdp"), None, "tensor")),
          jax.ShapeDtypeStruct((b, t, kv_heads, h), jnp.bfloat16,
                               sharding=spec(("data", "fsdp"), None, heads)),
          jax.ShapeDtypeStruct((b, t, kv_heads, h), jnp.bfloat16,
                               sharding=spec(("data", "fsdp"), None, heads)),
          jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=spec(("data", "fsdp"))))

  def loss(q, k, v, ids):
    out = splash.splash_attention(q, k, v, causal=True, window=window, q_segment_ids=ids,
                                  kv_segment_ids=ids, scale=h**-0.5)
    return jnp.sum(out.astype(jnp.float32) ** 2)

  with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(*args).compile()
  text = compiled.as_text()
  calls = [line for line in text.splitlines() if 'custom_call_target="tpu_custom_call"' in line]
  assert len(calls) == 3, calls  # the forward, dq and dkv kernels
  # Each chip runs them on its own batch half and head half (one key head per chip for GQA,
  # the whole one for MQA): nothing is gathered.
  local_q = f"bf16[{b // 2},{n // 2},{t},{h}]"
  local_kv = f"bf16[{b // 2},{max(kv_heads // 2, 1)},{t},{h}]"
  assert all(local_q in line for line in calls[:2]), calls
  assert local_kv in calls[2], calls[2]
  assert not re.search(r"all-gather|all-to-all", text)


@pytest.mark.parametrize("change, reason", [
    (dict(has_bias=True), "relative-position bias"),
    (dict(has_prefix=True), "prefix-LM"),
    (dict(dropout=True), "dropout"),
    (dict(decode=True), "decoding"),
    (dict(q_len=100, kv_len=100), "sequence length 100 not a multiple of 128"),
    (dict(kv_len=200, causal=False), "sequence length 200 not a multiple of 128"),
    (dict(num_heads=6, num_kv_heads=4), "not a multiple of 4 key/value heads"),
    (dict(window=64, causal=False), "sliding window without causal"),
    (dict(q_len=128, kv_len=256), "causal mask over 128 queries and 256 keys"),
])
def test_unsupported_variants_say_why(change, reason):
  args = dict(q_len=256, kv_len=256, num_heads=4, num_kv_heads=2, head_dim=64, causal=True,
              window=0, has_bias=False, has_prefix=False, dropout=False, decode=False)
  assert splash.unsupported_reason(**args) is None
  assert reason in splash.unsupported_reason(**{**args, **change})


@pytest.mark.parametrize("change", [
    dict(), dict(causal=False), dict(num_kv_heads=1), dict(num_kv_heads=4), dict(window=64),
    dict(q_len=128, kv_len=384, causal=False), dict(q_len=640, kv_len=640, head_dim=48),
])
def test_supported_variants_have_no_reason(change):
  args = dict(q_len=256, kv_len=256, num_heads=4, num_kv_heads=2, head_dim=64, causal=True,
              window=0, has_bias=False, has_prefix=False, dropout=False, decode=False)
  assert splash.unsupported_reason(**{**args, **change}) is None


def test_an_unsupported_call_is_refused_before_the_kernel():
  q, k, v, _ = qkv(1, 100, 100, 2, 2, 32)
  with pytest.raises(ValueError, match="sequence length 100 not a multiple of 128"):
    splash.splash_attention(q, k, v, causal=True, interpret=True)
  q, k, v, _ = qkv(1, 128, 128, 2, 2, 32)
  with pytest.raises(ValueError, match="both q_segment_ids and kv_segment_ids"):
    splash.splash_attention(q, k, v, causal=True, q_segment_ids=jnp.ones((1, 128), jnp.int32))
