"""Analytic FLOPs of the three families, matmul peaks, and model FLOPs utilisation (MFU).

FLOPs here are "model FLOPs": the matmuls the model's math needs, 2 FLOPs per multiply-add,
nothing for element-wise work (norms, activations, softmax, the optimizer), which is a few
percent at most at any width worth measuring. Training counts 3x the forward matmuls: the
backward pass computes, for every product, one gradient per operand, each as large as the
forward product. Recomputation under `model.remat` is not counted (it is overhead, not model
work), so MFU does not improve by rematerialising.

What is counted is what the models in models.py compute:
  - attention: the Q, K, V and output projections (K and V with num_kv_heads heads), and the
    quadratic term, QK^T and the attention-weighted values, over the full T x S score matrix
    (a causal mask zeroes half of it, but XLA's attention computes all of it);
  - MLP: two matrices, or three when gated (swiglu, geglu);
  - token embeddings: a gather, no FLOPs; the LM head (tied or not) projects every position onto
    the vocabulary;
  - EncoderLM's MLM head runs on every position, not only the masked ones: a transform (E x E)
    and the tied vocabulary projection;
  - encoder-decoder: the decoder's cross-attention projects keys and values of every encoder
    position in every decoder layer;
  - classifier heads: the encoder's pooler (E x E) and classifier (E x classes) on its first
    position, the decoder's classifier on its last real one; extractive QA: a start/end
    projection (E x 2) on every position.

Peaks: `measured_peak` times a large square matmul on this host (cached per process);
`published_peak` looks up the datasheet peak of an accelerator by its `device_kind`.
"""

from __future__ import annotations

import functools
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from research import kinds, models
from research.config import ConfigError, ExperimentConfig, ModelConfig
from research.layers import cache_size, layer_window, resolve_matmul_dtype
# The lengths a config trains on are the objective's (or its task's) to say; named here too.
from research.objectives import sequence_lengths

HEADS = ("lm", "mlm", "classifier", "last_token_classifier", "span", "none")
# The pretraining head each family's model (models.build_model) carries.
PRETRAINING_HEAD = {"decoder": "lm", "encoder": "mlm", "encoder_decoder": "lm"}


# ---------------------------------------------------------------------------------------------
# Forward FLOPs of the pieces (per example)
# ---------------------------------------------------------------------------------------------


def _gated(model: ModelConfig) -> bool:
  return model.mlp_activation in ("swiglu", "geglu")


def attention_flops(model: ModelConfig, query_len: int, key_len: int) -> dict[str, int]:
  """One attention layer: projections (linear in length) and scores (quadratic)."""
  e, n, k, h = model.embed_dim, model.num_heads, model.resolved_kv_heads, model.resolved_head_dim
  projections = 2 * query_len * e * n * h  # query
  projections += 2 * 2 * key_len * e * k * h  # key, value
  projections += 2 * query_len * n * h * e  # output
  scores = 2 * 2 * query_len * key_len * n * h  # QK^T and weights @ V
  return {"projections": projections, "scores": scores}


def mlp_flops(model: ModelConfig, length: int) -> int:
  matrices = 3 if _gated(model) else 2
  return 2 * length * model.embed_dim * model.mlp_dim * matrices


def stack_flops(model: ModelConfig, num_layers: int, length: int, *,
                cross_length: int = 0) -> dict[str, int]:
  """num_layers Blocks on `length` positions; cross_length > 0 adds cross-attention to that
  many encoder positions. A layer with a sliding window (model.attention_window, or a local
  layer of model.layer_pattern) scores each query against at most its window of keys."""
  self_attention = attention_flops(model, length, length)
  out = {"attention_projections": self_attention["projections"],
         "attention_scores": 0,
         "mlp": mlp_flops(model, length)}
  if cross_length:
    cross = attention_flops(model, length, cross_length)
    out["cross_attention_projections"] = cross["projections"]
    out["cross_attention_scores"] = cross["scores"]
  out = {name: num_layers * value for name, value in out.items()}
  for i in range(num_layers):
    window = layer_window(model, model.layer_kind(i) == "L")
    keys = min(window, length) if window else length
    out["attention_scores"] += attention_flops(model, length, keys)["scores"]
  return out


