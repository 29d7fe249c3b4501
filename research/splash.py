"""Pallas splash attention (TPU) behind one function, and which variants it can run.

`splash_attention` computes softmax(scale * q.k + mask) v with the TPU kernel of
`jax.experimental.pallas.ops.tpu.splash_attention` for the masks it expresses: causal,
bidirectional, segment ids (padding and packed documents), a causal sliding window, and
N query heads over K key/value heads (MHA, GQA, MQA). `unsupported_reason` names what it cannot
run (T5's relative-position bias, per-row prefix-LM masks, attention dropout, single-token
decoding, lengths that are not a multiple of the kernel's 128-wide blocks), for the caller to
log once and fall back to XLA.

Shapes use B batch, T query length, S key length, N query heads, K key/value heads, H head dim.

Facts of the installed kernel this module relies on:
  - it works on one example, head-major: q (N, T, H), k and v (K, S, H), segment ids (T,), (S,);
    with K < N, query head n reads key/value head n // (N / K), as research/layers.py groups
    them; its custom VJP gives the gradients;
  - it does not scale the logits: `scale` is applied to q here;
  - block sizes must divide the lengths and the key blocks must be multiples of 128 lanes;
  - a query row whose keys are all masked by segment ids gets the mean of its values (finite);
    a row the static mask leaves empty would divide by zero, which `unsupported_reason` rules
    out by refusing causal masks over unequal query and key lengths.
Mosaic kernels are not partitioned by XLA: under a mesh the kernel runs inside `jax.shard_map`,
batch split as "activation_batch" is and heads as "activation_heads" is.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from research.sharding import fit_spec

Array = jax.Array

# Logical activation names of the rules table (config.DEFAULT_RULES), as research/layers.py
# spells them; repeated here because layers.py reaches this module through the dispatcher.
BATCH, HEADS = "activation_batch", "activation_heads"

LANES = 128  # the kernel's blocks are multiples of the TPU's 128 lanes
_BLOCKS = (512, 256, 128)  # tried largest first: the largest that divides the length


def unsupported_reason(*, q_len: int, kv_len: int, num_heads: int, num_kv_heads: int,
                       head_dim: int, causal: bool, window: int, has_bias: bool,
                       has_prefix: bool, dropout: bool, decode: bool) -> str | None:
  """None when `splash_attention` can run this variant; otherwise why not, in a few words."""
  del head_dim  # any head dimension: the kernel's blocks span it whole
  if has_bias:
    return "T5 relative-position bias"
  if has_prefix:
    return "per-row prefix-LM masks"
  if dropout:
    return "attention dropout"
  if decode:
    return "single-token decoding step"
  for length in (q_len, kv_len):
    if length % LANES:
      return f"sequence length {length} not a multiple of {LANES}"
  if num_heads % num_kv_heads:
    return f"{num_heads} query heads not a multiple of {num_kv_heads} key/value heads"
  if window and not causal:
    return "sliding window without causal masking"
  if (causal or window) and q_len != kv_len:
    return f"causal mask over {q_len} queries and {kv_len} keys"
  return None


def splash_attention(q: Array, k: Array, v: Array, *, causal: bool,
                     q_segment_ids: Array | None = None, kv_segment_ids: Array | None = None,
                     window: int = 0, scale: float = 1.0, softcap: float = 0.0,
                     interpret: bool = False) -> Array:
  """Attention of q (B, T, N, H) over k, v (B, S, K, H); returns (B, T, N, H) in q's dtype.

  Args:
    causal: query i sees keys j <= i (array indices).
    q_segment_ids, kv_segment_ids: (B, T) and (B, S) ids, both or neither; a query sees only
      keys of its own id (padding is id 0 and sees only padding).
    window: if > 0 (with causal), query i sees keys j with i - window < j <= i.
    scale: multiplies q.k (1/sqrt(H) for GPT and BERT, 1.0 for T5).
    softcap: if > 0, logits become softcap * tanh(logits / softcap) (Gemma 2).
    interpret: run the kernel in Pallas interpret mode (any backend; for tests on a CPU).
  """
  b, t, n, h = q.shape
  s, kv_heads = k.shape[1], k.shape[2]
  reason = unsupported_reason(q_len=t, kv_len=s, num_heads=n, num_kv_heads=kv_heads,
                              head_dim=h, causal=causal, window=window, has_bias=False,
                              has_prefix=False, dropout=False, decode=False)
  if reason:
    raise ValueError(f"splash attention cannot run this variant: {reason}")
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("give both q_segment_ids and kv_segment_ids, or neither")
  # The kernel multiplies q.k unscaled. Scaling q costs T*N*H multiplies, not T*S*N.
  q = (q.astype(jnp.float32) * scale).astype(q.dtype)
  head_major = lambda x: x.transpose(0, 2, 1, 3)  # (B, L, heads, H) -> (B, heads, L, H)
  args = [head_major(q), head_major(k), head_major(v)]
  if q_segment_ids is not None:
    args += [q_segment_ids.astype(jnp.int32), kv_segment_ids.astype(jnp.int32)]
  attend = functools.partial(_attend, causal=causal, window=window, softcap=softcap,
                             interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  out = attend(*args) if mesh.empty else _sharded(attend, mesh, *args)
  return head_major(out).astype(q.dtype)  # (B, T, N, H)


def _block(length: int) -> int:
  return next(b for b in _BLOCKS if length % b == 0)


def _kernel(num_heads: int, q_len: int, kv_len: int, *, causal: bool, window: int,
            softcap: float, interpret: bool):
  """The splash kernel for one example's (num_heads, q_len, H) queries; static shapes only."""
  # Pallas's TPU kernels load only where one is built: seconds of imports no other run needs.
  from jax.experimental.pallas.ops.tpu import splash_attention as sa  # pylint: disable=import-outside-toplevel
  shape = (q_len, kv_len)
  if window:  # keys i - window < j <= i
    mask = sa.LocalMask(shape, window_size=(window - 1, 0), offset=0)
  elif causal:
    mask = sa.CausalMask(shape)
  else:
    mask = sa.FullMask(shape)
  bq, bkv = _block(q_len), _block(kv_len)
  sizes = sa.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv,
                        block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
                        block_q_dq=bq, block_kv_dq=bkv)
  # head_shards = q_seq_shards = 1: under a mesh each shard builds its own kernel for its
  # local heads (see _sharded), so the mask never needs splitting.
  return sa.make_splash_mha(sa.MultiHeadMask([mask] * num_heads), block_sizes=sizes,
                            head_shards=1, q_seq_shards=1, interpret=interpret,
                            attn_logits_soft_cap=softcap or None)


