"""SQuAD question answering: LoRA on Gemma 3 270M, generative ("question: ...\\ncontext: ...\\n
answer: " followed by the answer text, the loss on the answer only), greedy answers scored with
SQuAD's exact match and F1 on the bundled validation split (2 articles, no context shared with
train).

  python -m research.train --config=configs/gemma3_270m_squad_lora.py --workdir=runs/squad_lora
  python -m research.evaluate --workdir=runs/squad_lora --split="validation[:200]"

Measured: not yet (see the README's Gemma table).
"""

from research.config import derive


def get_config():
  config = derive(__file__, "gemma3_270m_spa_eng_lora.py")
  config.task.update(name="squad", max_input_len=0, max_target_len=24, eval_examples=32,
                     eval_batch_size=8)
  config.data.update(seq_len=320, batch_size=4, eval_split="validation")
  config.train.update(steps=120, eval_batch_size=4)
  # bf16 matmul operands where products in bf16 are native (1.6x faster steps on Zen 5 than
  # float32: 3-step timing, shared cores); float32 elsewhere.
  config.model.matmul_dtype = "auto"
  return config
