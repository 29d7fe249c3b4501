"""Arm: encoder-only + masked LM (BERT-style; not a row of T5's Table 2): 4 bidirectional layers,
15% of characters selected. It can classify but not generate, so it has no translation score."""

from research.config import derive


def get_config():
  config = derive(__file__, "baseline.py")
  config.model.update(family="encoder", num_layers=4, mlp_dim=512)
  config.objective.update(name="masked_lm", mask_rate=0.15)
  return config
