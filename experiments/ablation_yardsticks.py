"""Two yardsticks of a pretrained workdir that mean the same thing in every family.

  linear_probe(workdir)   SST-2 dev accuracy of a logistic regression on frozen features:
                          the mean over a sentence's tokens of the final hidden states (the
                          encoder's for an encoder or an encoder-decoder, the decoder's for a
                          decoder), the regression fitted on a seeded subset of SST-2 train;
  bits_per_char(workdir)  the held-out text's negative log-likelihood in bits divided by its
                          characters, so tokenizers of any granularity compare; for the arms
                          that predict text left to right (LEFT_TO_RIGHT).

Bits per character score every token of a stream [EOS] doc1 [EOS] doc2 [EOS] ... once (each
EOS, a document's end, counts as one character, as a newline would), in windows of
data.seq_len + 1 tokens: the first window scores all its tokens, every later one scores its
second half with its first half as context. That context is a prefix in each family's own
form: causal attention for a causal LM, bidirectional attention for a prefix LM, the encoder's
input for an encoder-decoder LM, so the three score the same tokens from the same text.

  from experiments import ablation_yardsticks as y
  y.linear_probe("runs/ablation/decoder_lm/seed0/pretrain")  # {"accuracy": ..., ...}
  y.bits_per_char("runs/ablation/decoder_lm/seed0/pretrain")  # {"bits_per_char": ..., ...}

The decoder_lm arm after 200 steps on experiments/ablation_corpus.py's corpus (2026-12-02, 2
heavily shared cores): 2.706 bits per character of its 285k-character validation file (the
trainer's own eval loss, windows without overlap, gives 2.713) and a probe accuracy of 58.7%
(always "positive" scores 50.9%). On 2 idle cores (Intel Xeon, AVX-512, no AMX) each takes
~9-10 s for that arm at 3e12-1e13 FLOPs, compiled programs cached; the probe took ~18 s when
every batch was padded to the longest sentence.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from experiments import ablation_corpus
from research import models, objectives, paths, train
from research.config import ModelConfig, UserError

# (family, objective) of the arms whose model gives every next token a probability.
LEFT_TO_RIGHT = {("decoder", "causal_lm"), ("decoder", "prefix_lm"),
                 ("encoder_decoder", "prefix_lm")}


def _restore(workdir: str):
  from research.data import tokenizers  # pylint: disable=import-outside-toplevel
  config, model, params = train.restore_params(workdir)
  if config.task.name:
    raise UserError(f"{workdir} is a fine-tuning run ({config.task.name}); the yardsticks "
                    "measure a pretraining workdir")
  return config, model, params, tokenizers.load_tokenizer(epath.Path(workdir) / "tokenizer")


# ---------------------------------------------------------------------------------------------
# Linear probe
# ---------------------------------------------------------------------------------------------


class _DecoderBody(nn.Module):
  """The Decoder without its LM head: the same parameter names, hidden states (B, T, E)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens):
    return models.decoder_hidden(self, tokens)[1]


def hidden_states(model: nn.Module, params, tokens, mask):
  """Final hidden states (B, T, E) of right-padded tokens (B, T): the encoder's for an encoder
  or an encoder-decoder, the decoder's for a decoder (causal: padding after a token never
  changes it)."""
  if isinstance(model, models.Decoder):
    return _DecoderBody(model.config).apply({"params": params}, tokens)
  if isinstance(model, models.EncoderLM):
    return models.Encoder(model.config).apply({"params": params["encoder"]}, tokens,
                                              input_mask=mask)
  return model.apply({"params": params}, tokens, input_mask=mask,
                     method=models.EncoderDecoder.encode)


