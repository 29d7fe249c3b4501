"""SciTLDR summarization (paper abstract -> one-sentence TLDR) with a T5-style encoder-decoder
from scratch; ROUGE-1/2/L (rouge-score, stemming) against every reference TLDR of the test split.

3 + 3 layers, width 256; SentencePiece 8000; abstracts cut to 256 tokens, TLDRs to 48.

  python -m research.train --config=configs/scitldr_t5.py --workdir=runs/scitldr_t5
  python -m research.evaluate --workdir=runs/scitldr_t5 --split=test
"""

from research.config import base_config


def get_config():
  config = base_config()
  config.model.update(
      family="encoder_decoder", num_layers=3, num_decoder_layers=3, num_heads=4, embed_dim=256,
      mlp_dim=1024, max_len=256, position="relative", norm="rmsnorm", norm_position="pre",
      mlp_activation="relu", use_bias=False, dropout_rate=0.1, tie_embeddings=True,
      matmul_dtype="auto")
  config.task.update(name="scitldr", max_input_len=256, max_target_len=48, decoding="greedy",
                     eval_examples=200, eval_batch_size=64)
  config.optimizer.update(learning_rate=1e-3, end_learning_rate=1e-5, warmup_steps=100,
                          weight_decay=0.01, clip_norm=1.0)
  config.data.update(tokenizer="sentencepiece", vocab_size=8000, seq_len=256, batch_size=16,
                     eval_split="validation")
  config.train.update(steps=300, eval_every=300, checkpoint_every=150, log_every=20)
  return config
