"""Attention in one place: what a query may see (MaskSpec), and the kernels that compute it.

Every family describes its attention with one MaskSpec, built in models.Stack:

  causal        a query sees keys at its own position or earlier (decoders)
  segment ids   a query sees only keys of its own segment: packed examples (1, 2, 3, ...) and
                padding (0, never seen); an unpacked row is one segment
  positions     each token's position in its own sequence (restarting per packed segment; in
                cached decoding, the position of every cache slot)
  prefix        prefix-LM: keys before a row's prefix_lengths are visible to every query
  window        sliding window: only the `window` most recent positions (each side when
                bidirectional), the query's own included

and `attend` hands that description to one implementation, chosen by model.attention:

  xla     the written-out softmax(q k^T) v over a dense (B, 1, T, S) mask made from the spec
  splash  Pallas splash attention on TPU (research/splash.py): causal / segments / window are
          given to the kernel as a mask structure; no dense mask is ever built
  cudnn   jax.nn.dot_product_attention(implementation="cudnn") on GPU: is_causal, sequence
          lengths and local_window_size; a dense mask only for packed rows and prefix-LM
  auto    the target's own: splash on TPU, cudnn on GPU (16-bit operands), xla elsewhere

A variant a kernel cannot express (T5's relative bias or prefix masks on splash, attention
dropout on either, single-token decoding steps) runs on the XLA path, and says so once in the log.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from research import splash
from research.matmul import batched_matmul, materialized

Array = jax.Array
_log = logging.getLogger(__name__)


@struct.dataclass
class MaskSpec:
  """What each query may attend to, for queries (B, T) against keys (B, S).

  Segment ids are int32, 0 on padding; None means every token is real and of one segment.
  Positions are int32; None (cross-attention) means position plays no part.
  """

  q_segment_ids: Array | None = None  # (B, T)
  k_segment_ids: Array | None = None  # (B, S)
  q_positions: Array | None = None  # (B, T)
  k_positions: Array | None = None  # (B, S)
  prefix_lengths: Array | None = None  # (B,) prefix-LM: keys before it are seen by all
  causal: bool = struct.field(pytree_node=False, default=False)
  window: int = struct.field(pytree_node=False, default=0)  # 0: no window
  # Static facts the fused kernels need: several segments per row (packing), and whether the
  # key positions are the queries' own (self-attention over one chunk, not a decoding cache).
  packed: bool = struct.field(pytree_node=False, default=False)
  same_keys: bool = struct.field(pytree_node=False, default=True)

  @classmethod
  def self_attention(cls, positions: Array, segment_ids: Array | None = None, *,
                     causal: bool, window: int = 0, prefix_lengths: Array | None = None,
                     packed: bool = False) -> "MaskSpec":
    return cls(segment_ids, segment_ids, positions, positions, prefix_lengths, causal=causal,
               window=window, packed=packed)

  @classmethod
  def cross_attention(cls, q_segment_ids: Array | None, k_segment_ids: Array | None, *,
                      packed: bool = False) -> "MaskSpec":
    """Decoder queries over encoder keys: segment i sees the encoder's segment i only."""
    return cls(q_segment_ids, k_segment_ids, packed=packed, same_keys=False)

  def with_keys(self, k_positions: Array, k_segment_ids: Array) -> "MaskSpec":
    """The same queries against other keys (cached decoding: the cache slots + the chunk)."""
    q_segment_ids = self.q_segment_ids
    if q_segment_ids is None:
      q_segment_ids = jnp.ones(self.q_positions.shape, jnp.int32)
    return self.replace(q_segment_ids=q_segment_ids, k_segment_ids=k_segment_ids,
                        k_positions=k_positions, same_keys=False)

  def dense(self) -> Array | None:
    """The mask as booleans (B, 1, T, S), True where a query may see a key; None: all."""
    mask = None

    def both(a, b):
      return b if a is None else a & b

    if self.q_segment_ids is not None or self.k_segment_ids is not None:
      q_seg, k_seg = self.q_segment_ids, self.k_segment_ids
      q_seg = jnp.ones(k_seg.shape[:1] + (1,), jnp.int32) if q_seg is None else q_seg
      k_seg = jnp.ones(q_seg.shape[:1] + (1,), jnp.int32) if k_seg is None else k_seg
      mask = (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] > 0)
    if self.causal or self.window:
      q_pos, k_pos = self.q_positions[:, :, None], self.k_positions[:, None, :]
      if self.causal:
        order = k_pos <= q_pos
        if self.prefix_lengths is not None:
          order = order | (k_pos < self.prefix_lengths[:, None, None])
        mask = both(mask, order)
      if self.window:
        mask = both(mask, jnp.abs(q_pos - k_pos) < self.window)
    return None if mask is None else mask[:, None]


