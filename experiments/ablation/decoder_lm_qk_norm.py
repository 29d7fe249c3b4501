"""Arm: decoder_lm with RMS-norm of each query and key head before RoPE (Qwen 3, Gemma 3): one
line apart from decoder_lm (2 x 32 scale parameters a layer). Not among the default arms:
`python -m experiments.architecture_ablation --arms=decoder_lm,decoder_lm_qk_norm --out=OUT`."""

from research.config import derive


def get_config():
  config = derive(__file__, "decoder_lm.py")
  config.model.qk_norm = True
  return config
