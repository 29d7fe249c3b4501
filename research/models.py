"""The three families, each a composition of the blocks in layers.py.

  Decoder (GPT)         tokens -> Stack(causal or prefix mask) -> LM head
    DecoderClassifier     last real token's hidden state -> classifier
  Encoder (BERT)        tokens (+ segments) -> Stack(padding mask) -> hidden states
    EncoderLM             + MLM head (transform, norm, tied projection)
    EncoderClassifier     + pooler (first token, tanh) + classifier
    EncoderSpanQA         + start/end scores per token (extractive QA)
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


# Name of a Stack's scanned blocks (model.scan_layers): their parameters and KV caches are those
# of one Block, stacked on a leading axis of num_layers (logical name "layers").
SCANNED_LAYERS = "layers"
REMAT_POLICIES = {"full": None, "dots_saveable": jax.checkpoint_policies.dots_saveable}


class _LiftedBlock(layers.Block):
  """A Block with its array inputs positional and its modes as attributes: the form nn.remat
  (which traces every call argument) and nn.scan (carry + broadcast inputs) can lift. Its
  parameters are a Block's, so an unscanned Stack keeps the same parameter paths."""

  decode: bool = False
  deterministic: bool = True
  scanned: bool = False  # return (carry, None), as nn.scan expects

  def __call__(self, x, mask, bias, positions, encoded, cross_mask):
    x = super().__call__(x, mask=mask, bias=bias, positions=positions, encoded=encoded,
                         cross_mask=cross_mask, decode=self.decode,
                         deterministic=self.deterministic)
    return (x, None) if self.scanned else x


class Stack(nn.Module):
  """Positions + embedding norm/dropout + `num_layers` Blocks + final norm: every family's body.

  x: token embeddings (B, T, E). Learned positions are added here; RoPE is applied inside
  attention; a T5 relative bias is computed once and shared by all layers. Post-norm models
  (BERT) normalise the embeddings; pre-norm models (GPT, T5) normalise the output.

  model.scan_layers runs the blocks as one nn.scan (parameters under SCANNED_LAYERS, stacked on
  a leading layer axis): one block is compiled instead of num_layers. model.remat recomputes
  each block's activations in the backward pass ("full") or all but its matmul outputs
  ("dots_saveable"), trading compute for activation memory.
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
    block = _LiftedBlock
    if cfg.remat != "none" and not decode:  # decoding has no backward pass to save memory for
      # Inside a scan, CSE cannot undo the recomputation, so the barrier is not needed there.
      block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    args = (mask, bias, positions, encoded, cross_mask)  # the same for every layer
    modes = dict(decode=decode, deterministic=deterministic)
    if cfg.scan_layers:
      scanned = nn.scan(block, variable_axes={"params": 0, "cache": 0},
                        split_rngs={"params": True, "dropout": True},
                        in_axes=(nn.broadcast,) * len(args), length=self.num_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = scanned(cfg, self.has_cross_attention, scanned=True, name=SCANNED_LAYERS,
                     **modes)(x, *args)
    else:
      for i in range(self.num_layers):
        x = block(cfg, self.has_cross_attention, name=f"block_{i}", **modes)(x, *args)
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


def decoder_hidden(module: nn.Module, tokens: Array, *, positions: Array | None = None,
                   segment_ids: Array | None = None, prefix_lengths: Array | None = None,
                   prompt_lengths: Array | None = None, decode: bool = False,
                   deterministic: bool = True) -> tuple[layers.Embed, Array]:
  """The GPT body, built inside `module`'s compact method: (token embedding, hidden (B, T, E)).

  Decode mode keeps the KV cache in slots 0..max_len-1. A prefill of right-padded prompts passes
  `prompt_lengths` (B,): row r's padding slots are never attended to, and its generated tokens
  take positions prompt_lengths[r], prompt_lengths[r] + 1, ... although they sit in later slots.
  """
  cfg = module.config
  if decode:  # queries sit at the next cache slots; keys are all max_len slots
    b = tokens.shape[0]
    slots = next_positions(module, tokens)
    key_slots = jnp.arange(cfg.max_len)[None]
    # Zero-initialised like the rest of the cache (decode.init_cache): no slot is padding.
    padding = module.variable("cache", "padding_slots", jnp.zeros, (b, cfg.max_len), bool)
    shift = module.variable("cache", "position_shift", jnp.zeros, (b,), jnp.int32)
    positions = slots - shift.value[:, None]
    if prompt_lengths is not None:  # only at the prefill, which starts at slot 0
      written = (key_slots >= slots[:, :1]) & (key_slots <= slots[:, -1:])
      padding.value = jnp.where(written, key_slots >= prompt_lengths[:, None], padding.value)
      shift.value = tokens.shape[1] - prompt_lengths
    mask = layers.causal_mask(slots, key_slots)
    if prefix_lengths is not None:
      mask = mask | layers.prefix_mask(key_slots, prefix_lengths)
    mask = mask & ~padding.value[:, None, None, :]
  else:
    positions = default_positions(tokens) if positions is None else positions
    mask = layers.causal_mask(positions, positions)
    if prefix_lengths is not None:
      mask = mask | layers.prefix_mask(positions, prefix_lengths)
    if segment_ids is not None:
      mask = mask & layers.segment_mask(segment_ids, segment_ids)
  embed = layers.Embed(cfg.vocab_size, cfg, name="token_embed")
  x = Stack(cfg, cfg.num_layers, bidirectional=False, name="decoder")(
      embed(tokens), mask=mask, positions=positions, decode=decode, deterministic=deterministic)
  return embed, x


class Decoder(nn.Module):
  """Decoder-only language model (GPT). Causal attention, or prefix-LM attention when
  `prefix_lengths` (B,) is given: bidirectional over each row's first prefix_lengths tokens."""

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: Array, *, positions: Array | None = None,
               segment_ids: Array | None = None, prefix_lengths: Array | None = None,
               prompt_lengths: Array | None = None, decode: bool = False,
               deterministic: bool = True) -> Array:
    embed, x = decoder_hidden(self, tokens, positions=positions, segment_ids=segment_ids,
                              prefix_lengths=prefix_lengths, prompt_lengths=prompt_lengths,
                              decode=decode, deterministic=deterministic)
    return lm_head(self.config, embed, x)


