"""T5-XL shape, v1.1 (2.85B parameters) for a TPU v5p-32 slice (v5p:2x2x4, 16 chips): span
corruption.

24 + 24 layers, width 2048, 32 heads of 64, gated-GELU MLP 5120, relative position bias,
pre-RMSNorm, no biases, untied output layer, vocabulary 32,128; 512 input tokens, 114 targets,
16 sequences per chip (256 in all); fsdp over all 16 chips, scanned layers, full
rematerialisation, bf16 matmul operands.

  python -m research.aot --config=configs/scale/t5_xl.py --topology=v5p:2x2x4

AOT figures (memory, roofline, MFU bound): docs/tpu.md.
"""

from research.config import derive

TOPOLOGY = "v5p:2x2x4"
# XLA TPU options for this config, here and on the slice (research.aot sets them; set them
# for research.train): FSDP weight gathers as whole all-gathers, not windowed einsums (docs/tpu.md).
LIBTPU_INIT_ARGS = ("--xla_tpu_enable_windowed_einsum_for_all_gather=false "
                    "--xla_tpu_enable_windowed_einsum_for_reduce_scatter=false")


def get_config():
  config = derive(__file__, "t5_base.py")
  config.model.update(num_layers=24, num_decoder_layers=24, num_heads=32, head_dim=64,
                      embed_dim=2048, mlp_dim=5120, mlp_activation="geglu", dropout_rate=0.0,
                      tie_embeddings=False, scale_tied_logits=False, remat="full")
  config.data.batch_size = 256
  return config
