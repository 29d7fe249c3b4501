"""Llama 3.1 8B shape (8.0B parameters) for a TPU v5p slice of 32 chips (v5p:2x4x4, Cloud type
v5p-64).

32 layers, width 4096, 32 query heads and 8 key/value heads of 128, SwiGLU MLP 14336, RoPE base
500,000 with Llama 3.1's frequency scaling (factor 8, low 1, high 4, original 8192), pre-RMSNorm
(eps 1e-5), untied output layer, vocabulary 128,256. Sequence 8192, one sequence per chip (32
in all); fsdp over the 32 chips, scanned layers, full rematerialisation, bf16 matmul operands,
float32 master weights and AdamW state; splash attention.

  python -m research.aot --config=configs/scale/llama3_1_8b.py --topology=v5p:2x4x4

Data as configs/scale/gpt2_small.py with Llama 3's tokenizer (data.tokenizer=hf).
AOT figures: docs/tpu.md.
"""

from research.config import base_config

TOPOLOGY = "v5p:2x4x4"
# XLA TPU options for this config, here and on the slice (research.aot sets them; set them
# for research.train): FSDP weight gathers as whole all-gathers, not windowed einsums (docs/tpu.md).
LIBTPU_INIT_ARGS = ("--xla_tpu_enable_windowed_einsum_for_all_gather=false "
                    "--xla_tpu_enable_windowed_einsum_for_reduce_scatter=false")


def get_config():
  config = base_config()
  config.model.update(
      family="decoder", vocab_size=128256, num_layers=32, num_heads=32, num_kv_heads=8,
      embed_dim=4096, mlp_dim=14336, max_len=131072, position="rope", rope_base=500_000.0,
      rope_scaling="llama3", rope_scaling_factor=8.0, rope_low_freq_factor=1.0,
      rope_high_freq_factor=4.0, rope_original_max_len=8192, norm="rmsnorm", norm_eps=1e-5,
      norm_position="pre", mlp_activation="swiglu", use_bias=False, dropout_rate=0.0,
      tie_embeddings=False, matmul_dtype="auto", scan_layers=True, remat="full")
  config.optimizer.update(learning_rate=3e-4, end_learning_rate=3e-5, warmup_steps=2000,
                          b1=0.9, b2=0.95, eps=1e-5, weight_decay=0.1, clip_norm=1.0)
  config.data.update(dataset="c4", tokenizer="sentencepiece", vocab_size=128256, seq_len=8192,
                     batch_size=32, packing="stream")
  config.train.update(steps=100_000, eval_every=5000, eval_batches=10, eval_batch_size=32,
                      checkpoint_every=500, log_every=20)
  config.mesh.update(data=1, fsdp=-1, tensor=1)
  return config
