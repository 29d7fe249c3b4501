"""Instruction following (chat) by supervised fine-tuning of a GPT-style decoder on the bundled
Alpaca subset. Chat template: "User: <instruction>[\n\n<input>]\nAssistant: <response><eos>";
the loss covers the response and its EOS only.

From scratch (6 layers, width 256, SentencePiece 8000, 256-token sequences):
  python -m research.train --config=configs/alpaca_gpt.py --workdir=runs/alpaca_gpt
  python -m research.evaluate --workdir=runs/alpaca_gpt
  python -m research.chat --workdir=runs/alpaca_gpt --prompt="Give three tips for staying healthy."
  python -m research.chat --workdir=runs/alpaca_gpt        # interactive, multi-turn
"""

from research.config import base_config


def get_config():
  config = base_config()
  config.model.update(
      family="decoder", num_layers=6, num_heads=4, embed_dim=256, mlp_dim=688, max_len=256,
      position="rope", norm="rmsnorm", norm_position="pre", mlp_activation="swiglu",
      use_bias=False, dropout_rate=0.1, tie_embeddings=True, matmul_dtype="auto")
  config.task.update(name="alpaca", max_target_len=128, eval_examples=50, eval_batch_size=50)
  config.optimizer.update(learning_rate=1e-3, end_learning_rate=1e-5, warmup_steps=100,
                          weight_decay=0.1, clip_norm=1.0)
  config.data.update(tokenizer="sentencepiece", vocab_size=8000, seq_len=256, batch_size=16,
                     eval_split="validation")
  config.train.update(steps=400, eval_every=200, checkpoint_every=200, log_every=20)
  return config
