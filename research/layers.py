"""The shared blocks. BERT, GPT and T5 (models.py) are these pieces composed three ways.

Shapes use: B batch, T query length, S key length, E embed, N query heads, K key/value heads,
H head dim, F mlp width, V vocabulary.

Every parameter is created with logical axis names (`nn.with_logical_partitioning`) from the
vocabulary in `config.DEFAULT_RULES`; the rules table maps them to mesh axes.

Precision policy (ModelConfig): parameters are stored in `param_dtype`, the residual stream and
norms run in `activation_dtype`, and every matmul casts its operands to `matmul_dtype` and
accumulates in float32. On CPUs with AMX, bf16 operands with f32 results are much faster than
f32, while casting the whole model to bf16 is slower and less accurate; on CPUs without native
bf16 products (AVX2-only, say) bf16 operands are emulated and slower than f32. `matmul_dtype=
"auto"` takes bf16 where the hardware multiplies it natively and f32 elsewhere.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import attention, threefry
from research.attention import MaskSpec
from research.config import ModelConfig
# The precision policy and its products are research/matmul.py's; the blocks build on them.
from research.matmul import (batched_matmul, dense, dense_transposed, dtype,  # pylint: disable=unused-import
                             resolve_matmul_dtype, target_platform)
from research.sharding import fit_spec

Array = jax.Array

threefry.register_cpu_lowering()  # dropout's random bits in one fused pass on CPU (threefry.py)

# Logical names of activations (mapped to mesh axes by the rules table).
BATCH, LENGTH, EMBED = "activation_batch", "activation_length", "activation_embed"
HEADS, MLP, VOCAB = "activation_heads", "activation_mlp", "activation_vocab"

def constrain(x: Array, *names: str | None) -> Array:
  """Activation sharding by logical names; a name whose mesh axes do not divide its dimension
  (e.g. 2 heads on tensor=4) leaves that dimension replicated."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  mesh_axes = nn.logical_to_mesh_axes(names)
  fitted = fit_spec(mesh_axes, x.shape, dict(mesh.shape))
  names = tuple(n if f is not None else None for n, f in zip(names, fitted))
  return nn.with_logical_constraint(x, names)


def normal_init(std: float):
  return nn.initializers.normal(stddev=std)


class Linear(nn.Module):
  """A dense layer over the last `in_dims` axes of x, with logical axis names on its kernel.

  kernel shape = x.shape[-in_dims:] + out_features; kernel_axes names every kernel dimension.
  """

  out_features: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  config: ModelConfig
  in_dims: int = 1
  use_bias: bool = False
  init_std: float | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    in_shape = x.shape[-self.in_dims:]
    kernel = self.param(
        "kernel",
        nn.with_logical_partitioning(normal_init(self.init_std or cfg.init_std), self.kernel_axes),
        in_shape + tuple(self.out_features), dtype(cfg.param_dtype))
    lead = x.shape[:-self.in_dims]
    x2 = x.reshape(lead + (int(np.prod(in_shape)),))
    y = dense(x2, kernel.reshape(-1, int(np.prod(self.out_features))), dtype(cfg.matmul_dtype))
    y = y.reshape(lead + tuple(self.out_features))
    if self.use_bias:
      bias = self.param(
          "bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                               self.kernel_axes[self.in_dims:]),
          tuple(self.out_features), dtype(cfg.param_dtype))
      y = y + bias
    return y.astype(dtype(cfg.activation_dtype))


# ---------------------------------------------------------------------------------------------
# Embeddings and positions
# ---------------------------------------------------------------------------------------------


class Embed(nn.Module):
  """Token (or segment) embedding table (V, E); `attend` reuses it as a tied output layer."""

  num_embeddings: int
  config: ModelConfig
  axes: tuple[str, str] = ("vocab", "embed")

  def setup(self):
    cfg = self.config
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(normal_init(cfg.init_std), self.axes),
        (self.num_embeddings, cfg.embed_dim), dtype(cfg.param_dtype))

  def __call__(self, ids: Array) -> Array:  # (B, T) -> (B, T, E)
    cfg = self.config
    x = jnp.take(self.embedding, ids, axis=0).astype(dtype(cfg.activation_dtype))
    if cfg.scale_embeddings and self.axes[0] == "vocab":  # Gemma: tokens only, not types
      x = x * jnp.asarray(np.sqrt(cfg.embed_dim), x.dtype)
    return x

  def attend(self, x: Array) -> Array:  # (B, T, E) -> (B, T, V) float32
    if self.config.scale_tied_logits:  # T5 v1.0: keeps logits O(1) with its N(0, 1) embeddings
      x = x * self.config.embed_dim ** -0.5
    return dense_transposed(x, self.embedding, dtype(self.config.matmul_dtype))


