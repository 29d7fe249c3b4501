"""SST-2 with a GPT-style decoder from scratch: the hidden state at the EOS that ends each
sentence -> classifier. Everything else is configs/sst2_bert.py.

  python -m research.train --config=configs/sst2_gpt.py --workdir=runs/sst2_gpt
  python -m research.evaluate --workdir=runs/sst2_gpt
"""

from research.config import derive


def get_config():
  config = derive(__file__, "sst2_bert.py")
  config.model.family = "decoder"
  config.train.update(steps=400, eval_every=200, checkpoint_every=200)
  return config
