"""Arm: encoder-decoder + span corruption (T5's denoising baseline): the baseline itself."""

from research.config import derive


def get_config():
  return derive(__file__, "baseline.py")
