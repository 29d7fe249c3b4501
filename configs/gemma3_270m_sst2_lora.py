"""SST-2 sentiment: LoRA on Gemma 3 270M with a classifier head on the state of the EOS that
ends each sentence ("<bos> sentence <eos>" -> negative | positive). The adapters (rank 8, alpha
16, every attention and MLP projection) and the new head train; the base stays frozen.

  python -m research.train --config=configs/gemma3_270m_sst2_lora.py --workdir=runs/sst2_lora
  python -m research.evaluate --workdir=runs/sst2_lora

Measured: not yet (see the README's Gemma table).
"""

from research.config import derive


def get_config():
  config = derive(__file__, "sst2_gpt.py")
  config.init_from = "gemma3-270m"
  config.lora.update(rank=8, alpha=16.0, dropout=0.0)
  config.model.update(dropout_rate=0.0, matmul_dtype="auto")  # bf16 where native
  config.task.update(eval_batch_size=32)
  config.data.update(seq_len=64, batch_size=16)
  config.optimizer.update(learning_rate=5e-4, end_learning_rate=5e-5, warmup_steps=10,
                          weight_decay=0.0, clip_norm=1.0)
  config.train.update(steps=120, eval_every=0, checkpoint_every=40, log_every=10,
                      eval_batches=4, eval_batch_size=32)
  return config