def head_flops(model: ModelConfig, head: str, length: int, num_classes: int = 2) -> int:
  """The output head on a stack of `length` positions."""
  e, v = model.embed_dim, model.vocab_size
  if head == "lm":
    return 2 * length * e * v
  if head == "mlm":
    return 2 * length * e * e + 2 * length * e * v
  if head == "classifier":  # EncoderClassifier: pooler + classifier on the first token
    return 2 * e * e + 2 * e * num_classes
  if head == "last_token_classifier":  # DecoderClassifier
    return 2 * e * num_classes
  if head == "span":
    return 2 * length * e * 2
  if head == "none":
    return 0
  raise ConfigError(f"unknown head {head!r}; one of {list(HEADS)}")


def forward_flops(model: ModelConfig, input_len: int, target_len: int = 0, *,
                  head: str | None = None, num_classes: int = 2) -> dict[str, int]:
  """Forward matmul FLOPs of one example, by component, plus 'total'.

  input_len: the decoder-only or encoder input length; target_len: the encoder-decoder's
  decoder length (0: input_len). head: see HEADS; None takes the family's pretraining head.
  """
  if model.vocab_size <= 0 and (head or PRETRAINING_HEAD[model.family]) in ("lm", "mlm"):
    raise ConfigError("model.vocab_size is 0 (taken from the tokenizer at build time): count "
                      "FLOPs of the resolved config (train.build_experiment(...).config) or set "
                      "model.vocab_size")
  head = head or PRETRAINING_HEAD[model.family]
  if models.family_of(model).seq2seq:
    target_len = target_len or input_len
    encoder = stack_flops(model, model.num_layers, input_len)
    decoder = stack_flops(model, model.num_decoder_layers or model.num_layers, target_len,
                          cross_length=input_len)
    out = {f"encoder/{k}": v for k, v in encoder.items()}
    out.update({f"decoder/{k}": v for k, v in decoder.items()})
    out["head"] = head_flops(model, head, target_len, num_classes)
  else:
    out = stack_flops(model, model.num_layers, input_len)
    out["head"] = head_flops(model, head, input_len, num_classes)
  out["total"] = sum(out.values())
  return out


# ---------------------------------------------------------------------------------------------
# Training FLOPs of an experiment
# ---------------------------------------------------------------------------------------------


def training_head(config: ExperimentConfig) -> str:
  """The output head a run trains: the family's pretraining head, or its fine-tuning task's."""
  family = config.model.family
  if config.task.name:  # the task's kind names its head (None: the family's LM head)
    return kinds.kind_class(config).head_for(family) or PRETRAINING_HEAD[family]
  return PRETRAINING_HEAD[family]


def training_flops_per_example(config: ExperimentConfig,
                               row_lengths: tuple[int, int] | None = None) -> int:
  """Forward + backward matmul FLOPs of one training example, or packed row (3x the forward);
  row_lengths: the (input, target) lengths of the rows, where the data sets them
  (tasks.TaskData.row_lengths; default: sequence_lengths)."""
  input_len, target_len = row_lengths or sequence_lengths(config)
  # A preference pair runs two sequences, its chosen and its rejected response.
  rows = kinds.kind_class(config).ROWS_PER_EXAMPLE if config.task.name else 1
  return rows * 3 * forward_flops(config.model, input_len, target_len,
                                  head=training_head(config))["total"]


def training_flops_per_step(config: ExperimentConfig,
                            row_lengths: tuple[int, int] | None = None) -> int:
  """Model FLOPs of one optimizer step on the global batch (gradient accumulation included)."""
  return config.data.batch_size * training_flops_per_example(config, row_lengths)


def training_flops_per_token(config: ExperimentConfig) -> float:
  """Training FLOPs per input token (batch_size x seq_len tokens per step, as the logs count)."""
  return training_flops_per_example(config) / config.data.seq_len


def decode_step_flops(config: ExperimentConfig, batch_size: int) -> int:
  """Forward matmul FLOPs of one KV-cache decoding step (one new token per row): projections
  of the new token, its scores against all the cache slots of each layer (max_len, or a local
  layer's window; the cache is attended in full, masked), the MLP and the LM head. The encoder-decoder's cross-attention projects the
  keys and values of all encoder positions at every step (decode.py does not cache them)."""
  m = config.model
  e, n, k, h = m.embed_dim, m.num_heads, m.resolved_kv_heads, m.resolved_head_dim
  projections = 2 * e * n * h + 2 * 2 * e * k * h + 2 * n * h * e
  per_layer = projections + mlp_flops(m, 1)
  layers = m.num_layers
  family = models.family_of(m)
  if family.seq2seq:
    layers = family.decoder_layers(m)
    input_len, _ = sequence_lengths(config)
    cross = attention_flops(m, 1, input_len)
    per_layer += cross["projections"] + cross["scores"]
  # Each layer scores the new token against its cache's slots (a local layer: its window).
  scores = sum(2 * 2 * cache_size(m, m.layer_kind(i) == "L") * n * h for i in range(layers))
  return batch_size * (layers * per_layer + scores + head_flops(m, "lm", 1))


