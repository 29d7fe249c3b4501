"""Spanish -> English translation with a T5-style encoder-decoder trained from scratch.

3 + 3 layers, 4 heads, width 256, ReLU MLP 1024, RMSNorm, relative position bias, tied
embeddings, matmul_dtype="auto" (bf16 matmul operands where the hardware has native bf16
products, as on the AMX CPU of the figures below; float32 weights, activations and accumulation); one
SentencePiece vocabulary of 8000 pieces for both languages; sentences cut to 24 tokens (a
handful of the longest pairs lose their end). Evaluation decodes with beam search (4 beams, length penalty 0.6) and scores sacrebleu
BLEU on the test split.

  python -m research.train --config=configs/spa_eng_t5.py --workdir=runs/spa_eng_t5
  python -m research.evaluate --workdir=runs/spa_eng_t5 --split=test

Result: see the README results table.
"""

from research.config import base_config


def get_config():
  config = base_config()
  config.model.update(
      family="encoder_decoder", num_layers=3, num_decoder_layers=3, num_heads=4, embed_dim=256,
      mlp_dim=1024, max_len=64, position="relative", norm="rmsnorm", norm_position="pre",
      mlp_activation="relu", use_bias=False, dropout_rate=0.1, tie_embeddings=True,
      matmul_dtype="auto")
  config.task.update(name="spa_eng", max_input_len=24, max_target_len=24, decoding="beam",
                     beam_size=4, length_penalty=0.6, eval_examples=500, eval_batch_size=128)
  config.optimizer.update(learning_rate=2e-3, end_learning_rate=2e-5, warmup_steps=200,
                          weight_decay=0.01, clip_norm=1.0)
  config.data.update(tokenizer="sentencepiece", vocab_size=8000, seq_len=24, batch_size=64,
                     eval_split="validation")
  config.train.update(steps=2000, eval_every=1000, checkpoint_every=500, log_every=20)
  return config
