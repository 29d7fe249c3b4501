"""Spanish -> English with a GPT-style decoder from scratch, as a prompt:
"Spanish: <es>\nEnglish: " followed by the translation; loss only on the translation.
Sizes and training as configs/spa_eng_t5.py (6 decoder layers for its 3 + 3).

  python -m research.train --config=configs/spa_eng_gpt.py --workdir=runs/spa_eng_gpt
  python -m research.evaluate --workdir=runs/spa_eng_gpt --split=test
"""

from research.config import derive


def get_config():
  config = derive(__file__, "spa_eng_t5.py")
  config.model.update(family="decoder", num_layers=6, num_decoder_layers=0, position="rope",
                      max_len=64)
  config.data.seq_len = 56  # prompt (template + up to 24 source tokens) + 24 target tokens
  config.train.update(steps=400, eval_every=200, checkpoint_every=200)
  return config
