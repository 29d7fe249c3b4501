"""GPT-2 small shape (124M parameters) for a TPU v5e-16 slice (v5e:4x4).

12 layers, width 768, 12 heads, MLP 3072 (GELU), learned positions, pre-LayerNorm, tied
embeddings, vocabulary 50,304 (GPT-2's 50,257 padded to a multiple of 128), sequence 1024,
8 sequences per chip (128 in all); parameters and optimizer state sharded over all 16 chips
(fsdp=16), scanned layers, matmul results saved for the backward pass and the rest recomputed
(remat="dots_saveable"), bf16 matmul operands (matmul_dtype="auto" on a TPU).

  python -m research.aot --config=configs/scale/gpt2_small.py --topology=v5e:4x4
  python -m research.train --config=configs/scale/gpt2_small.py --workdir=gs://BUCKET/gpt2_small \
      --distributed --config.data.data_dir=gs://BUCKET/tensorflow_datasets   # on the slice

Data: TFDS's c4 (en), prepared beforehand with `tfds build c4 --data_dir=...` (ArrayRecord),
a SentencePiece vocabulary of 50,257 pieces trained on its first documents, packed as a stream.

AOT figures (memory, roofline, MFU bound): docs/tpu.md.
"""

from research.config import base_config

TOPOLOGY = "v5e:4x4"
# XLA TPU options for this config, here and on the slice (research.aot sets them; set them
# for research.train): FSDP weight gathers as whole all-gathers, not windowed einsums (docs/tpu.md).
LIBTPU_INIT_ARGS = ("--xla_tpu_enable_windowed_einsum_for_all_gather=false "
                    "--xla_tpu_enable_windowed_einsum_for_reduce_scatter=false")


def get_config():
  config = base_config()
  config.model.update(
      family="decoder", vocab_size=50304, num_layers=12, num_heads=12, embed_dim=768,
      mlp_dim=3072, max_len=1024, position="learned", norm="layernorm", norm_position="pre",
      mlp_activation="gelu_tanh", use_bias=True, dropout_rate=0.0, tie_embeddings=True,
      matmul_dtype="auto", scan_layers=True, remat="dots_saveable")
  config.optimizer.update(learning_rate=6e-4, end_learning_rate=6e-5, warmup_steps=2000,
                          b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0)
  config.data.update(dataset="c4", tokenizer="sentencepiece", vocab_size=50257, seq_len=1024,
                     batch_size=128, packing="stream")
  config.train.update(steps=100_000, eval_every=5000, eval_batches=20, checkpoint_every=1000,
                      log_every=50)
  config.mesh.update(data=1, fsdp=-1, tensor=1)
  return config
