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

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import layers
from research.attention import MaskSpec
from research.config import ModelConfig

Array = jax.Array


def default_positions(tokens: Array) -> Array:
  b, t = tokens.shape
  return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))


# Name of a Stack's scanned blocks (model.scan_layers): their parameters and KV caches are those
# of one Block, stacked on a leading axis of num_layers (logical name "layers").
SCANNED_LAYERS = "layers"
REMAT_POLICIES = {"full": None, "dots_saveable": jax.checkpoint_policies.dots_saveable}


class _LiftedBlock(layers.Block):
  """A Block with its array inputs positional and its modes as attributes: the form nn.remat
  (which traces every call argument) and nn.scan (carry + broadcast inputs) can lift. Its
  parameters are a Block's, so an unscanned Stack keeps the same parameter paths.

  views: (global, local) pairs of (MaskSpec, cache slots); the block takes its own kind's."""

  decode: bool = False
  deterministic: bool = True
  scanned: bool = False  # return (carry, None), as nn.scan expects

  def __call__(self, x, views, bias, encoded, cross_spec):
    spec, cache_slots = views[int(self.local)]
    x = super().__call__(x, spec=spec, bias=bias, cache_slots=cache_slots, encoded=encoded,
                         cross_spec=cross_spec, decode=self.decode,
                         deterministic=self.deterministic)
    return (x, None) if self.scanned else x


def _block_class(cfg: ModelConfig, decode: bool):
  """_LiftedBlock, rematerialised in the backward pass as model.remat says."""
  if cfg.remat == "none" or decode:  # decoding has no backward pass to save memory for
    return _LiftedBlock
  # Inside a scan, CSE cannot undo the recomputation, so the barrier is not needed there.
  return nn.remat(_LiftedBlock, policy=REMAT_POLICIES[cfg.remat],
                  prevent_cse=not cfg.scan_layers)


class _PatternGroup(nn.Module):
  """One repeat of model.layer_pattern (e.g. five local layers and a global one), the body
  that a scanned Stack repeats: its blocks are block_0 ... block_{P-1}."""

  config: ModelConfig
  has_cross_attention: bool = False
  decode: bool = False
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, *args):
    cfg = self.config
    block = _block_class(cfg, self.decode)
    for j, kind in enumerate(cfg.layer_pattern):
      x = block(cfg, self.has_cross_attention, local=kind == "L", decode=self.decode,
                deterministic=self.deterministic, name=f"block_{j}")(x, *args)
    return x, None


