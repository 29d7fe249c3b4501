"""English -> Spanish: LoRA on Gemma 3 270M, as configs/gemma3_270m_spa_eng_lora.py the other way:
"English: <en>\\nSpanish: " followed by the translation (the bundled pairs, task eng_spa), the
loss on the Spanish only.

  python -m research.train --config=configs/gemma3_270m_eng_spa_lora.py --workdir=runs/en_es_lora
  python -m research.evaluate --workdir=runs/en_es_lora --split="test[:200]"

Measured: not yet (see the README's Gemma table).
"""

from research.config import derive


def get_config():
  config = derive(__file__, "gemma3_270m_spa_eng_lora.py")
  config.task.name = "eng_spa"
  # bf16 matmul operands where products in bf16 are native (1.6x faster steps on Zen 5 than
  # float32: 3-step timing, shared cores); float32 elsewhere.
  config.model.matmul_dtype = "auto"
  return config
