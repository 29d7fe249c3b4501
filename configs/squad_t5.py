"""Generative QA on the bundled SQuAD v1.1 subset with a T5-style encoder-decoder from scratch:
"question: ... context: ..." -> the answer text (greedy); EM/F1 as configs/squad_bert.py.

  python -m research.train --config=configs/squad_t5.py --workdir=runs/squad_t5
  python -m research.evaluate --workdir=runs/squad_t5
"""

from research.config import derive


def get_config():
  config = derive(__file__, "squad_bert.py")
  config.model.update(family="encoder_decoder", num_layers=3, num_decoder_layers=3,
                      position="relative", norm="rmsnorm", mlp_activation="relu", use_bias=False,
                      num_token_types=0)
  config.task.update(max_input_len=256, max_target_len=24)
  return config
