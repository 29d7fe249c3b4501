"""The three families, each a composition of the blocks in layers.py.

  Decoder (GPT)         tokens -> Stack(causal or prefix mask) -> LM head
  Encoder (BERT)        tokens (+ segments) -> Stack(padding mask) -> hidden states
    EncoderLM             + MLM head (transform, norm, tied projection)
    EncoderClassifier     + pooler (first token, tanh) + classifier
  EncoderDecoder (T5)   encoder Stack(padding mask) ; decoder Stack(causal mask, cross-attention)
                        -> LM head; one token embedding shared by both stacks

Everything that differs between the families is here; everything they share is in layers.py.
All models return float32 logits.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import layers
from research.config import ModelConfig

Array = jax.Array


def default_positions(tokens: Array) -> Array:
  b, t = tokens.shape
  return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))


def next_positions(module: nn.Module, tokens: Array) -> Array:
  """Decode mode: the next T cache slots of `module`'s KV cache (a counter in 'cache')."""
  index = module.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
  start = index.value
  index.value = start + tokens.shape[1]
  return start + default_positions(tokens)


class Stack(nn.Module):
  """Positions + embedding norm/dropout + `num_layers` Blocks + final norm: every family's body.

  x: token embeddings (B, T, E). Learned positions are added here; RoPE is applied inside
  attention; a T5 relative bias is computed once and shared by all layers. Post-norm models
  (BERT) normalise the embeddings; pre-norm models (GPT, T5) normalise the output.
  """

  config: ModelConfig
  num_layers: int
  has_cross_attention: bool = False
  bidirectional: bool = True  # relative-position buckets: both directions (encoder) or past only

  @nn.compact
  def __call__(self, x: Array, *, mask: Array | None, positions: Array | None = None,
               encoded: Array | None = None, cross_mask: Array | None = None,
               decode: bool = False, deterministic: bool = True) -> Array:
    cfg = self.config
    if positions is None:
      positions = next_positions(self, x[..., 0]) if decode else default_positions(x[..., 0])
    if cfg.position == "learned":
      x = x + layers.LearnedPositions(cfg, name="position_embed")(positions)
    if cfg.norm_position == "post":
      x = layers.make_norm(cfg, "embed_norm")(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = layers.constrain(x, layers.BATCH, layers.LENGTH, layers.EMBED)
    bias = None
    if cfg.position == "relative":
      key_positions = jnp.arange(cfg.max_len)[None] if decode else positions  # decode: slots
      bias = layers.RelativePositionBias(cfg, self.bidirectional, name="relative_bias")(
          positions, key_positions)
    for i in range(self.num_layers):
      x = layers.Block(cfg, self.has_cross_attention, name=f"block_{i}")(
          x, mask=mask, bias=bias, positions=positions, encoded=encoded, cross_mask=cross_mask,
          decode=decode, deterministic=deterministic)
    if cfg.norm_position == "pre":
      x = layers.make_norm(cfg, "final_norm")(x)
    return x


def lm_head(config: ModelConfig, embed: layers.Embed, x: Array) -> Array:
  """Tied (the token embedding transposed) or untied output projection -> (B, T, V) float32."""
  if config.tie_embeddings:
    logits = embed.attend(x)
  else:
    logits = layers.Linear((config.vocab_size,), ("embed", "vocab"), config, name="lm_head")(x)
  return layers.constrain(logits.astype(jnp.float32), layers.BATCH, layers.LENGTH, layers.VOCAB)


class Decoder(nn.Module):
  """Decoder-only language model (GPT). Causal attention, or prefix-LM attention when
  `prefix_lengths` (B,) is given: bidirectional over each row's first prefix_lengths tokens."""

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: Array, *, positions: Array | None = None,
               segment_ids: Array | None = None, prefix_lengths: Array | None = None,
               decode: bool = False, deterministic: bool = True) -> Array:
    cfg = self.config
    if decode:  # queries sit at the next cache slots; keys are all max_len slots
      positions = next_positions(self, tokens)
      key_positions = jnp.arange(cfg.max_len)[None]
    else:
      positions = default_positions(tokens) if positions is None else positions
      key_positions = positions
    mask = layers.causal_mask(positions, key_positions)
    if prefix_lengths is not None:
      mask = mask | layers.prefix_mask(key_positions, prefix_lengths)
    if segment_ids is not None and not decode:
      mask = mask & layers.segment_mask(segment_ids, segment_ids)
    embed = layers.Embed(cfg.vocab_size, cfg, name="token_embed")
    x = Stack(cfg, cfg.num_layers, bidirectional=False, name="decoder")(
        embed(tokens), mask=mask, positions=positions, decode=decode, deterministic=deterministic)
    return lm_head(cfg, embed, x)


class Encoder(nn.Module):
  """Bidirectional encoder (BERT body): returns hidden states (B, T, E).

  input_mask (B, T) is True on real tokens: padding is neither attended to nor attends.
  token_types (B, T) are segment ids (BERT's sentence A/B), when config.num_token_types > 0.
  """

  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.token_embed = layers.Embed(cfg.vocab_size, cfg)
    if cfg.num_token_types:
      self.type_embed = layers.Embed(cfg.num_token_types, cfg, axes=("token_types", "embed"))
    self.stack = Stack(cfg, cfg.num_layers, bidirectional=True)

  def __call__(self, tokens: Array, *, input_mask: Array | None = None,
               token_types: Array | None = None, deterministic: bool = True) -> Array:
    cfg = self.config
    if input_mask is None:
      input_mask = jnp.ones(tokens.shape, bool)
    x = self.token_embed(tokens)
    if cfg.num_token_types:
      x = x + self.type_embed(jnp.zeros_like(tokens) if token_types is None else token_types)
    return self.stack(x, mask=layers.padding_mask(input_mask, input_mask),
                      positions=default_positions(tokens), deterministic=deterministic)

  def attend(self, x: Array) -> Array:
    return self.token_embed.attend(x)


