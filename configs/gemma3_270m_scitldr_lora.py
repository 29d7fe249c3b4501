"""SciTLDR summarization: LoRA on Gemma 3 270M ("<abstract>\\nTL;DR: " followed by the summary,
the loss on the summary only), greedy summaries scored with ROUGE-1/2/L (rouge-score, stemming)
against every reference of the split.

  python -m research.train --config=configs/gemma3_270m_scitldr_lora.py --workdir=runs/tldr_lora
  python -m research.evaluate --workdir=runs/tldr_lora --split="test[:100]"

Measured: not yet (see the README's Gemma table).
"""

from research.config import derive


def get_config():
  config = derive(__file__, "gemma3_270m_spa_eng_lora.py")
  config.task.update(name="scitldr", max_input_len=0, max_target_len=48, eval_examples=16,
                     eval_batch_size=8)
  config.data.update(seq_len=352, batch_size=4, eval_split="validation")
  config.train.update(steps=120, eval_batch_size=4)
  # bf16 matmul operands where products in bf16 are native (1.6x faster steps on Zen 5 than
  # float32: 3-step timing, shared cores); float32 elsewhere.
  config.model.matmul_dtype = "auto"
  return config
