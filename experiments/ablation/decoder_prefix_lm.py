"""Arm: decoder-only + prefix LM (T5's "Prefix LM"): the decoder_lm arm's model, attention
bidirectional over a random prefix of each window and causal after it, loss on the continuation."""

from research.config import derive


def get_config():
  config = derive(__file__, "baseline.py")
  config.model.update(family="decoder", num_layers=4, mlp_dim=512)
  config.objective.name = "prefix_lm"
  return config
