"""SST-2 as text-to-text with a T5-style encoder-decoder from scratch: the decoder writes
"positive" or "negative"; accuracy compares the greedy output with the label word.

2 + 2 layers, 4 heads, width 128, relative position bias, RMSNorm, ReLU (T5 v1.0 shape).

  python -m research.train --config=configs/sst2_t5.py --workdir=runs/sst2_t5
  python -m research.evaluate --workdir=runs/sst2_t5
"""

from research.config import derive


def get_config():
  config = derive(__file__, "sst2_bert.py")
  config.model.update(family="encoder_decoder", num_layers=2, num_decoder_layers=2,
                      position="relative", norm="rmsnorm", mlp_activation="relu", use_bias=False)
  config.task.update(max_target_len=4)
  config.train.update(steps=400, eval_every=200, checkpoint_every=200)
  return config