def sentence_features(model: nn.Module, params, tokenizer, texts: Sequence[str], max_len: int,
                      batch_size: int = 256, bucket: int = 16) -> np.ndarray:
  """Mean of each text's final hidden states over its tokens (first max_len) -> (N, E).

  The texts go through the model shortest first, each batch padded only to its longest text
  (rounded up to a multiple of `bucket`, so that a few shapes compile): most SST-2 sentences
  are a fraction of the longest one, and padding every batch to that cost ~4x the time."""
  ids = [tokenizer.encode(t)[:max_len] for t in texts]
  order = np.argsort([len(i) for i in ids], kind="stable")

  @jax.jit
  def pooled(params, tokens, mask):
    x = hidden_states(model, params, tokens, mask).astype(jnp.float32)  # (B, T, E)
    weights = mask[..., None].astype(jnp.float32)
    return (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)

  features = np.zeros((len(ids), model.config.embed_dim), np.float32)
  for start in range(0, len(ids), batch_size):
    chunk = order[start:start + batch_size]
    longest = max(1, max(len(ids[i]) for i in chunk))
    width = min(max_len, -(-longest // bucket) * bucket)
    # Every batch of full size: one compiled shape per width.
    tokens = np.full((batch_size, width), tokenizer.pad_id, np.int32)
    lengths = np.zeros(batch_size, np.int32)
    for r, i in enumerate(chunk):
      tokens[r, :len(ids[i])], lengths[r] = ids[i], len(ids[i])
    mask = np.arange(width)[None] < lengths[:, None]  # (B, T)
    features[chunk] = np.asarray(pooled(params, tokens, mask))[:len(chunk)]
  return features


def fit_logistic_regression(x: np.ndarray, y: np.ndarray, *, l2: float = 1e-3,
                            steps: int = 500, learning_rate: float = 0.05):
  """Multinomial logistic regression on features x (N, D), labels y (N,): full-batch Adam from
  zeros, a fixed number of steps (deterministic). Returns predict(x) -> labels."""
  x = jnp.asarray(x, jnp.float32)
  mean, std = x.mean(0), x.std(0) + 1e-6  # standardised: one learning rate fits any model
  num_classes = int(np.max(y)) + 1
  params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  logits = lambda p, x: ((x - mean) / std) @ p["w"] + p["b"]

  def loss(p):
    ce = optax.softmax_cross_entropy_with_integer_labels(logits(p, x), jnp.asarray(y))
    return ce.mean() + l2 * jnp.sum(p["w"] ** 2)

  tx = optax.adam(learning_rate)

  def step(carry, _):
    p, opt = carry
    updates, opt = tx.update(jax.grad(loss)(p), opt, p)
    return (optax.apply_updates(p, updates), opt), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=steps)
  return lambda x_new: np.asarray(jnp.argmax(logits(params, jnp.asarray(x_new)), -1))


def probe_accuracy(train_x, train_y, eval_x, eval_y, **kwargs) -> dict[str, float]:
  predict = fit_logistic_regression(train_x, train_y, **kwargs)
  return {"accuracy": float(np.mean(predict(eval_x) == eval_y)),
          "train_accuracy": float(np.mean(predict(train_x) == train_y))}


def linear_probe(workdir: str, train_examples: int = 8192, seed: int = 0,
                 data_root=paths.DATA_ROOT) -> dict[str, float]:
  """SST-2 dev accuracy of a logistic regression on the workdir's frozen sentence features,
  fitted on `train_examples` SST-2 training sentences drawn with `seed` (0: all 67,349)."""
  _, model, params, tokenizer = _restore(workdir)
  sst2 = lambda split: ablation_corpus.records("sst2", split, epath.Path(data_root))
  train_rows, eval_rows = sst2("train"), sst2("validation")
  if train_examples:
    order = np.random.default_rng(seed).permutation(len(train_rows))[:train_examples]
    train_rows = [train_rows[i] for i in sorted(order)]
  features = lambda rows: sentence_features(model, params, tokenizer,
                                            [r["sentence"] for r in rows], model.config.max_len)
  labels = lambda rows: np.array([r["label"] for r in rows])
  result = probe_accuracy(features(train_rows), labels(train_rows), features(eval_rows),
                          labels(eval_rows))
  return {**result, "train_examples": len(train_rows), "eval_examples": len(eval_rows)}


# ---------------------------------------------------------------------------------------------
# Bits per character
# ---------------------------------------------------------------------------------------------


def scoring_windows(num_tokens: int, seq_len: int) -> list[tuple[int, int]]:
  """(start, prefix) of the windows of seq_len + 1 tokens that score each token of a stream but
  the first exactly once: the window's tokens from `prefix` on are scored."""
  width, context = seq_len + 1, (seq_len + 1) // 2
  windows = [(0, 1)]
  start = width - context  # the next window scores tokens width, width + 1, ...
  while start + context < num_tokens:
    windows.append((start, context))
    start += width - context
  return windows


def _decoder_batch(rows: np.ndarray, prefix: np.ndarray, real: np.ndarray) -> dict:
  """rows (B, W) -> a decoder LM batch scoring tokens [prefix, W) of each row."""
  t = np.arange(rows.shape[1] - 1)[None]  # target t is token t + 1
  weights = (t + 1 >= prefix[:, None]) & real[:, 1:]
  return {"inputs": rows[:, :-1], "targets": rows[:, 1:], "weights": weights.astype(np.float32),
          "prefix_lengths": prefix.astype(np.int32)}


def _seq2seq_batch(rows: np.ndarray, prefix: np.ndarray, real: np.ndarray, pad_id: int) -> dict:
  """rows (B, W) -> the encoder gets tokens [0, prefix), the decoder writes the rest (T5
  starts decoding from the pad id, as research.objectives does)."""
  b, width = rows.shape
  enc_len = int(prefix.max())
  encoder = np.full((b, enc_len), pad_id, np.int32)
  targets = np.full((b, width - 1), pad_id, np.int32)
  weights = np.zeros((b, width - 1), np.float32)
  for r in range(b):
    p = prefix[r]
    encoder[r, :p] = rows[r, :p]
    n = int(real[r, p:].sum())
    targets[r, :n] = rows[r, p:p + n]
    weights[r, :n] = 1.0
  decoder = np.concatenate([np.full((b, 1), pad_id, np.int32), targets[:, :-1]], 1)
  return {"encoder_inputs": encoder, "encoder_mask": np.arange(enc_len)[None] < prefix[:, None],
          "decoder_inputs": decoder, "targets": targets, "weights": weights}


def text_bits(model: nn.Module, params, tokenizer, texts: Sequence[str], seq_len: int,
              prefix_lm: bool, batch_size: int = 64) -> dict[str, float]:
  """Bits of every token of [EOS] text1 [EOS] text2 [EOS] ... and the characters they spell."""
  eos = tokenizer.eos_id
  stream = np.concatenate([[eos]] + [np.append(tokenizer.encode(t), eos) for t in texts])
  stream = stream.astype(np.int32)
  family = models.family_of(model.config)
  if not family.generates:
    raise ValueError("an encoder (masked LM) gives no left-to-right probabilities")
  loss = jax.jit(lambda p, batch: objectives.LOSSES[family.name](model, p, batch))
  windows = scoring_windows(len(stream), seq_len)
  width, nats, scored = seq_len + 1, 0.0, 0.0
  padded = np.append(stream, np.full(width, tokenizer.pad_id, np.int32))
  for first in range(0, len(windows), batch_size):
    chunk = windows[first:first + batch_size]
    chunk += [(len(stream), 1)] * (batch_size - len(chunk))  # empty rows: one shape
    starts, prefix = (np.array(c) for c in zip(*chunk))
    rows = padded[np.minimum(starts, len(stream))[:, None] + np.arange(width)]  # (B, W)
    real = (starts[:, None] + np.arange(width)) < len(stream)
    if family.decoder_only:
      batch = _decoder_batch(rows, prefix, real)
      if not prefix_lm:
        del batch["prefix_lengths"]  # a causal LM reads its context causally
    else:
      batch = _seq2seq_batch(rows, prefix, real, tokenizer.pad_id)
    sums = loss(params, batch)
    nats += float(sums["loss_sum"])
    scored += float(sums["weight_sum"])
  characters = sum(len(t) for t in texts) + len(texts)
  bits = nats / math.log(2)
  return {"bits_per_char": bits / characters, "bits": bits, "characters": characters,
          "tokens": int(scored)}


def bits_per_char(workdir: str, texts: Sequence[str] | None = None,
                  batch_size: int = 64) -> dict[str, float]:
  """Bits per character of `texts` (default: the documents of the workdir's data.eval_split)
  under a left-to-right arm's model, in windows of its data.seq_len + 1 tokens."""
  config, model, params, tokenizer = _restore(workdir)
  arm = (config.model.family, config.objective.name)
  if arm not in LEFT_TO_RIGHT:
    raise UserError(f"{workdir}: a {arm[0]} trained with {arm[1]} does not predict text left to "
                    f"right; bits per character are for {sorted(LEFT_TO_RIGHT)}")
  if texts is None:
    from research.data import corpora  # pylint: disable=import-outside-toplevel
    texts = list(corpora.load_texts(config.data, config.data.eval_split))
    if config.data.dataset == "tiny_shakespeare":  # its documents are pieces of one text
      texts = ["".join(texts)]
  return text_bits(model, params, tokenizer, texts, config.data.seq_len,
                   prefix_lm=arm == ("decoder", "prefix_lm"), batch_size=batch_size)