class LearnedPositions(nn.Module):
  """Absolute position table (max_len, E), as in GPT-2 and BERT."""

  config: ModelConfig

  @nn.compact
  def __call__(self, positions: Array) -> Array:  # (B, T) -> (B, T, E)
    cfg = self.config
    table = self.param(
        "embedding", nn.with_logical_partitioning(normal_init(cfg.init_std), ("position", "embed")),
        (cfg.max_len, cfg.embed_dim), dtype(cfg.param_dtype))
    return jnp.take(table, positions, axis=0).astype(dtype(cfg.activation_dtype))


def rope_frequencies(config: ModelConfig, local: bool = False) -> Array:
  """The rotation frequencies (H/2,) of a layer: base^(-2i/H) with the local or global base;
  a global layer's frequencies scaled as config.rope_scaling says."""
  half = config.resolved_head_dim // 2
  base = config.local_rope_base if local else config.rope_base
  freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  if local or config.rope_scaling == "none":
    return freqs
  factor = config.rope_scaling_factor
  if config.rope_scaling == "linear":  # positions / factor
    return freqs / factor
  # llama3: wavelengths longer than the original context / low_freq_factor are stretched by
  # the factor, those shorter than it / high_freq_factor kept, and a smooth ramp between.
  original = config.rope_original_max_len
  low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
  wavelength = 2 * np.pi / freqs
  stretched = jnp.where(wavelength > original / low, freqs / factor, freqs)
  ramp = (original / wavelength - low) / (high - low)
  medium = (wavelength >= original / high) & (wavelength <= original / low)
  return jnp.where(medium, (1 - ramp) * freqs / factor + ramp * freqs, stretched)


def apply_rope(x: Array, positions: Array, freqs: Array) -> Array:
  """Rotary position embedding on the last axis of x (B, T, N, H) at positions (B, T).

  Rotates pairs (x[i], x[i + H/2]) by angle position * freqs[i] (the "half" layout used by
  GPT-NeoX and Llama; freqs from rope_frequencies).
  """
  angles = positions[..., None].astype(jnp.float32) * freqs  # (B, T, H/2)
  sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]  # (B, T, 1, H/2)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


def relative_position_bucket(relative: Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Array:
  """T5's bucketing of (key - query) distances: exact for small ones, logarithmic beyond."""
  buckets = 0
  if bidirectional:
    num_buckets //= 2
    buckets = (relative > 0).astype(jnp.int32) * num_buckets
    distance = jnp.abs(relative)
  else:
    distance = jnp.maximum(-relative, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact) / np.log(
      max_distance / max_exact)
  large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
  """T5 relative position bias: a learned scalar per (bucket, head), added to attention logits."""

  config: ModelConfig
  bidirectional: bool

  @nn.compact
  def __call__(self, q_positions: Array, k_positions: Array) -> Array:
    cfg = self.config  # positions (B, T), (B, S) -> bias (B, N, T, S) float32
    table = self.param(
        "rel_embedding",
        nn.with_logical_partitioning(normal_init(cfg.init_std), ("relpos_buckets", "heads")),
        (cfg.relative_buckets, cfg.num_heads), dtype(cfg.param_dtype))
    relative = k_positions[:, None, :] - q_positions[:, :, None]  # (B, T, S)
    buckets = relative_position_bucket(relative, self.bidirectional, cfg.relative_buckets,
                                       cfg.relative_max_distance)
    bias = jnp.take(table, buckets, axis=0)  # (B, T, S, N)
    return jnp.transpose(bias, (0, 3, 1, 2)).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Norms, MLP, attention
# ---------------------------------------------------------------------------------------------


class RMSNormPlusOne(nn.Module):
  """RMS norm over the last axis scaled by (1 + w), w born 0: Gemma's form, whose checkpoints
  store w. Computed in float32, as Gemma computes it."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    w = self.param("scale", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
                   (x.shape[-1],), dtype(cfg.param_dtype))
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.norm_eps)
    return (y * (1.0 + w.astype(jnp.float32))).astype(dtype(cfg.activation_dtype))


def make_norm(config: ModelConfig, name: str) -> nn.Module:
  """The config's norm over the last axis (the residual stream's, or a head's for QK-norm)."""
  scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("norm",))
  common = dict(epsilon=config.norm_eps, dtype=dtype(config.activation_dtype),
                param_dtype=dtype(config.param_dtype), scale_init=scale_init, name=name)
  if config.norm == "rmsnorm" and config.norm_scale_plus_one:
    return RMSNormPlusOne(config, name=name)
  if config.norm == "rmsnorm":
    return nn.RMSNorm(**common)
  return nn.LayerNorm(use_bias=config.use_bias,
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
                      **common)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # BERT, nanoGPT
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),  # GPT-2's "gelu_new"
    "relu": jax.nn.relu,
    "swiglu": jax.nn.silu,  # gated: act(x W0) * (x W1)
    "geglu": functools.partial(jax.nn.gelu, approximate=True),  # T5 v1.1's gated-gelu
}


