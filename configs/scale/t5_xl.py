"""T5-XL shape, v1.1 (2.85B parameters) for a TPU v5p-32 slice (v5p:2x2x4, 16 chips): span
corruption.

24 + 24 layers, width 2048, 32 heads of 64, gated-GELU MLP 5120, relative position bias,
pre-RMSNorm, no biases, untied output layer, vocabulary 32,128; 512 input tokens, 114 targets,
16 sequences per chip (256 in all); fsdp over all 16 chips, scanned layers, full
rematerialisation, bf16 matmul operands.

  python -m research.aot --config=configs/scale/t5_xl.py --topology=v5p:2x2x4

AOT (v5p:2x2x4, 16 chips, mesh fsdp=16; research.aot on 2 shared CPU cores, AMD EPYC Zen 5,
2026-12-02, compiled in 99 s): train step 11.34 GiB per chip of 95 GiB (parameters 0.66 GiB,
optimizer state 1.33 GiB, temporaries 9.26 GiB; XLA attention); roofline estimate >= 1061 ms per
step (HBM bandwidth-bound), MFU <= 17%; eval 3.50 GiB, decode 11.66 GiB per chip.
"""

from research.config import derive

TOPOLOGY = "v5p:2x2x4"


def get_config():
  config = derive(__file__, "t5_base.py")
  config.model.update(num_layers=24, num_decoder_layers=24, num_heads=32, head_dim=64,
                      embed_dim=2048, mlp_dim=5120, mlp_activation="geglu", dropout_rate=0.0,
                      tie_embeddings=False, scale_tied_logits=False, remat="full")
  config.data.batch_size = 256
  return config
