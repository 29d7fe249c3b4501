"""Baseline of the architecture ablation (experiments/architecture_ablation.py): a T5-style
encoder-decoder pretrained with span corruption.

What it pretrains on: in the runner, the ablation corpus with its shared 4096-piece SentencePiece
vocabulary (experiments/ablation_corpus.py, built once in OUT/corpus): the runner replaces this
file's data settings with `ablation_corpus.pretrain_overrides(OUT/corpus)` and copies the shared
vocabulary into every pretraining workdir before it is used, so that every arm reads the same
text as the same pieces. Those overrides are the source of truth; the data settings below
(character-level Tiny Shakespeare) are what a plain research.train run of this file uses, and
what the runner's --tiny keeps.

Every arm is this file plus the few lines its own file changes (`python -m research.config_diff
experiments/ablation/baseline.py experiments/ablation/<arm>.py` prints them). The blocks are the
same in every arm, so only their composition and the objective differ: pre-norm RMSNorm, rotary
positions (which all three families and all their attention masks support), a GELU MLP, no
biases, tied embeddings, float32 matmuls (bfloat16 operands measured no faster at these widths
on the 2-core CPU).

Sizes are matched in parameters, as T5's "P" arms are (Raffel et al. 2020, Table 2): 2 encoder
+ 2 decoder layers here against 4 layers in the decoder-only and encoder-only arms. A decoder
layer of an encoder-decoder also holds cross-attention (4 E^2 weights), so this baseline's MLP
is 384 wide instead of 512: 2 (4E^2 + 2E*384) + 2 (8E^2 + 2E*384) = 4 (4E^2 + 2E*512) = 786,432
weights in the blocks' matrices of every arm at E = 128. Beyond those: the token embeddings
(4096 x E = 0.52M, tied, in the shared vocabulary, which holds every arm's special tokens; 68
characters + 100 sentinels alone), the norms, and the encoder-only arm's MLM head (E x E).

The runner sets train.steps from the FLOP budget (steps = budget / training FLOPs per step),
the seed, and how often to evaluate and checkpoint. Alone it trains like any config (on
characters, as said above):
  python -m research.train --config=experiments/ablation/baseline.py --workdir=runs/ablation_base
Results: OUT/report.md of `python -m experiments.architecture_ablation --out=OUT`.
"""

from research.config import base_config


def get_config():
  config = base_config()
  config.model.update(
      family="encoder_decoder", num_layers=2, num_decoder_layers=2, num_heads=4, embed_dim=128,
      mlp_dim=384, max_len=128, position="rope", norm="rmsnorm", norm_position="pre",
      mlp_activation="gelu", use_bias=False, dropout_rate=0.0, tie_embeddings=True)
  config.objective.update(name="span_corruption", noise_density=0.15, mean_span_length=3.0)
  config.optimizer.update(learning_rate=2e-3, end_learning_rate=1e-4, warmup_steps=100,
                          schedule="cosine", weight_decay=0.1, decay_rule="matrices_no_embed",
                          clip_norm=1.0)
  # Four sequences a step: at these budgets the models are far from their data limit, and more,
  # smaller steps buy more loss per FLOP. decoder_lm at 3e12 FLOPs, seed 0, validation loss at
  # batch 16 / 8 / 4 / 2, the best of the peak rates tried at each (2-3 of 1e-3 ... 8e-3):
  # 6.04 / 5.45 / 5.25 / 5.29, all but 16 at 2e-3. Its spa->eng BLEU (seeds 0, 1): 1.15, 2.72 at
  # batch 16 against 4.57, 4.57 at batch 4 (Intel Xeon, AVX-512, 2 cores; 2026-12-03).
  config.data.update(dataset="tiny_shakespeare", tokenizer="char", seq_len=128, batch_size=4)
  config.train.update(steps=2000, seed=0, log_every=10, eval_every=500, eval_batch_size=64,
                      checkpoint_every=500)
  return config
