"""T5-base shape (v1.0: 223M parameters) for a TPU v5e-16 slice (v5e:4x4): span corruption.

12 + 12 layers, width 768, 12 heads of 64, ReLU MLP 3072, T5's bucketed relative position bias,
pre-RMSNorm, no biases, tied embeddings, vocabulary 32,128; 512 input tokens, 114 targets
(15% noise, mean span 3), 8 sequences per chip (128 in all); fsdp over all 16 chips, scanned
layers, full rematerialisation, bf16 matmul operands.

  python -m research.aot --config=configs/scale/t5_base.py --topology=v5e:4x4

Data as configs/scale/gpt2_small.py with a 32,000-piece SentencePiece vocabulary (+ 100
sentinels, inside the 32,128 rows).
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
      family="encoder_decoder", vocab_size=32128, num_layers=12, num_decoder_layers=12,
      num_heads=12, head_dim=64, embed_dim=768, mlp_dim=3072, max_len=512, position="relative",
      relative_buckets=32, relative_max_distance=128, norm="rmsnorm", norm_eps=1e-6,
      norm_position="pre", mlp_activation="relu", use_bias=False, dropout_rate=0.1,
      tie_embeddings=True, scale_attention=False, scale_tied_logits=True, matmul_dtype="auto",
      scan_layers=True, remat="full")
  config.objective.update(name="span_corruption", noise_density=0.15, mean_span_length=3.0)
  config.optimizer.update(learning_rate=1e-2, end_learning_rate=1e-3, warmup_steps=10_000,
                          schedule="cosine", b1=0.9, b2=0.99, weight_decay=0.0)
  config.data.update(dataset="c4", tokenizer="sentencepiece", vocab_size=32000, seq_len=512,
                     batch_size=128, packing="stream")
  config.train.update(steps=524_288, eval_every=10_000, eval_batches=20,
                      checkpoint_every=2000, log_every=100)
  config.mesh.update(data=1, fsdp=-1, tensor=1)
  return config
