"""Arm: decoder-only + causal LM (T5's "Language model"): 4 layers, the full-width MLP (no
cross-attention to pay for), about the baseline's parameter count."""

from research.config import derive


def get_config():
  config = derive(__file__, "baseline.py")
  config.model.update(family="decoder", num_layers=4, mlp_dim=512)
  config.objective.name = "causal_lm"
  return config
