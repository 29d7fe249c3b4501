"""SST-2 sentiment with a BERT-style encoder trained from scratch: pooled first token -> classifier.

4 layers, 4 heads, width 128, pre-norm, rotary positions, GELU; a SentencePiece vocabulary of
8000 pieces trained on the SST-2 training sentences; sentences cut to 64 tokens.

  python -m research.train --config=configs/sst2_bert.py --workdir=runs/sst2_bert
  python -m research.evaluate --workdir=runs/sst2_bert          # accuracy on the dev split

Fine-tuning a pretrained encoder instead (its architecture and tokenizer replace the ones here):
  python -m research.train --config=configs/sst2_bert.py --workdir=runs/sst2_bert_mlm \\
      --config.init_from=runs/bert_mlm

Result: see the README results table (and the command that reproduces it).
"""

from research.config import base_config


def get_config():
  config = base_config()
  config.model.update(
      family="encoder", num_layers=4, num_heads=4, embed_dim=128, mlp_dim=512, max_len=64,
      position="rope", norm="layernorm", norm_position="pre", mlp_activation="gelu",
      use_bias=True, dropout_rate=0.1, tie_embeddings=True)
  config.task.update(name="sst2", eval_batch_size=128)
  config.optimizer.update(learning_rate=1e-3, end_learning_rate=1e-5, warmup_steps=100,
                          weight_decay=0.01, clip_norm=1.0)
  config.data.update(tokenizer="sentencepiece", vocab_size=8000, seq_len=64, batch_size=64,
                     eval_split="validation")
  config.train.update(steps=1500, eval_every=500, checkpoint_every=500, log_every=20)
  return config
