"""Extractive QA on the bundled SQuAD v1.1 subset with a BERT-style encoder from scratch:
[lead] question [eos] context-window [eos] -> start/end scores; contexts longer than a window
are read in windows of 192 tokens that overlap by 64 (doc_stride), and the best-scoring span
over all windows is the answer. Exact match and F1 use the official SQuAD v1.1 normalisation,
max over the reference answers.

  python -m research.train --config=configs/squad_bert.py --workdir=runs/squad_bert
  python -m research.evaluate --workdir=runs/squad_bert
"""

from research.config import base_config


def get_config():
  config = base_config()
  config.model.update(
      family="encoder", num_layers=4, num_heads=4, embed_dim=128, mlp_dim=512, max_len=256,
      position="rope", norm="layernorm", norm_position="pre", mlp_activation="gelu",
      use_bias=True, dropout_rate=0.1, num_token_types=2, matmul_dtype="auto")
  config.task.update(name="squad", doc_stride=64, max_answer_len=30, eval_batch_size=64)
  config.optimizer.update(learning_rate=1e-3, end_learning_rate=1e-5, warmup_steps=100,
                          weight_decay=0.01, clip_norm=1.0)
  config.data.update(tokenizer="sentencepiece", vocab_size=8000, seq_len=256, batch_size=32,
                     eval_split="validation")
  config.train.update(steps=400, eval_every=200, checkpoint_every=200, log_every=20)
  return config
