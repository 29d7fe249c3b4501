"""Gemma 3 27B shape (text decoder, 27.0B parameters) for a TPU v5p slice of 64 chips
(v5p:4x4x4, Cloud type v5p-128).

62 layers, width 5376, 32 query heads and 16 key/value heads of 128, GeGLU MLP 21504, vocabulary
262,144 (tied), RMSNorm (eps 1e-6, scale 1 + w) before and after each sub-layer, q/k norms,
embeddings scaled by sqrt(width), logits scaled by 168**-0.5 (query_pre_attn_scalar); five local
layers (sliding window 1024, RoPE base 1e4) to each global one (RoPE base 1e6, linear scaling 8).
Sequence 4096, 2 sequences per chip (128 in all); fsdp over all 64 chips, layers scanned in
groups of six (62 = 10 x 6 + 2 unscanned), full rematerialisation, bf16 matmul operands, float32
master weights and AdamW state; splash attention (the local layers with their window).

  python -m research.aot --config=configs/scale/gemma3_27b.py --topology=v5p:4x4x4

Data as configs/scale/gpt2_small.py (here with Gemma's 262,144-piece vocabulary:
data.tokenizer=hf and its tokenizer.json, or a SentencePiece model of that size).
AOT figures: docs/tpu.md.
"""

from research.config import derive

TOPOLOGY = "v5p:4x4x4"
# XLA TPU options for this config, here and on the slice (research.aot sets them; set them
# for research.train): FSDP weight gathers as whole all-gathers, not windowed einsums (docs/tpu.md).
LIBTPU_INIT_ARGS = ("--xla_tpu_enable_windowed_einsum_for_all_gather=false "
                    "--xla_tpu_enable_windowed_einsum_for_reduce_scatter=false")


def get_config():
  config = derive(__file__, "gemma3_1b.py")
  config.model.update(num_layers=62, embed_dim=5376, num_heads=32, num_kv_heads=16, head_dim=128,
                      mlp_dim=21504, query_pre_attn_scalar=168.0, rope_scaling="linear",
                      rope_scaling_factor=8.0)
  config.data.batch_size = 128
  return config