# ---------------------------------------------------------------------------------------------
# Peaks and MFU
# ---------------------------------------------------------------------------------------------

# Dense (no sparsity) datasheet peaks per JAX device, FLOP/s, at JAX's default matmul precision:
# bfloat16 operands, and float32 operands as XLA runs them by default (TF32 tensor cores on
# NVIDIA Ampere and later; one bf16 pass on TPU). Patterns are matched in order against
# jax.Device.device_kind. TPU v2/v3 expose each core as a device (half a chip).
PUBLISHED_PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    (r"TPU v2", {"bfloat16": 22.5e12, "float32": 22.5e12}),
    (r"TPU v3", {"bfloat16": 61.5e12, "float32": 61.5e12}),
    (r"TPU v4", {"bfloat16": 275e12, "float32": 275e12}),
    (r"TPU v5 ?lite|TPU v5e", {"bfloat16": 197e12, "float32": 197e12}),
    (r"TPU v5", {"bfloat16": 459e12, "float32": 459e12}),  # v5p
    (r"TPU v6 ?lite|TPU v6e", {"bfloat16": 918e12, "float32": 918e12}),
    (r"H100 PCIe", {"bfloat16": 756e12, "float32": 378e12}),
    (r"H100|H200|H800", {"bfloat16": 989e12, "float32": 494e12}),
    (r"B200", {"bfloat16": 2250e12, "float32": 1100e12}),
    (r"A100|A800", {"bfloat16": 312e12, "float32": 156e12}),
    (r"L40S", {"bfloat16": 362e12, "float32": 183e12}),
    (r"\bL4\b", {"bfloat16": 121e12, "float32": 60e12}),
    (r"\bA10G?\b", {"bfloat16": 125e12, "float32": 62.5e12}),
)


def published_peak(device_kind: str, dtype: str = "bfloat16") -> float | None:
  """Datasheet peak FLOP/s of one device of this kind, or None when unknown (e.g. CPUs)."""
  for pattern, peaks in PUBLISHED_PEAKS:
    if re.search(pattern, device_kind):
      return peaks[dtype]
  return None


def time_matmul_peak(dtype: str = "float32", size: int = 1024, repeats: int = 10) -> float:
  """FLOP/s of a (size x size) @ (size x size) jnp.dot on the default device, operands in
  `dtype`, float32 results (as layers.dense runs them); the median of `repeats` timed runs.

  Timed anew at every call (well under a second on a CPU). On a CPU this is what one process
  gets from all its cores: the fake devices of --xla_force_host_platform_device_count share them.
  """
  operand = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
  device = jax.local_devices()[0]
  # Its own one-device mesh: the caller may be inside a training run's mesh context.
  with jax.set_mesh(jax.make_mesh((1,), ("x",), devices=[device])):
    keys = jax.random.split(jax.random.key(0))
    a, b = (jax.device_put(jax.random.normal(k, (size, size), operand), device) for k in keys)
    product = _square_product()
    product(a, b).block_until_ready()  # compile (once per shape) and warm up
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      product(a, b).block_until_ready()
      times.append(time.perf_counter() - start)
  return 2 * size**3 / float(np.median(times))


@functools.cache
def _square_product():
  return jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))


@functools.cache
def measured_peak(dtype: str = "float32", size: int = 1024, repeats: int = 10) -> float:
  """time_matmul_peak, measured once per process and dtype (what a training run's MFU uses)."""
  return time_matmul_peak(dtype, size, repeats)


def peak_flops(config: ExperimentConfig) -> tuple[float, str]:
  """(peak FLOP/s of all the devices a run uses, where it came from) for MFU.

  train.peak_flops > 0 is taken as given; else the published peak of the device kind times the
  device count; else (CPUs) a matmul measured here in the config's matmul dtype, times the
  process count (one host's cores serve all of its devices).
  """
  if config.train.peak_flops > 0:
    return config.train.peak_flops, "config"
  dtype = resolve_matmul_dtype(config.model.matmul_dtype)
  published = published_peak(jax.devices()[0].device_kind, dtype)
  if published is not None:
    return published * jax.device_count(), "published"
  return measured_peak(dtype) * jax.process_count(), "measured"
