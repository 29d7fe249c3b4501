"""Gemma 3 4B shape (text decoder, 3.9B parameters) for a TPU v5p slice of 16 chips
(v5p:2x2x4, Cloud type v5p-32).

34 layers, width 2560, 8 query heads and 4 key/value heads of 256, GeGLU MLP 10240, global
layers' RoPE scaled linearly by 8; otherwise as configs/scale/gemma3_1b.py. Sequence 4096, 2
sequences per chip (32 in all); fsdp over the 16 chips, layers scanned in groups of six
(34 = 5 x 6 + 4 unscanned), full rematerialisation, bf16 matmul operands; splash attention.

  python -m research.aot --config=configs/scale/gemma3_4b.py --topology=v5p:2x2x4

AOT figures: docs/tpu.md.
"""

from research.config import derive

TOPOLOGY = "v5p:2x2x4"
# XLA TPU options for this config, here and on the slice (research.aot sets them; set them
# for research.train): FSDP weight gathers as whole all-gathers, not windowed einsums (docs/tpu.md).
LIBTPU_INIT_ARGS = ("--xla_tpu_enable_windowed_einsum_for_all_gather=false "
                    "--xla_tpu_enable_windowed_einsum_for_reduce_scatter=false")


def get_config():
  config = derive(__file__, "gemma3_1b.py")
  config.model.update(num_layers=34, embed_dim=2560, num_heads=8, num_kv_heads=4, head_dim=256,
                      mlp_dim=10240, rope_scaling="linear", rope_scaling_factor=8.0)
  config.data.batch_size = 32
  return config
