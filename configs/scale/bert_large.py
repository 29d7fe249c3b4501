"""BERT-large shape (335M parameters) for a TPU v5e-16 slice (v5e:4x4): masked-LM pretraining.

24 layers, width 1024, 16 heads, MLP 4096, otherwise as configs/scale/bert_base.py; sequence 512,
16 sequences per chip (256 in all); fsdp over all 16 chips, bf16 matmul operands.

  python -m research.aot --config=configs/scale/bert_large.py --topology=v5e:4x4

AOT (v5e:4x4, 16 chips, mesh fsdp=16; research.aot on 2 shared CPU cores, AMD EPYC Zen 5,
2026-12-02, compiled in 160 s): train step 3.86 GiB per chip of 16 GiB (parameters 0.08 GiB,
optimizer state 0.16 GiB, temporaries 3.50 GiB; XLA attention); roofline estimate >= 1261 ms per
step (HBM bandwidth-bound), MFU <= 7%; eval 2.99 GiB per chip.
"""

from research.config import derive

TOPOLOGY = "v5e:4x4"


def get_config():
  config = derive(__file__, "bert_base.py")
  config.model.update(num_layers=24, num_heads=16, embed_dim=1024, mlp_dim=4096)
  config.data.batch_size = 256
  return config
