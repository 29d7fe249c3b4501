"""A Llama-2-7B-shaped decoder (6.7B parameters) for a TPU v5p slice of 64 chips (v5p:4x4x4,
Cloud type v5p-128).

32 layers, width 4096, 32 heads of 128, SwiGLU MLP 11008, RoPE, pre-RMSNorm, untied
embeddings, vocabulary 32,000, sequence 4096, one sequence per chip (64 in all); parameters and
optimizer state sharded over all 64 chips (fsdp=64), scanned layers, full rematerialisation,
bf16 matmul operands, float32 master weights and AdamW state.

  python -m research.aot --config=configs/scale/llama2_7b.py --topology=v5p:4x4x4

Data as configs/scale/gpt2_small.py with a 32,000-piece SentencePiece vocabulary.
AOT figures (memory, roofline, MFU bound): docs/tpu.md.
"""

from research.config import base_config

TOPOLOGY = "v5p:4x4x4"
# XLA TPU options for this config, here and on the slice (research.aot sets them; set them
# for research.train): FSDP weight gathers as whole all-gathers, not windowed einsums (docs/tpu.md).
LIBTPU_INIT_ARGS = ("--xla_tpu_enable_windowed_einsum_for_all_gather=false "
                    "--xla_tpu_enable_windowed_einsum_for_reduce_scatter=false")


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