# ---------------------------------------------------------------------------------------------
# The implementations
# ---------------------------------------------------------------------------------------------

_GPU_PLATFORMS = ("gpu", "cuda", "rocm")


@functools.cache
def _say_once(message: str) -> None:
  _log.warning(message)


def resolve_implementation(choice: str, platform: str) -> str:
  """model.attention -> the implementation asked for on `platform` ("auto": the target's)."""
  if choice != "auto":
    return choice
  if platform == "tpu":
    return "splash"
  if platform in _GPU_PLATFORMS:
    return "cudnn"
  return "xla"


def attend(q: Array, k: Array, v: Array, spec: MaskSpec, *, choice: str, platform: str,
           scale: float | None, operand_dtype, bias: Array | None = None, dropout=None,
           decode: bool = False, softcap: float = 0.0) -> Array:
  """softmax(softcap(scale q k^T) + bias, where the spec allows) v for q (B, T, N, H), k and
  v (B, S, K, H) -> (B, T, N, H) float32, by the implementation model.attention names.
  scale None: 1/sqrt(H). softcap: cap * tanh(logits / cap) (Gemma 2); 0: none."""
  impl = resolve_implementation(choice, platform)
  if impl == "splash":
    reason = splash.unsupported_reason(
        q_len=q.shape[1], kv_len=k.shape[1], num_heads=q.shape[2], num_kv_heads=k.shape[2],
        head_dim=q.shape[3], causal=spec.causal, window=spec.window, has_bias=bias is not None,
        has_prefix=spec.prefix_lengths is not None, dropout=dropout is not None,
        decode=decode or not spec.same_keys and spec.causal)
    if reason is None:
      q_segments, k_segments = spec.q_segment_ids, spec.k_segment_ids
      if (q_segments is None) != (k_segments is None):  # the kernel takes both or neither
        q_segments = jnp.ones(q.shape[:2], jnp.int32) if q_segments is None else q_segments
        k_segments = jnp.ones(k.shape[:2], jnp.int32) if k_segments is None else k_segments
      out = splash.splash_attention(
          q.astype(operand_dtype), k.astype(operand_dtype), v.astype(operand_dtype),
          causal=spec.causal, q_segment_ids=q_segments, kv_segment_ids=k_segments,
          window=spec.window, softcap=softcap,
          scale=1.0 / np.sqrt(q.shape[-1]) if scale is None else scale)
      return out.astype(jnp.float32)
    _say_once(f"splash attention cannot run this attention ({reason}); using the XLA path")
  elif impl == "cudnn":
    reason = _cudnn_unsupported(q, spec, dropout, decode)
    if reason is None and softcap:
      reason = "logit soft-capping"
    if reason is None and choice == "auto" and jnp.dtype(operand_dtype) == jnp.float32:
      reason = "float32 operands (cuDNN fuses 16-bit ones; model.attention=cudnn casts to bf16)"
    if reason is None:
      return _cudnn_attention(q, k, v, spec, scale=scale, bias=bias,
                              operand_dtype=operand_dtype).astype(jnp.float32)
    _say_once(f"cuDNN attention cannot run this attention ({reason}); using the XLA path")
  return reference_attention(q, k, v, spec.dense(), scale=scale, bias=bias,
                             operand_dtype=operand_dtype, dropout=dropout, softcap=softcap)