def _attend(q: Array, k: Array, v: Array, q_segment_ids: Array | None = None,
            kv_segment_ids: Array | None = None, *, causal: bool, window: int,
            softcap: float = 0.0, interpret: bool) -> Array:
  """q (B, N, T, H), k and v (B, K, S, H) -> (B, N, T, H): the kernel vmapped over batch."""
  kernel = _kernel(q.shape[1], q.shape[2], k.shape[2], causal=causal, window=window,
                   softcap=softcap, interpret=interpret)
  if q_segment_ids is None:
    return jax.vmap(kernel)(q, k, v)
  from jax.experimental.pallas.ops.tpu import splash_attention as sa  # pylint: disable=import-outside-toplevel  # as in _kernel
  one = lambda q, k, v, qs, ks: kernel(q, k, v, segment_ids=sa.SegmentIds(q=qs, kv=ks))
  return jax.vmap(one)(q, k, v, q_segment_ids, kv_segment_ids)


def _sharded(attend, mesh, q: Array, k: Array, v: Array, *segment_ids: Array) -> Array:
  """`attend` inside a shard_map over `mesh`: batch and heads split as the activation rules
  say, where their mesh axes divide them; everything else replicated."""
  batch_axes, head_axes = nn.logical_to_mesh_axes((BATCH, HEADS))
  sizes = dict(mesh.shape)
  q_spec = fit_spec((batch_axes, head_axes), q.shape, sizes)  # (B, N, T, H)
  kv_spec = fit_spec((batch_axes, head_axes), k.shape, sizes)  # (B, K, S, H)
  if q_spec[1] is not None and kv_spec[1] is None and k.shape[1] > 1:
    # K heads that the head axes do not divide: a shard's query heads would need a slice of
    # key/value heads that no even split gives. Keep heads whole.
    q_spec = P(q_spec[0], None)
  seg_spec = P(q_spec[0], None)
  in_specs = (q_spec, kv_spec, kv_spec) + (seg_spec,) * len(segment_ids)
  # check_vma=False: the Pallas call does not track which mesh axes its result varies over.
  return jax.shard_map(attend, mesh=mesh, in_specs=in_specs, out_specs=q_spec,
                       check_vma=False)(q, k, v, *segment_ids)
