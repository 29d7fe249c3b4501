"""A Llama-2-7B-shaped decoder (6.7B parameters) for a TPU v5p slice of 64 chips (v5p:4x4x4,
Cloud type v5p-128).

32 layers, width 4096, 32 heads of 128, SwiGLU MLP 11008, RoPE, pre-RMSNorm, untied
embeddings, vocabulary 32,000, sequence 4096, one sequence per chip (64 in all); parameters and
optimizer state sharded over all 64 chips (fsdp=64), scanned layers, full rematerialisation,
bf16 matmul operands, float32 master weights and AdamW state.

  python -m research.aot --config=configs/scale/llama2_7b.py --topology=v5p:4x4x4

Data as configs/scale/gpt2_small.py with a 32,000-piece SentencePiece vocabulary.
AOT (v5p:4x4x4, 64 chips, mesh fsdp=64; research.aot on 2 shared CPU cores, AMD EPYC Zen 5,
2026-12-02, compiled in 302 s): train step 7.72 GiB per chip of 95 GiB (parameters 0.39 GiB,
optimizer state 0.79 GiB, temporaries 6.47 GiB; splash attention (Pallas kernels)); roofline
estimate >= 444 ms per step (compute-bound), MFU <= 93%; eval 1.89 GiB, decode 9.42 GiB per chip.
"""

from research.config import base_config

TOPOLOGY = "v5p:4x4x4"


def get_config():
  config = base_config()
  config.model.update(
      family="decoder", vocab_size=32000, num_layers=32, num_heads=32, embed_dim=4096,
      mlp_dim=11008, max_len=4096, position="rope", norm="rmsnorm", norm_eps=1e-5,
      norm_position="pre", mlp_activation="swiglu", use_bias=False, dropout_rate=0.0,
      tie_embeddings=False, matmul_dtype="auto", scan_layers=True, remat="full")
  config.optimizer.update(learning_rate=3e-4, end_learning_rate=3e-5, warmup_steps=2000,
                          b1=0.9, b2=0.95, eps=1e-5, weight_decay=0.1, clip_norm=1.0)
  config.data.update(dataset="c4", tokenizer="sentencepiece", vocab_size=32000, seq_len=4096,
                     batch_size=64, packing="stream")
  config.train.update(steps=100_000, eval_every=5000, eval_batches=10, eval_batch_size=64,
                      checkpoint_every=500, log_every=20)
  config.mesh.update(data=1, fsdp=-1, tensor=1)
  return config