class Mlp(nn.Module):
  """Position-wise feed-forward: E -> F -> E, plain or gated (SwiGLU / GeGLU)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    cfg = self.config
    act = ACTIVATIONS[cfg.mlp_activation]
    up = functools.partial(Linear, (cfg.mlp_dim,), ("embed", "mlp"), cfg, use_bias=cfg.use_bias)
    h = act(up(name="wi")(x))  # (B, T, F)
    if cfg.mlp_activation in ("swiglu", "geglu"):
      h = h * up(name="wi_gate")(x)
    h = constrain(h, BATCH, LENGTH, MLP)
    h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    return Linear((cfg.embed_dim,), ("mlp", "embed"), cfg, use_bias=cfg.use_bias,
                  init_std=cfg.init_std / np.sqrt(2 * cfg.num_layers), name="wo")(h)


class Attention(nn.Module):
  """Multi-head attention with N query heads sharing K key/value heads (MHA, GQA, MQA).

  Self-attention when `kv` is None, cross-attention over `kv` (the encoder's output) otherwise.
  What each query may see is `spec` (attention.MaskSpec, built once per Stack); `bias`
  (B, N, T, S) is added to the logits (T5's relative positions).

  decode=True keeps keys and values in a cache (collection 'cache'). Self-attention: the queries
  attend to the cache slots and to the chunk itself (spec's keys, set up by the Stack), then the
  chunk is written at `cache_slots` (B, T) (an index past the cache drops a token). Cross-
  attention: the encoder's keys and values are projected once, when `kv` is given (the prefill),
  and read from the cache at every later step (kv None).
  """

  config: ModelConfig
  use_rope: bool = False
  local: bool = False  # a local layer (model.layer_pattern "L"): its own RoPE base, no scaling

  @nn.compact
  def __call__(self, x: Array, kv: Array | None = None, *, spec: MaskSpec,
               bias: Array | None = None, cache_slots: Array | None = None,
               is_cross: bool = False, decode: bool = False,
               deterministic: bool = True) -> Array:
    cfg = self.config
    n, h = cfg.num_heads, cfg.resolved_head_dim
    qkv_proj = functools.partial(Linear, config=cfg, use_bias=cfg.use_bias or cfg.qkv_bias)
    q = qkv_proj((n, h), ("embed", "heads", "head_dim"), name="query")(x)  # (B, T, N, H)
    if cfg.qk_norm:
      q = make_norm(cfg, "query_norm")(q)
    if is_cross and decode:
      key, value = self._cross_keys_values(kv, qkv_proj)
    else:
      key, value = self._keys_values(x if kv is None else kv, qkv_proj)  # (B, S, K, H) each
    if self.use_rope:
      freqs = rope_frequencies(cfg, self.local)
      q = apply_rope(q, spec.q_positions, freqs)
      key = apply_rope(key, spec.q_positions, freqs)  # the chunk's own positions
    if decode and not is_cross:
      key, value = self._cached_and_new(key, value, cache_slots)
    dropout = None
    if not deterministic and cfg.dropout_rate > 0.0:
      dropout = nn.Dropout(cfg.dropout_rate, deterministic=False)
    scale = None  # 1/sqrt(H)
    if not cfg.scale_attention:
      scale = 1.0
    elif cfg.query_pre_attn_scalar:
      scale = float(cfg.query_pre_attn_scalar) ** -0.5
    out = attention.attend(
        q, key, value, spec, choice=cfg.attention, platform=target_platform(),
        scale=scale, operand_dtype=dtype(cfg.matmul_dtype), bias=bias, dropout=dropout,
        decode=decode, softcap=cfg.attn_logit_softcap)  # (B, T, N, H) float32
    out = constrain(out.astype(dtype(cfg.activation_dtype)), BATCH, LENGTH, HEADS, None)
    return Linear((cfg.embed_dim,), ("heads", "head_dim", "embed"), cfg, in_dims=2,
                  use_bias=cfg.use_bias, init_std=cfg.init_std / np.sqrt(2 * cfg.num_layers),
                  name="out")(out)

  def _keys_values(self, kv: Array, proj) -> tuple[Array, Array]:
    """Keys (QK-normed when the config says) and values of kv (B, S, E): (B, S, K, H) each."""
    cfg = self.config
    k, h = cfg.resolved_kv_heads, cfg.resolved_head_dim
    key = proj((k, h), ("embed", "kv_heads", "head_dim"), name="key")(kv)
    value = proj((k, h), ("embed", "kv_heads", "head_dim"), name="value")(kv)
    if cfg.qk_norm:
      key = make_norm(cfg, "key_norm")(key)
    return key, value

  def _cross_keys_values(self, encoded: Array | None, proj):
    """Cross-attention while decoding: the encoder's keys/values, projected once per input."""
    if encoded is not None:  # the prefill (and init): project and keep
      key, value = self._keys_values(encoded, proj)
      cached_key = self.variable("cache", "cross_key", lambda: key)
      cached_value = self.variable("cache", "cross_value", lambda: value)
      cached_key.value, cached_value.value = key, value
      return key, value
    return self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value")

  def _cached_and_new(self, key: Array, value: Array, slots: Array):
    """(cache slots + chunk) keys and values for the chunk's queries; writes the chunk."""
    b, t, k, h = key.shape
    size = cache_size(self.config, self.local)
    cached_key = self.variable("cache", "cached_key", jnp.zeros, (b, size, k, h), key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, (b, size, k, h),
                                 value.dtype)
    all_key = jnp.concatenate([cached_key.value, key], axis=1)  # (B, C + T, K, H)
    all_value = jnp.concatenate([cached_value.value, value], axis=1)
    rows = jnp.arange(b)[:, None]
    cached_key.value = cached_key.value.at[rows, slots].set(key, mode="drop")
    cached_value.value = cached_value.value.at[rows, slots].set(value, mode="drop")
    return all_key, all_value


def layer_window(config: ModelConfig, local: bool) -> int:
  """What a layer's queries see: a local layer its local_window, a global one attention_window
  (0: every earlier position)."""
  return config.local_window if local else config.attention_window


def cache_size(config: ModelConfig, local: bool = False) -> int:
  """Slots of a self-attention KV cache: the layer's window, or the whole context."""
  window = layer_window(config, local)
  return min(window, config.max_len) if window else config.max_len


def softcap(x: Array, cap: float) -> Array:
  """cap * tanh(x / cap): logits kept within (-cap, cap) (Gemma 2); cap 0 leaves x as it is."""
  return x if not cap else cap * jnp.tanh(x / cap)


# ---------------------------------------------------------------------------------------------
# The residual block
# ---------------------------------------------------------------------------------------------


class Block(nn.Module):
  """Self-attention (+ cross-attention when given `encoded`) + MLP, each a residual branch.

  Pre-norm (GPT-2, T5, Llama): x + f(norm(x)). Post-norm (BERT, the original Transformer):
  norm(x + f(x)). Pre-norm with post_norms (Gemma 2/3): x + norm(f(norm(x))).
  local: a local layer of model.layer_pattern (its window comes with `spec`).
  """

  config: ModelConfig
  has_cross_attention: bool = False
  local: bool = False

  @nn.compact
  def __call__(self, x: Array, *, spec: MaskSpec, bias: Array | None = None,
               cache_slots: Array | None = None, encoded: Array | None = None,
               cross_spec: MaskSpec | None = None, decode: bool = False,
               deterministic: bool = True) -> Array:
    cfg = self.config

    def residual(x, branch, name):
      drop = nn.Dropout(cfg.dropout_rate)
      if cfg.norm_position == "post":
        return make_norm(cfg, f"{name}_norm")(x + drop(branch(x), deterministic=deterministic))
      y = branch(make_norm(cfg, f"{name}_norm")(x))
      if cfg.post_norms:
        y = make_norm(cfg, f"{name}_post_norm")(y)
      return x + drop(y, deterministic=deterministic)

    self_attention = Attention(cfg, use_rope=cfg.position == "rope", local=self.local,
                               name="self_attention")
    x = residual(x, lambda y: self_attention(
        y, spec=spec, bias=bias, cache_slots=cache_slots, decode=decode,
        deterministic=deterministic), "self_attention")
    if self.has_cross_attention:
      cross_attention = Attention(cfg, name="cross_attention")  # no rotation across sequences
      x = residual(x, lambda y: cross_attention(
          y, encoded, spec=cross_spec, is_cross=True, decode=decode,
          deterministic=deterministic), "cross_attention")
    mlp = Mlp(cfg, name="mlp")
    x = residual(x, lambda y: mlp(y, deterministic=deterministic), "mlp")
    return constrain(x, BATCH, LENGTH, EMBED)
