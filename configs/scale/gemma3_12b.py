"""Gemma 3 12B shape (text decoder, 11.8B parameters) for a TPU v5p slice of 32 chips
(v5p:2x4x4, Cloud type v5p-64).

48 layers, width 3840, 16 query heads and 8 key/value heads of 256, GeGLU MLP 15360, global
layers' RoPE scaled linearly by 8; otherwise as configs/scale/gemma3_1b.py. Sequence 4096, 2
sequences per chip (64 in all); fsdp over the 32 chips, layers scanned in groups of six
(48 = 8 x 6), full rematerialisation, bf16 matmul operands; splash attention.

  python -m research.aot --config=configs/scale/gemma3_12b.py --topology=v5p:2x4x4

AOT figures: docs/tpu.md.
"""

from research.config import derive

TOPOLOGY = "v5p:2x4x4"
# XLA TPU options for this config, here and on the slice (research.aot sets them; set them
# for research.train): FSDP weight gathers as whole all-gathers, not windowed einsums (docs/tpu.md).
LIBTPU_INIT_ARGS = ("--xla_tpu_enable_windowed_einsum_for_all_gather=false "
                    "--xla_tpu_enable_windowed_einsum_for_reduce_scatter=false")


def get_config():
  config = derive(__file__, "gemma3_1b.py")
  config.model.update(num_layers=48, embed_dim=3840, num_heads=16, num_kv_heads=8, head_dim=256,
                      mlp_dim=15360, rope_scaling="linear", rope_scaling_factor=8.0)
  config.data.batch_size = 64
  return config
