"""Arm: decoder_lm with a norm after attention and after the MLP as well as before each
(Gemma 2 / 3: x + norm(f(norm(x)))): one line apart from decoder_lm. Not among the default
arms: `python -m experiments.architecture_ablation --arms=decoder_lm,decoder_lm_post_norms
--out=OUT`."""

from research.config import derive


def get_config():
  config = derive(__file__, "decoder_lm.py")
  config.model.post_norms = True
  return config
