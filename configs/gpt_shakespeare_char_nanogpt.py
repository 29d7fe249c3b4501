"""nanoGPT's Tiny Shakespeare CPU recipe, reproduced choice for choice.

Trains a 4-layer, 4-head, width-128 character-level GPT (0.8M parameters) with context 64 and
batch 12 for 2000 steps: AdamW (betas 0.9/0.99), peak learning rate 1e-3 with 100 warmup steps and
cosine decay to 1e-4, weight decay 0.1 on every 2-D parameter (embeddings included), global-norm
clipping at 1.0, learned positions, no biases, exact GELU, tied embeddings, no dropout.

  python -m research.train --config=configs/gpt_shakespeare_char_nanogpt.py --workdir=runs/nanogpt

Result (2 CPU cores, 0.80M parameters): validation loss over the whole split 1.889 (seed 0) and
1.909 (seed 1), 76-84 s wall each; the PyTorch original measured 1.895-1.907 on this machine.
"""

from research.config import base_config


def get_config():
  config = base_config()
  config.model.update(
      family="decoder", num_layers=4, num_heads=4, embed_dim=128, mlp_dim=512, max_len=64,
      position="learned", norm="layernorm", norm_position="pre", mlp_activation="gelu",
      use_bias=False, dropout_rate=0.0, tie_embeddings=True)
  config.optimizer.update(
      learning_rate=1e-3, end_learning_rate=1e-4, warmup_steps=100, schedule="cosine",
      b1=0.9, b2=0.99, weight_decay=0.1, decay_rule="matrices", clip_norm=1.0)
  config.data.update(dataset="tiny_shakespeare", tokenizer="char", seq_len=64, batch_size=12)
  config.train.update(steps=2000, seed=0, eval_every=500, checkpoint_every=500, log_every=10)
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  return config
