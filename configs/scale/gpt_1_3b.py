"""A 1.3B-parameter decoder (GPT-3 XL shape) for a TPU v5e-16 slice (v5e:4x4).

24 layers, width 2048, 16 heads, MLP 8192, RoPE, pre-RMSNorm, GELU, tied embeddings,
vocabulary 50,304, sequence 2048, 4 sequences per chip (64 in all); fsdp over all 16 chips,
scanned layers, full rematerialisation, bf16 matmul operands.

  python -m research.aot --config=configs/scale/gpt_1_3b.py --topology=v5e:4x4

Data as configs/scale/gpt2_small.py.
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
      family="decoder", vocab_size=50304, num_layers=24, num_heads=16, embed_dim=2048,
      mlp_dim=8192, max_len=2048, position="rope", norm="rmsnorm", norm_position="pre",
      mlp_activation="gelu_tanh", use_bias=False, dropout_rate=0.0, tie_embeddings=True,
      matmul_dtype="auto", scan_layers=True, remat="full")
  config.optimizer.update(learning_rate=2e-4, end_learning_rate=2e-5, warmup_steps=2000,
                          b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0)
  config.data.update(dataset="c4", tokenizer="sentencepiece", vocab_size=50257, seq_len=2048,
                     batch_size=64, packing="stream")
  config.train.update(steps=100_000, eval_every=5000, eval_batches=20, checkpoint_every=1000,
                      log_every=50)
  config.mesh.update(data=1, fsdp=-1, tensor=1)
  return config