class DecoderClassifier(nn.Module):
  """GPT for sequence classification: the hidden state of each row's last real token
  (lengths (B,) counts real tokens; padding follows them) -> a linear classifier."""

  config: ModelConfig
  num_classes: int = 2

  @nn.compact
  def __call__(self, tokens: Array, *, lengths: Array | None = None,
               deterministic: bool = True) -> Array:
    cfg = self.config
    _, x = decoder_hidden(self, tokens, deterministic=deterministic)  # (B, T, E)
    if lengths is None:
      lengths = jnp.full(tokens.shape[:1], tokens.shape[1], jnp.int32)
    last = jnp.take_along_axis(x, (lengths - 1)[:, None, None], axis=1)[:, 0]  # (B, E)
    last = nn.Dropout(cfg.dropout_rate)(last, deterministic=deterministic)
    return layers.Linear((self.num_classes,), ("embed", "classes"), cfg, use_bias=True,
                         name="classifier")(last).astype(jnp.float32)


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
    if cfg.pooler:  # held, not used by the MLM loss: a classifier fine-tuned from here reuses it
      layers.Linear((cfg.embed_dim,), ("embed", "mlp"), cfg, use_bias=cfg.use_bias,
                    name="pooler")(x[:, 0])
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


class EncoderSpanQA(nn.Module):
  """BERT for extractive QA: Encoder + a linear layer giving each token a start and an end
  score. Returns (start_logits, end_logits), each (B, T) float32."""

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: Array, *, input_mask: Array | None = None,
               token_types: Array | None = None, deterministic: bool = True):
    cfg = self.config
    x = Encoder(cfg, name="encoder")(tokens, input_mask=input_mask, token_types=token_types,
                                     deterministic=deterministic)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    logits = layers.Linear((2,), ("embed", "classes"), cfg, use_bias=True, name="span_head")(
        x).astype(jnp.float32)  # (B, T, 2)
    return logits[..., 0], logits[..., 1]


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
