"""GPT-2 small shape (124M parameters) for a TPU v5e-16 slice (v5e:4x4).

12 layers, width 768, 12 heads, MLP 3072 (GELU), learned positions, pre-LayerNorm, tied
embeddings, vocabulary 50,304 (GPT-2's 50,257 padded to a multiple of 128), sequence 1024,
4 sequences per chip (64 in all); parameters and optimizer state sharded over all 16 chips
(fsdp=16), scanned layers, bf16 matmul operands (matmul_dtype="auto" on a TPU).

  python -m research.aot --config=configs/scale/gpt2_small.py --topology=v5e:4x4
  python -m research.train --config=configs/scale/gpt2_small.py --workdir=gs://BUCKET/gpt2_small \
      --distributed --config.data.data_dir=gs://BUCKET/tensorflow_datasets   # on the slice

Data: TFDS's c4 (en), prepared beforehand with `tfds build c4 --data_dir=...` (ArrayRecord),
a SentencePiece vocabulary of 50,257 pieces trained on its first documents, packed as a stream.

AOT (v5e:4x4, 16 chips, mesh fsdp=16; research.aot on 2 shared CPU cores, AMD EPYC Zen 5,
2026-12-02, compiled in 111 s): train step 6.82 GiB per chip of 16 GiB (parameters 0.03 GiB,
optimizer state 0.06 GiB, temporaries 6.68 GiB; splash attention (Pallas kernels)); roofline
estimate >= 239 ms per step (HBM bandwidth-bound), MFU <= 7%; eval 2.37 GiB, decode 0.65 GiB per
chip.
"""

from research.config import base_config

TOPOLOGY = "v5e:4x4"


def get_config():
  config = base_config()
  config.model.update(
      family="decoder", vocab_size=50304, num_layers=12, num_heads=12, embed_dim=768,
      mlp_dim=3072, max_len=1024, position="learned", norm="layernorm", norm_position="pre",
      mlp_activation="gelu_tanh", use_bias=True, dropout_rate=0.0, tie_embeddings=True,
      matmul_dtype="auto", scan_layers=True, remat="none")
  config.optimizer.update(learning_rate=6e-4, end_learning_rate=6e-5, warmup_steps=2000,
                          b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0)
  config.data.update(dataset="c4", tokenizer="sentencepiece", vocab_size=50257, seq_len=1024,
                     batch_size=64, packing="stream")
  config.train.update(steps=100_000, eval_every=5000, eval_batches=20, checkpoint_every=1000,
                      log_every=50)
  config.mesh.update(data=1, fsdp=-1, tensor=1)
  return config
