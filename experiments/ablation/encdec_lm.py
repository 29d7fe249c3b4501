"""Arm: encoder-decoder + LM objective (T5's "LM" row for the encoder-decoder): a random prefix
of each window goes to the encoder, the decoder writes the rest."""

from research.config import derive


def get_config():
  config = derive(__file__, "baseline.py")
  config.objective.name = "prefix_lm"
  return config
