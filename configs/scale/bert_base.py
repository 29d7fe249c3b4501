"""BERT-base shape (110M parameters) for a TPU v5e-4 (v5e:2x2): masked-LM pretraining.

12 layers, width 768, 12 heads, MLP 3072 (GELU), learned positions, post-LayerNorm, token
types, vocabulary 30,522, sequence 512, 32 sequences per chip (128 in all); fsdp over the
4 chips, scanned layers, full rematerialisation, bf16 matmul operands.

  python -m research.aot --config=configs/scale/bert_base.py --topology=v5e:2x2

Data as configs/scale/gpt2_small.py, with a 30,522-piece SentencePiece vocabulary.
AOT figures (memory, roofline, MFU bound): docs/tpu.md.
"""

from research.config import base_config

TOPOLOGY = "v5e:2x2"
# XLA TPU options for this config, here and on the slice (research.aot sets them; set them
# for research.train): FSDP weight gathers as whole all-gathers, not windowed einsums (docs/tpu.md).
LIBTPU_INIT_ARGS = ("--xla_tpu_enable_windowed_einsum_for_all_gather=false "
                    "--xla_tpu_enable_windowed_einsum_for_reduce_scatter=false")


def get_config():
  config = base_config()
  config.model.update(
      family="encoder", vocab_size=30522, num_layers=12, num_heads=12, embed_dim=768,
      mlp_dim=3072, max_len=512, num_token_types=2, position="learned", norm="layernorm",
      norm_position="post", norm_eps=1e-12, mlp_activation="gelu", use_bias=True,
      dropout_rate=0.1, tie_embeddings=True, matmul_dtype="auto", scan_layers=True,
      remat="full")
  config.objective.update(name="masked_lm", mask_rate=0.15)
  config.optimizer.update(learning_rate=1e-4, end_learning_rate=0.0, warmup_steps=10_000,
                          schedule="linear", b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01)
  config.data.update(dataset="c4", tokenizer="sentencepiece", vocab_size=30522, seq_len=512,
                     batch_size=128, packing="stream")
  config.train.update(steps=1_000_000, eval_every=10_000, eval_batches=20,
                      checkpoint_every=2000, log_every=100)
  config.mesh.update(data=1, fsdp=-1, tensor=1)
  return config