class EncoderLM(nn.Module):
  """BERT for masked-LM pretraining: Encoder + transform (dense, activation, norm) + tied output
  projection with a per-token bias. Returns logits (B, T, V)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: Array, *, input_mask: Array | None = None,
               token_types: Array | None = None, deterministic: bool = True) -> Array:
    cfg = self.config
    encoder = Encoder(cfg, name="encoder")
    x = encoder(tokens, input_mask=input_mask, token_types=token_types,
                deterministic=deterministic)
    x = layers.Linear((cfg.embed_dim,), ("embed", "mlp"), cfg, use_bias=cfg.use_bias,
                      name="transform")(x)
    x = layers.make_norm(cfg, "transform_norm")(layers.ACTIVATIONS["gelu"](x))
    logits = encoder.attend(x)
    if cfg.use_bias:
      logits = logits + self.param(
          "output_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
          (cfg.vocab_size,), layers.dtype(cfg.param_dtype))
    return layers.constrain(logits, layers.BATCH, layers.LENGTH, layers.VOCAB)


class EncoderClassifier(nn.Module):
  """BERT for sequence classification: Encoder + pooler (dense + tanh on the first token) +
  a linear classifier. num_classes=0 returns the pooled vector (B, E)."""

  config: ModelConfig
  num_classes: int = 2

  @nn.compact
  def __call__(self, tokens: Array, *, input_mask: Array | None = None,
               token_types: Array | None = None, deterministic: bool = True) -> Array:
    cfg = self.config
    x = Encoder(cfg, name="encoder")(tokens, input_mask=input_mask, token_types=token_types,
                                     deterministic=deterministic)
    pooled = jnp.tanh(layers.Linear((cfg.embed_dim,), ("embed", "mlp"), cfg,
                                    use_bias=cfg.use_bias, name="pooler")(x[:, 0]))
    if not self.num_classes:
      return pooled
    pooled = nn.Dropout(cfg.dropout_rate)(pooled, deterministic=deterministic)
    return layers.Linear((self.num_classes,), ("embed", "classes"), cfg, use_bias=True,
                         name="classifier")(pooled).astype(jnp.float32)


class EncoderDecoder(nn.Module):
  """Encoder-decoder (T5): the decoder cross-attends to the encoder's output.

  One token embedding serves both stacks (and the LM head when tied). `encode` runs once per
  input; `decode` is called per step during generation with the decoder's KV cache.
  """

  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.token_embed = layers.Embed(cfg.vocab_size, cfg)
    self.encoder = Stack(cfg, cfg.num_layers, bidirectional=True)
    self.decoder = Stack(cfg, cfg.num_decoder_layers or cfg.num_layers, has_cross_attention=True,
                         bidirectional=False)
    if not cfg.tie_embeddings:
      self.lm_head = layers.Linear((cfg.vocab_size,), ("embed", "vocab"), cfg)

  def encode(self, tokens: Array, *, input_mask: Array | None = None,
             deterministic: bool = True) -> Array:
    if input_mask is None:
      input_mask = jnp.ones(tokens.shape, bool)
    return self.encoder(self.token_embed(tokens), mask=layers.padding_mask(input_mask, input_mask),
                        positions=default_positions(tokens), deterministic=deterministic)

  def decode(self, encoded: Array, decoder_tokens: Array, *, encoder_mask: Array | None = None,
             decode: bool = False, deterministic: bool = True) -> Array:
    cfg = self.config
    b, t = decoder_tokens.shape
    if encoder_mask is None:
      encoder_mask = jnp.ones(encoded.shape[:2], bool)
    positions, mask = None, None  # decode: the Stack tracks positions, the cache masks
    if not decode:
      positions = default_positions(decoder_tokens)
      mask = layers.causal_mask(positions, positions)
    cross_mask = layers.padding_mask(jnp.ones((b, t), bool), encoder_mask)
    x = self.decoder(self.token_embed(decoder_tokens), mask=mask, positions=positions,
                     encoded=encoded, cross_mask=cross_mask, decode=decode,
                     deterministic=deterministic)
    if cfg.tie_embeddings:
      logits = self.token_embed.attend(x)
    else:
      logits = self.lm_head(x)
    return layers.constrain(logits.astype(jnp.float32), layers.BATCH, layers.LENGTH,
                            layers.VOCAB)

  def __call__(self, encoder_tokens: Array, decoder_tokens: Array, *,
               encoder_mask: Array | None = None, decode: bool = False,
               deterministic: bool = True) -> Array:
    encoded = self.encode(encoder_tokens, input_mask=encoder_mask, deterministic=deterministic)
    return self.decode(encoded, decoder_tokens, encoder_mask=encoder_mask, decode=decode,
                       deterministic=deterministic)


FAMILIES = {"decoder": Decoder, "encoder": EncoderLM, "encoder_decoder": EncoderDecoder}


def build_model(config: ModelConfig) -> nn.Module:
  """The pretraining model of config.family."""
  return FAMILIES[config.family](config)


def dummy_inputs(config: ModelConfig, seq_len: int, batch_size: int = 1) -> tuple:
  """Positional arguments that initialise the family's pretraining model."""
  tokens = jnp.zeros((batch_size, seq_len), jnp.int32)
  if config.family == "encoder_decoder":
    return (tokens, tokens)
  return (tokens,)


def parameter_count(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(params))))