class Stack(nn.Module):
  """Positions + embedding norm/dropout + `num_layers` Blocks + final norm: every family's body.

  x: token embeddings (B, T, E). The Stack builds its layers' one attention description
  (attention.MaskSpec) from `segment_ids` (B, T) (packed examples 1, 2, ...; padding 0; None:
  one sequence per row), `positions` (B, T) (default 0..T-1), `prefix_lengths` (B,) and the
  config's window, causal or not. Learned positions are added here; RoPE is applied inside
  attention; a T5 relative bias is computed once and shared by all layers. Post-norm models
  (BERT) normalise the embeddings; pre-norm models (GPT, T5) normalise the output.

  model.layer_pattern gives layers of two kinds: local ("L", sliding window local_window) and
  global ("G", attention_window); each kind gets its own MaskSpec (and its own cache size).

  decode=True (causal stacks): the tokens continue each row's cache. The Stack keeps the one
  position counter (next_position (B,)) and, for every cache slot, the position and segment of
  the token in it; the chunk's real tokens (segment > 0) take the next positions and the slots
  position % cache size, so a windowed cache holds the last `window` positions. Local layers'
  caches have their own (smaller) slots, bookkept under the "local_" names.

  model.scan_layers runs the blocks as one nn.scan (parameters under SCANNED_LAYERS, stacked on
  a leading layer axis): one block is compiled instead of num_layers. With a layer_pattern of
  P layers the scan runs over whole repeats (SCANNED_LAYERS/block_j is layer g*P + j of repeat
  g), and the num_layers % P layers after the last repeat stay unscanned (block_i, i their
  index). model.remat recomputes each block's activations in the backward pass ("full") or all
  but its matmul outputs ("dots_saveable"), trading compute for activation memory.
  """

  config: ModelConfig
  num_layers: int
  has_cross_attention: bool = False
  causal: bool = False

  @nn.compact
  def __call__(self, x: Array, *, positions: Array | None = None,
               segment_ids: Array | None = None, prefix_lengths: Array | None = None,
               packed: bool = False, encoded: Array | None = None,
               encoder_segment_ids: Array | None = None, decode: bool = False,
               deterministic: bool = True) -> Array:
    cfg = self.config
    kinds = {cfg.layer_kind(i) for i in range(self.num_layers)}
    views = [(None, None), (None, None)]  # (MaskSpec, cache slots) of global and local layers
    if decode:
      next_position = self.variable("cache", "next_position", jnp.zeros, x.shape[:1], jnp.int32)
      start = next_position.value
    for local in (False, True):
      if ("L" if local else "G") not in kinds:
        continue
      window = layers.layer_window(cfg, local)
      if decode:
        spec, slots, end = self._decoding_spec(x, start, segment_ids, prefix_lengths, local)
        views[local] = (spec, slots)
        next_position.value = end  # the same for both kinds
      else:
        positions = default_positions(x[..., 0]) if positions is None else positions
        views[local] = (MaskSpec.self_attention(
            positions, segment_ids, causal=self.causal, window=window,
            prefix_lengths=prefix_lengths, packed=packed), None)
    spec = views[0][0] if views[0][0] is not None else views[1][0]  # the same positions
    if cfg.position == "learned":
      x = x + layers.LearnedPositions(cfg, name="position_embed")(spec.q_positions)
    if cfg.norm_position == "post":
      x = layers.make_norm(cfg, "embed_norm")(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = layers.constrain(x, layers.BATCH, layers.LENGTH, layers.EMBED)
    bias = None
    if cfg.position == "relative":
      bias = layers.RelativePositionBias(cfg, not self.causal, name="relative_bias")(
          spec.q_positions, spec.k_positions)
    cross_spec = None
    if self.has_cross_attention:
      if decode:  # the encoder's segments, kept with its keys and values at the prefill
        kept = self.variable("cache", "encoder_segment_ids", lambda: encoder_segment_ids)
        if encoded is not None:
          kept.value = encoder_segment_ids
        encoder_segment_ids = kept.value
      cross_spec = MaskSpec.cross_attention(None if decode else segment_ids,
                                            encoder_segment_ids, packed=packed)
    block = _block_class(cfg, decode)
    args = (tuple(views), bias, encoded, cross_spec)  # the same for every layer
    modes = dict(decode=decode, deterministic=deterministic)
    period = len(cfg.layer_pattern) if len(set(cfg.layer_pattern)) > 1 else 1
    repeats = self.num_layers // period if cfg.scan_layers else 0
    unscanned = range(repeats * period, self.num_layers)
    if repeats:
      body, extra = (block, dict(scanned=True, local=cfg.layer_kind(0) == "L"))
      if period > 1:
        body, extra = _PatternGroup, {}
      scanned = nn.scan(body, variable_axes={"params": 0, "cache": 0},
                        split_rngs={"params": True, "dropout": True},
                        in_axes=(nn.broadcast,) * len(args), length=repeats,
                        metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = scanned(cfg, self.has_cross_attention, name=SCANNED_LAYERS, **extra,
                     **modes)(x, *args)
    for i in unscanned:
      x = block(cfg, self.has_cross_attention, local=cfg.layer_kind(i) == "L",
                name=f"block_{i}", **modes)(x, *args)
    if cfg.norm_position == "pre":
      x = layers.make_norm(cfg, "final_norm")(x)
    return x

  def _decoding_spec(self, x: Array, start: Array, segment_ids: Array | None,
                     prefix_lengths: Array | None,
                     local: bool) -> tuple[MaskSpec, Array, Array]:
    """The chunk's queries against the cache slots + the chunk, the slots it is written to, and
    the next chunk's first position (B,), for the global or the local layers: each kind has its
    own cache size and slots; the chunk starts at `start` (B,) for both."""
    cfg = self.config
    b, t = x.shape[:2]
    size = layers.cache_size(cfg, local)
    prefix = "local_" if local else ""
    slot_positions = self.variable("cache", f"{prefix}slot_positions", jnp.zeros, (b, size),
                                   jnp.int32)
    slot_segments = self.variable("cache", f"{prefix}slot_segments", jnp.zeros, (b, size),
                                  jnp.int32)
    if segment_ids is None:
      segment_ids = jnp.ones((b, t), jnp.int32)
    positions = start[:, None] + jnp.arange(t, dtype=jnp.int32)  # (B, T)
    real = segment_ids > 0  # a right-padded prompt's padding is neither seen nor kept
    end = start + jnp.sum(real, axis=1, dtype=jnp.int32)  # (B,)
    kept = real & (positions >= end[:, None] - size)  # a chunk longer than the cache: its tail
    slots = jnp.where(kept, positions % size, size)  # (B, T); `size` is dropped when written
    spec = MaskSpec.self_attention(
        positions, segment_ids, causal=self.causal, window=layers.layer_window(cfg, local),
        prefix_lengths=prefix_lengths).with_keys(
            jnp.concatenate([slot_positions.value, positions], axis=1),
            jnp.concatenate([slot_segments.value, segment_ids], axis=1))
    rows = jnp.arange(b)[:, None]
    slot_positions.value = slot_positions.value.at[rows, slots].set(positions, mode="drop")
    slot_segments.value = slot_segments.value.at[rows, slots].set(segment_ids, mode="drop")
    return spec, slots, end


def lm_head(config: ModelConfig, embed: layers.Embed, x: Array) -> Array:
  """Tied (the token embedding transposed) or untied output projection -> (B, T, V) float32."""
  if config.tie_embeddings:
    logits = embed.attend(x)
  else:
    logits = layers.Linear((config.vocab_size,), ("embed", "vocab"), config, name="lm_head")(x)
  logits = layers.softcap(logits.astype(jnp.float32), config.final_logit_softcap)
  return layers.constrain(logits, layers.BATCH, layers.LENGTH, layers.VOCAB)


def decoder_hidden(module: nn.Module, tokens: Array, *, positions: Array | None = None,
                   segment_ids: Array | None = None, prefix_lengths: Array | None = None,
                   prompt_lengths: Array | None = None, decode: bool = False,
                   deterministic: bool = True) -> tuple[layers.Embed, Array]:
  """The GPT body, built inside `module`'s compact method: (token embedding, hidden (B, T, E)).

  segment_ids/positions: packed rows (training). prompt_lengths (B,): right-padded prompts
  (decoding's prefill): row r's padding is never attended to, and its generated tokens take
  positions prompt_lengths[r], prompt_lengths[r] + 1, ...
  """
  cfg = module.config
  packed = segment_ids is not None
  if prompt_lengths is not None:
    segment_ids = (jnp.arange(tokens.shape[1])[None] < prompt_lengths[:, None]).astype(jnp.int32)
  embed = layers.Embed(cfg.vocab_size, cfg, name="token_embed")
  x = Stack(cfg, cfg.num_layers, causal=True, name="decoder")(
      embed(tokens), positions=positions, segment_ids=segment_ids,
      prefix_lengths=prefix_lengths, packed=packed, decode=decode, deterministic=deterministic)
  return embed, x


class Decoder(nn.Module):
  """Decoder-only language model (GPT). Causal attention, or prefix-LM attention when
  `prefix_lengths` (B,) is given: bidirectional over each row's first prefix_lengths tokens."""

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: Array, *, positions: Array | None = None,
               segment_ids: Array | None = None, prefix_lengths: Array | None = None,
               prompt_lengths: Array | None = None, decode: bool = False,
               deterministic: bool = True, return_hidden: bool = False,
               logits_at: Array | None = None) -> Array:
    """Logits (B, T, V); return_hidden: the final hidden states (B, T, E) instead, for a loss
    that applies the output layer itself (objectives.chunked_token_cross_entropy). logits_at
    (B, K): the logits (B, K, V) of those positions only (a prefill needs one per row, and with
    a 262k-token vocabulary the output layer of every prompt position would cost most of it)."""
    embed, x = decoder_hidden(self, tokens, positions=positions, segment_ids=segment_ids,
                              prefix_lengths=prefix_lengths, prompt_lengths=prompt_lengths,
                              decode=decode, deterministic=deterministic)
    if return_hidden:
      return x
    if logits_at is not None:
      x = jnp.take_along_axis(x, logits_at[:, :, None], axis=1)  # (B, K, E)
    return lm_head(self.config, embed, x)

  def prefill(self, prompts: Array, input_mask: Array, *, prefix_lm: bool = False,
              start_id: int = 0) -> Array:
    """Decoding's first call: right-padded prompts (B, P) (input_mask True on their tokens) into
    a fresh cache -> logits of each row's next token (B, V). prefix_lm: the prompt is attended
    bidirectionally, as a prefix-LM model was trained. (start_id: encoder-decoders only.)"""
    del start_id
    lengths = jnp.sum(input_mask, axis=1, dtype=jnp.int32)
    return self(prompts, prompt_lengths=lengths, prefix_lengths=lengths if prefix_lm else None,
                decode=True, logits_at=(lengths - 1)[:, None])[:, 0]

  def decode_step(self, tokens: Array) -> Array:
    """One token per row (B,) after the cache -> logits of the next (B, V)."""
    return self(tokens[:, None], decode=True)[:, -1]


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


def _segments(input_mask: Array | None, segment_ids: Array | None) -> Array | None:
  """Segment ids (B, T) of an encoder input: packed ids as given, else 1 on real tokens and 0
  on padding (input_mask), else None (every token real)."""
  if segment_ids is not None or input_mask is None:
    return segment_ids
  return input_mask.astype(jnp.int32)


class Encoder(nn.Module):
  """Bidirectional encoder (BERT body): returns hidden states (B, T, E).

  input_mask (B, T) is True on real tokens: padding is neither attended to nor attends.
  segment_ids/positions (B, T): packed rows, several examples per row (0 on padding).
  token_types (B, T) are BERT's sentence A/B ids, when config.num_token_types > 0.
  """

  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.token_embed = layers.Embed(cfg.vocab_size, cfg)
    if cfg.num_token_types:
      self.type_embed = layers.Embed(cfg.num_token_types, cfg, axes=("token_types", "embed"))
    self.stack = Stack(cfg, cfg.num_layers)

  def __call__(self, tokens: Array, *, input_mask: Array | None = None,
               token_types: Array | None = None, positions: Array | None = None,
               segment_ids: Array | None = None, deterministic: bool = True) -> Array:
    cfg = self.config
    x = self.token_embed(tokens)
    if cfg.num_token_types:
      x = x + self.type_embed(jnp.zeros_like(tokens) if token_types is None else token_types)
    return self.stack(x, positions=positions, segment_ids=_segments(input_mask, segment_ids),
                      packed=segment_ids is not None, deterministic=deterministic)

  def attend(self, x: Array) -> Array:
    return self.token_embed.attend(x)


class EncoderLM(nn.Module):
  """BERT for masked-LM pretraining: Encoder + transform (dense, activation, norm) + tied output
  projection with a per-token bias. Returns logits (B, T, V)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: Array, *, input_mask: Array | None = None,
               token_types: Array | None = None, positions: Array | None = None,
               segment_ids: Array | None = None, deterministic: bool = True) -> Array:
    cfg = self.config
    encoder = Encoder(cfg, name="encoder")
    x = encoder(tokens, input_mask=input_mask, token_types=token_types, positions=positions,
                segment_ids=segment_ids, deterministic=deterministic)
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
               token_types: Array | None = None, positions: Array | None = None,
               segment_ids: Array | None = None, deterministic: bool = True) -> Array:
    cfg = self.config
    x = Encoder(cfg, name="encoder")(tokens, input_mask=input_mask, token_types=token_types,
                                     positions=positions, segment_ids=segment_ids,
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
               token_types: Array | None = None, positions: Array | None = None,
               segment_ids: Array | None = None, deterministic: bool = True):
    cfg = self.config
    x = Encoder(cfg, name="encoder")(tokens, input_mask=input_mask, token_types=token_types,
                                     positions=positions, segment_ids=segment_ids,
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
    self.encoder = Stack(cfg, cfg.num_layers)
    self.decoder = Stack(cfg, cfg.num_decoder_layers or cfg.num_layers, has_cross_attention=True,
                         causal=True)
    if not cfg.tie_embeddings:
      self.lm_head = layers.Linear((cfg.vocab_size,), ("embed", "vocab"), cfg)

  def encode(self, tokens: Array, *, input_mask: Array | None = None,
             segment_ids: Array | None = None, positions: Array | None = None,
             deterministic: bool = True) -> Array:
    return self.encoder(self.token_embed(tokens), positions=positions,
                        segment_ids=_segments(input_mask, segment_ids),
                        packed=segment_ids is not None, deterministic=deterministic)

  def decode(self, encoded: Array | None, decoder_tokens: Array, *,
             encoder_mask: Array | None = None, encoder_segment_ids: Array | None = None,
             decoder_segment_ids: Array | None = None, decoder_positions: Array | None = None,
             decode: bool = False, deterministic: bool = True) -> Array:
    """Decoder logits (B, T, V). Packed rows: decoder segment i cross-attends to encoder
    segment i only. decode=True: `encoded` is given at the prefill (its keys and values are
    cached) and None at every later step."""
    cfg = self.config
    encoder_segment_ids = _segments(encoder_mask, encoder_segment_ids)
    if decode and encoded is not None and encoder_segment_ids is None:
      encoder_segment_ids = jnp.ones(encoded.shape[:2], jnp.int32)  # kept in the cache
    x = self.decoder(self.token_embed(decoder_tokens), positions=decoder_positions,
                     segment_ids=decoder_segment_ids, packed=decoder_segment_ids is not None,
                     encoded=encoded, encoder_segment_ids=encoder_segment_ids, decode=decode,
                     deterministic=deterministic)
    if cfg.tie_embeddings:
      logits = self.token_embed.attend(x)
    else:
      logits = self.lm_head(x)
    logits = layers.softcap(logits.astype(jnp.float32), cfg.final_logit_softcap)
    return layers.constrain(logits, layers.BATCH, layers.LENGTH, layers.VOCAB)

  def __call__(self, encoder_tokens: Array, decoder_tokens: Array, *,
               encoder_mask: Array | None = None, encoder_segment_ids: Array | None = None,
               decoder_segment_ids: Array | None = None, encoder_positions: Array | None = None,
               decoder_positions: Array | None = None, decode: bool = False,
               deterministic: bool = True) -> Array:
    encoded = self.encode(encoder_tokens, input_mask=encoder_mask,
                          segment_ids=encoder_segment_ids, positions=encoder_positions,
                          deterministic=deterministic)
    return self.decode(encoded, decoder_tokens, encoder_mask=encoder_mask,
                       encoder_segment_ids=encoder_segment_ids,
                       decoder_segment_ids=decoder_segment_ids,
                       decoder_positions=decoder_positions, decode=decode,
                       deterministic=deterministic)

  def prefill(self, inputs: Array, input_mask: Array, *, prefix_lm: bool = False,
              start_id: int = 0) -> Array:
    """Decoding's first call: encodes `inputs` (B, S) once, caches the cross-attention keys and
    values, feeds the start token -> logits of the first output token (B, V)."""
    del prefix_lm
    encoded = self.encode(inputs, input_mask=input_mask)
    start = jnp.full((inputs.shape[0], 1), start_id, jnp.int32)
    return self.decode(encoded, start, encoder_mask=input_mask, decode=True)[:, -1]

  def decode_step(self, tokens: Array) -> Array:
    """One token per row (B,) after the cache -> logits of the next (B, V)."""
    return self.decode(None, tokens[:, None], decode=True)[:, -1]


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family, answering what the code outside the models asks of it (how to decode,
  count FLOPs, build a benchmark batch, export), so that no caller compares family names."""
  name: str
  lm: type  # the pretraining model (build_model)
  encodes: bool  # a bidirectional encoder reads the input first (BERT, T5)
  generates: bool  # a causal decoder writes tokens one at a time (GPT, T5)
  objective: str  # the pretraining objective an imported checkpoint of it is given

  @property
  def seq2seq(self) -> bool:
    """An encoder reads the input and a decoder writes the output, attending to it (T5)."""
    return self.encodes and self.generates

  @property
  def decoder_only(self) -> bool:
    """One causal stack reads a prompt and writes after it (GPT): chat, few-shot prompts."""
    return self.generates and not self.encodes

  def decoder_layers(self, config: ModelConfig) -> int:
    """Layers of the decoder stack of a seq2seq model; 0 for a single stack."""
    return (config.num_decoder_layers or config.num_layers) if self.seq2seq else 0

  def dummy_inputs(self, seq_len: int, batch_size: int = 1) -> tuple:
    """Positional arguments that initialise the pretraining model."""
    tokens = jnp.zeros((batch_size, seq_len), jnp.int32)
    return (tokens, tokens) if self.seq2seq else (tokens,)

  def random_batch(self, rng: np.random.Generator, batch_size: int, input_len: int,
                   target_len: int, vocab_size: int, mask_rate: float) -> dict[str, np.ndarray]:
    """Random tokens in the batch format of the pretraining model's loss (what a benchmark
    times in place of the input pipeline): an encoder's weights mark mask_rate of the tokens."""
    b = batch_size
    ids = lambda n: rng.integers(0, vocab_size, (b, n), dtype=np.int32)
    ones = lambda n: np.ones((b, n), np.float32)
    if self.seq2seq:
      return {"encoder_inputs": ids(input_len), "encoder_mask": np.ones((b, input_len), bool),
              "decoder_inputs": ids(target_len), "targets": ids(target_len),
              "weights": ones(target_len)}
    out = {"inputs": ids(input_len), "targets": ids(input_len), "weights": ones(input_len)}
    if self.encodes:
      out["input_mask"] = np.ones((b, input_len), bool)
      out["weights"] = (rng.random((b, input_len)) < mask_rate).astype(np.float32)
    return out


FAMILIES = {f.name: f for f in (
    Family("decoder", Decoder, encodes=False, generates=True, objective="causal_lm"),
    Family("encoder", EncoderLM, encodes=True, generates=False, objective="masked_lm"),
    Family("encoder_decoder", EncoderDecoder, encodes=True, generates=True,
           objective="span_corruption"),
)}


def family_of(config: ModelConfig) -> Family:
  return FAMILIES[config.family]


def build_model(config: ModelConfig) -> nn.Module:
  """The pretraining model of config.family."""
  return family_of(config).lm(config)


def dummy_inputs(config: ModelConfig, seq_len: int, batch_size: int = 1) -> tuple:
  """Positional arguments that initialise the family's pretraining model."""
  return family_of(config).dummy_inputs(seq_len, batch_size)


def parameter_count(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(params))))
