"""Analytic FLOPs (research/flops.py) against XLA's own count, and the peak / MFU helpers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import flops, models, objectives
from research.config import ConfigError, ExperimentConfig

OBJECTIVE = {"decoder": "causal_lm", "encoder": "masked_lm", "encoder_decoder": "span_corruption"}


def config(family: str, **model) -> ExperimentConfig:
  # Wide enough that matmuls dominate: element-wise work (which XLA counts too) stays ~5%.
  fields = dict(family=family, vocab_size=96, num_layers=1, num_heads=4, embed_dim=128,
                mlp_dim=512, max_len=64, use_bias=False)
  return ExperimentConfig.from_config_dict({
      "model": {**fields, **model}, "objective": {"name": OBJECTIVE[family]},
      "data": {"seq_len": 64, "batch_size": 4}, "mesh": {"data": 1}})


def zeros_batch(cfg: ExperimentConfig) -> dict:
  b = cfg.data.batch_size
  inputs, targets = flops.sequence_lengths(cfg)
  ids = lambda n: jnp.zeros((b, n), jnp.int32)
  if cfg.model.family == "encoder_decoder":
    return {"encoder_inputs": ids(inputs), "encoder_mask": jnp.ones((b, inputs), bool),
            "decoder_inputs": ids(targets), "targets": ids(targets),
            "weights": jnp.ones((b, targets))}
  batch = {"inputs": ids(inputs), "targets": ids(inputs), "weights": jnp.ones((b, inputs))}
  if cfg.model.family == "encoder":
    batch["input_mask"] = jnp.ones((b, inputs), bool)
  return batch


def xla_training_flops(cfg: ExperimentConfig) -> float:
  """XLA's cost analysis of the compiled gradient of the training loss (forward + backward)."""
  model = models.build_model(cfg.model)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             *models.dummy_inputs(cfg.model, 8))["params"])
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), nn.unbox(shapes))
  loss_fn = objectives.LOSSES[cfg.model.family]
  grad = jax.jit(jax.grad(lambda p, b: loss_fn(model, p, b)["loss_sum"]))
  return grad.lower(params, zeros_batch(cfg)).compile().cost_analysis()["flops"]


def test_xla_counts_a_multiply_add_as_two_flops():
  product = jax.jit(jnp.matmul).lower(jnp.ones((64, 128)), jnp.ones((128, 32))).compile()
  assert product.cost_analysis()["flops"] == 2 * 64 * 128 * 32


@pytest.mark.parametrize("family,model", [
    ("decoder", {"mlp_activation": "swiglu", "num_kv_heads": 2, "tie_embeddings": False}),
    ("encoder", {"use_bias": True}),
    ("encoder_decoder", {"position": "relative"}),
])
def test_training_flops_match_xla_within_10_percent(family, model):
  cfg = config(family, **model)
  analytic = flops.training_flops_per_step(cfg)
  counted = xla_training_flops(cfg)
  # XLA also counts element-wise work (norms, GELU, softmax, the loss), so it reads a little
  # higher; the matmuls are the same.
  assert 0.97 < counted / analytic < 1.10, (counted, analytic)


def test_decoder_flops_are_six_per_parameter_plus_attention():
  """The textbook count: 6 FLOPs per matmul parameter per token, plus 12 L T E for attention."""
  cfg = config("decoder", position="rope")
  m = cfg.model
  params = nn.unbox(jax.eval_shape(lambda: models.build_model(m).init(
      jax.random.key(0), *models.dummy_inputs(m, 8))["params"]))
  matmul_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params) if x.ndim >= 2)
  t = cfg.data.seq_len
  expected = 6 * matmul_params + 12 * m.num_layers * t * m.embed_dim  # tied table = LM head
  assert flops.training_flops_per_token(cfg) == expected


def test_sequence_lengths_follow_the_objective():
  cfg = config("encoder_decoder")
  assert flops.sequence_lengths(cfg) == (
      64, objectives.span_corruption_target_length(64, cfg.objective))
  prefix = ExperimentConfig.from_config_dict({**cfg.to_dict(), "objective": {"name": "prefix_lm"}})
  assert flops.sequence_lengths(prefix) == (64, 64)
  assert flops.sequence_lengths(config("decoder")) == (64, 0)


def test_heads_and_components():
  m = config("encoder").model
  mlm = flops.forward_flops(m, 10)
  none = flops.forward_flops(m, 10, head="none")
  assert mlm["total"] - none["total"] == 2 * 10 * 128 * 128 + 2 * 10 * 128 * 96
  assert flops.head_flops(m, "classifier", 10, num_classes=3) == 2 * 128 * 128 + 2 * 128 * 3
  encdec = flops.forward_flops(config("encoder_decoder").model, 20, 5)
  # Cross-attention scores: 5 queries x 20 keys; its key/value projections run on 20 positions.
  assert encdec["decoder/cross_attention_scores"] == m.num_layers * 2 * 2 * 5 * 20 * 128
  with pytest.raises(ConfigError, match="vocab_size is 0"):
    flops.forward_flops(config("decoder", vocab_size=0).model, 10)


def test_peaks():
  assert flops.published_peak("TPU v4") == 275e12
  assert flops.published_peak("NVIDIA H100 80GB HBM3", "float32") == 494e12
  assert flops.published_peak("NVIDIA L40S") == 362e12  # not taken for an L4
  assert flops.published_peak("cpu") is None
  measured = flops.measured_peak("float32", size=256, repeats=3)
  assert 1e8 < measured < 1e14
  assert flops.measured_peak("float32", size=256, repeats=3) == measured  # cached
  cfg = config("decoder")
  peak, source = flops.peak_flops(ExperimentConfig.from_config_dict(
      {**cfg.to_dict(), "train": {"peak_flops": 5e11}}))
  assert (peak, source) == (5e11, "config")
