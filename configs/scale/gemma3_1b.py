"""Gemma 3 1B shape (text decoder, 1.0B parameters) for a TPU v5e slice of 16 chips (v5e:4x4,
Cloud type v5litepod-16).

26 layers, width 1152, 4 query heads and 1 key/value head of 256, GeGLU MLP 6912 (gelu-tanh
gate), vocabulary 262,144 (tied), RMSNorm (eps 1e-6, scale 1 + w) before and after each
sub-layer, RMS norms of each query and key head, embeddings scaled by sqrt(width), logits scaled
by 256**-0.5; five local layers (sliding window 1024, RoPE base 1e4) to each global one (RoPE
base 1e6). Sequence 4096, one sequence per chip (16 in all): the (tokens, 262,144) float32
logits and their gradient are most of a chip's memory. fsdp over the 16 chips, layers scanned
in groups of six (26 = 4 x 6 + 2 unscanned), full rematerialisation, bf16 matmul operands;
splash attention (the local layers with their window).

  python -m research.aot --config=configs/scale/gemma3_1b.py --topology=v5e:4x4

Data as configs/scale/gpt2_small.py (here with Gemma's 262,144-piece vocabulary).
On a v6e:4x4 the same step is HBM-bound (9.14 of 32 GiB per chip; roofline 68 ms: compute 33,
HBM 68; MFU bound 42%): a v6e multiplies 560 FLOPs per byte of HBM, a v5e 240, and this model's
float32 logits and activations need more bytes per FLOP than that. AOT figures: docs/tpu.md.
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
      family="decoder", vocab_size=262144, num_layers=26, num_heads=4, num_kv_heads=1,
      head_dim=256, embed_dim=1152, mlp_dim=6912, max_len=32768, position="rope",
      rope_base=1_000_000.0, norm="rmsnorm", norm_eps=1e-6, norm_position="pre",
      mlp_activation="geglu", use_bias=False, dropout_rate=0.0, tie_embeddings=True,
      qk_norm=True, post_norms=True, scale_embeddings=True, norm_scale_plus_one=True,
      query_pre_attn_scalar=256.0, layer_pattern="LLLLLG", local_window=1024,
      local_rope_base=10_000.0, matmul_dtype="auto", scan_layers=True, remat="full",
      attention="auto")
  config.optimizer.update(learning_rate=3e-4, end_learning_rate=3e-5, warmup_steps=2000,
                          b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0)
  config.data.update(dataset="c4", tokenizer="sentencepiece", vocab_size=262144, seq_len=4096,
                     batch_size=16, packing="stream")
  config.train.update(steps=100_000, eval_every=5000, eval_batches=10, checkpoint_every=500,
                      log_every=20)
  config.mesh.update(data=1, fsdp=-1, tensor=1)
  return config
