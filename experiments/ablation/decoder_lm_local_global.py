"""Arm: decoder_lm with Gemma 3's local/global layers: three sliding-window layers (32 of the
128 positions, RoPE base 1e4) before one global layer, repeated (here once). One line apart from
decoder_lm, since local_window and local_rope_base are set with it. Not among the default arms:
`python -m experiments.architecture_ablation --arms=decoder_lm,decoder_lm_local_global
--out=OUT`."""

from research.config import derive


def get_config():
  config = derive(__file__, "decoder_lm.py")
  config.model.update(layer_pattern="LLLG", local_window=32, local_rope_base=1e4)
  return config