def _cudnn_unsupported(q: Array, spec: MaskSpec, dropout, decode: bool) -> str | None:
  if dropout is not None:
    return "attention dropout (jax.nn.dot_product_attention has none)"
  if decode or q.shape[1] == 1:
    return "a single-token decoding step"
  if q.dtype not in (jnp.bfloat16, jnp.float16) and jnp.dtype(q.dtype) != jnp.float32:
    return f"{q.dtype} operands"
  return None


def _cudnn_attention(q, k, v, spec: MaskSpec, *, scale, bias, operand_dtype) -> Array:
  """cuDNN's fused attention with the spec as its own arguments where it has them: causal,
  right-padding lengths, a local window; a dense mask only for packed rows or prefix-LM."""
  q, k, v = (x.astype(operand_dtype) for x in (q, k, v))
  if q.dtype == jnp.float32:  # cuDNN fuses 16-bit operands only
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
  kwargs = {}
  dense_needed = spec.packed or spec.prefix_lengths is not None or not spec.same_keys
  if dense_needed:
    kwargs["mask"] = spec.dense()
  else:
    kwargs["is_causal"] = spec.causal
    if spec.q_segment_ids is not None:  # padding only (unpacked rows are right-padded)
      kwargs["query_seq_lengths"] = jnp.sum(spec.q_segment_ids > 0, axis=1).astype(jnp.int32)
      kwargs["key_value_seq_lengths"] = jnp.sum(spec.k_segment_ids > 0, axis=1).astype(jnp.int32)
    if spec.window:
      kwargs["local_window_size"] = (spec.window - 1, 0 if spec.causal else spec.window - 1)
  return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale, implementation="cudnn",
                                      **kwargs)


def reference_attention(q: Array, k: Array, v: Array, mask: Array | None, *, scale: float | None,
                        bias: Array | None = None, operand_dtype=jnp.float32,
                        dropout=None, softcap: float = 0.0) -> Array:
  """The XLA path, written out: every query's logits over all S keys, masked, softmaxed.

  Written out rather than jax.nn.dot_product_attention: dropout on the attention weights needs
  the probabilities, and on CPUs matmul.batched_matmul keeps bfloat16 products bfloat16 in the
  backward pass, which the library's XLA path does not.
  """
  q, k, v = q.astype(operand_dtype), k.astype(operand_dtype), v.astype(operand_dtype)
  b, t, n, h = q.shape
  s, kv_heads = k.shape[1], k.shape[2]
  groups = n // kv_heads
  # (B, K, G*T, H) queries, (B, K, H, S) keys, (B, K, S, H) values: row-major batched products.
  q = materialized(q.reshape(b, t, kv_heads, groups, h), (0, 2, 3, 1, 4), operand_dtype)
  q = q.reshape(b, kv_heads, groups * t, h)
  logits = batched_matmul(q, materialized(k, (0, 2, 3, 1), operand_dtype), operand_dtype)
  logits = logits.reshape(b, n, t, s)
  if scale is None:
    logits = logits / np.sqrt(h)
  elif scale != 1.0:
    logits = logits * np.float32(scale)
  if softcap:
    logits = softcap * jnp.tanh(logits / softcap)
  if bias is not None:
    logits = logits + bias
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)  # (B, N, T, S)
  if dropout is not None:
    probs = dropout(probs)
  probs = probs.reshape(b, kv_heads, groups * t, s)
  out = batched_matmul(probs, materialized(v, (0, 2, 1, 3), operand_dtype), operand_dtype)
  out = out.reshape(b, kv_heads, groups, t, h).transpose(0, 3, 1, 2, 4)  # (B, T, K, G, H)
  return out.reshape(b, t, n, h)
