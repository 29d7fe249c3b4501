"""BERT-large shape (335M parameters) for a TPU v5e-16 slice (v5e:4x4): masked-LM pretraining.

24 layers, width 1024, 16 heads, MLP 4096, otherwise as configs/scale/bert_base.py; sequence 512,
16 sequences per chip (256 in all); fsdp over all 16 chips, bf16 matmul operands.

  python -m research.aot --config=configs/scale/bert_large.py --topology=v5e:4x4

AOT figures (memory, roofline, MFU bound): docs/tpu.md.
"""

from research.config import derive

TOPOLOGY = "v5e:4x4"
# XLA TPU options for this config, here and on the slice (research.aot sets them; set them
# for research.train): FSDP weight gathers as whole all-gathers, not windowed einsums (docs/tpu.md).
LIBTPU_INIT_ARGS = ("--xla_tpu_enable_windowed_einsum_for_all_gather=false "
                    "--xla_tpu_enable_windowed_einsum_for_reduce_scatter=false")


def get_config():
  config = derive(__file__, "bert_base.py")
  config.model.update(num_layers=24, num_heads=16, embed_dim=1024, mlp_dim=4096)
  config.data.batch_size = 256
  return config
