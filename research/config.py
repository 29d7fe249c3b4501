"""Experiment configuration: the one place a ConfigDict becomes frozen dataclasses.

A config file's `get_config()` returns an `ml_collections.ConfigDict` with the sections below.
`ExperimentConfig.from_config_dict` turns it into typed, frozen dataclasses; modules and the
trainer take those dataclasses, never the ConfigDict. Every field has a default here, so a config
file states only what it chooses, and an ablation is a few lines of difference.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import pathlib
import typing
from typing import Any

import ml_collections

from research import taskdefs
# Defined below this module so that research.taskdefs, which validate() asks about a task, can
# raise them too; everyone else names them from here.
from research.errors import ConfigError, DataError, UserError  # pylint: disable=unused-import


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture hyperparameters shared by the three families."""

  family: str = "decoder"  # decoder (GPT) | encoder (BERT) | encoder_decoder (T5)
  vocab_size: int = 0  # 0: take the tokenizer's size
  num_layers: int = 4
  num_decoder_layers: int = 0  # encoder_decoder only; 0: same as num_layers
  num_heads: int = 4
  num_kv_heads: int = 0  # 0: num_heads (MHA); 1: MQA; in between: GQA
  head_dim: int = 0  # 0: embed_dim // num_heads
  embed_dim: int = 128
  mlp_dim: int = 512
  max_len: int = 64  # size of the learned position table / the longest context allowed
  num_token_types: int = 0  # encoder: segment (token-type) embeddings, e.g. 2 for BERT
  position: str = "learned"  # learned | rope | relative | none
  rope_base: float = 10000.0
  relative_buckets: int = 32
  relative_max_distance: int = 128
  norm: str = "layernorm"  # layernorm | rmsnorm
  norm_position: str = "pre"  # pre | post
  norm_eps: float = 1e-5
  mlp_activation: str = "gelu"  # gelu (exact erf) | gelu_tanh | relu | swiglu | geglu
  use_bias: bool = True
  dropout_rate: float = 0.0
  tie_embeddings: bool = True
  init_std: float = 0.02
  # Conventions of imported checkpoints (research/hf.py); the defaults keep GPT's and BERT's.
  scale_attention: bool = True  # logits q.k / sqrt(head_dim); False: q.k (T5 folds it into init)
  scale_tied_logits: bool = False  # tied output layer: hidden * embed_dim**-0.5 first (T5 v1.0)
  pooler: bool = False  # encoder (EncoderLM): also hold BERT's pooler (dense + tanh, 1st token)
  # Precision policy, honoured by every matmul in layers.py.
  param_dtype: str = "float32"  # master weights
  activation_dtype: str = "float32"  # residual stream, norms, softmax
  # Operands of matmuls (results always accumulate in float32); "auto": bfloat16 where the
  # hardware multiplies it natively (GPU, TPU, CPUs with AMX or AVX-512 bf16), float32 elsewhere.
  matmul_dtype: str = "float32"
  # Scale options. On a CPU a scanned step is slower than an unscanned one (the scan stacks every
  # layer's residuals; figures and command: benchmarks/README.md, "Scanned layers"); scanning is
  # for compile time on big models, best with remat="dots_saveable".
  scan_layers: bool = False
  remat: str = "none"  # none | full | dots_saveable
  # Decoder losses: logits only at the positions that carry loss, this many positions of each
  # row at a time (research/objectives.py, chunked_token_cross_entropy); 0: every position's
  # logits at once. For large vocabularies (Gemma's 262,144 tokens), where they dominate a step.
  logits_chunk: int = 0
  # Attention implementation (research/attention.py): "auto" follows the mesh's devices:
  # Pallas splash attention on a TPU, cuDNN's fused attention on a GPU (bf16 operands), the
  # XLA path elsewhere; a variant a kernel cannot express falls back to XLA, logged once.
  attention: str = "auto"  # auto | xla | cudnn | splash
  # Sliding-window attention: each query sees the attention_window most recent positions
  # (itself included), in training and in cached decoding (a cache of that many slots); 0: all.
  attention_window: int = 0
  # Modern decoder choices (Gemma 2/3, Llama 3, Qwen 2.5/3); the defaults keep GPT-2's block.
  qk_norm: bool = False  # RMS-norm of each query and key head before RoPE (Qwen3, Gemma 3)
  post_norms: bool = False  # x + norm(f(norm(x))): a norm after each sub-layer too (Gemma 2/3)
  scale_embeddings: bool = False  # token embeddings * sqrt(embed_dim) (Gemma)
  norm_scale_plus_one: bool = False  # RMSNorm scales by (1 + w), w born 0 (Gemma's checkpoints)
  qkv_bias: bool = False  # biases on the query/key/value projections only (Qwen 2.5)
  # 0: 1/sqrt(head_dim); else logits scale by query_pre_attn_scalar**-0.5 (Gemma 2/3)
  query_pre_attn_scalar: float = 0.0
  attn_logit_softcap: float = 0.0  # cap * tanh(logits / cap) on attention logits; 0: off
  final_logit_softcap: float = 0.0  # the same on the output logits (Gemma 2); 0: off
  # Local and global layers: layer_pattern repeats over the layers, "L" a local layer (sliding
  # window local_window, RoPE base local_rope_base, no RoPE scaling), "G" a global one
  # (attention_window, rope_base, rope_scaling). Gemma 3: "LLLLLG", 512 or 1024, 1e4 and 1e6.
  # "": every layer global. With scan_layers, the scan runs over whole repeats of the pattern.
  layer_pattern: str = ""
  local_window: int = 0
  local_rope_base: float = 10000.0
  # RoPE frequency scaling of the global layers: none | linear (frequencies / factor) | llama3
  # (Llama 3.1: long wavelengths / factor, short ones kept, a smooth ramp between).
  rope_scaling: str = "none"
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.embed_dim // self.num_heads

  @property
  def resolved_kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  def layer_kind(self, index: int) -> str:
    """"L" (local) or "G" (global) for layer `index` of a stack (layer_pattern repeats)."""
    return self.layer_pattern[index % len(self.layer_pattern)] if self.layer_pattern else "G"


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  learning_rate: float = 1e-3  # peak
  end_learning_rate: float = 1e-4  # reached at the end of the cosine decay
  warmup_steps: int = 100
  decay_steps: int = 0  # 0: train.steps
  schedule: str = "cosine"  # cosine | linear | constant
  b1: float = 0.9
  b2: float = 0.99
  eps: float = 1e-8
  weight_decay: float = 0.1
  # Which parameters get weight decay: "matrices" = every parameter with ndim >= 2 (nanoGPT);
  # "matrices_no_embed" = kernels only (not biases, norms, token/position embeddings).
  decay_rule: str = "matrices_no_embed"
  clip_norm: float = 1.0  # 0 disables clipping
  grad_accum_steps: int = 1  # split each batch into this many microbatches


@dataclasses.dataclass(frozen=True)
class DataConfig:
  dataset: str = "tiny_shakespeare"  # project builder, "text_files", or a TFDS catalog name
  data_dir: str = ""  # where TFDS writes/reads prepared ArrayRecords; "" = <repo>/data/tfds
  files: str = ""  # text_files: a folder or glob of .txt / .jsonl files
  text_key: str = "text"  # the text field of each example (jsonl key / TFDS feature)
  validation_fraction: float = 0.1  # text_files: the last share of the corpus held out
  train_split: str = "train"
  eval_split: str = "validation"
  tokenizer: str = "char"  # char | sentencepiece | hf (a tokenizer.json)
  vocab_size: int = 0  # sentencepiece: size to train; 0 = 8000
  tokenizer_path: str = ""  # hf: path to tokenizer.json
  seq_len: int = 64  # tokens per example seen by the model
  batch_size: int = 12  # global batch, across all processes
  packing: str = "windows"  # windows: random windows over an in-memory token stream;
  #                           stream: documents packed into sequences as they are read;
  #                           documents: whole documents packed into rows with segment ids,
  #                           positions restarting per document, attention never crossing one
  shuffle_seed: int = 0
  num_workers: int = 0  # grain worker processes (0 = in the main process)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 2000
  seed: int = 0
  log_every: int = 10
  eval_every: int = 500  # 0: only at the end
  eval_batches: int = 0  # 0: the whole evaluation split
  eval_batch_size: int = 0  # 0: data.batch_size
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  async_checkpoints: bool = True
  # A step whose loss or gradient is NaN/Inf: "stop" ends the run naming the step (checkpoints
  # written before it stay the latest); "skip" leaves the state unchanged and counts the step.
  nonfinite: str = "stop"
  # Peak FLOP/s of all the devices together, for the logged MFU (train/mfu); 0: the published
  # peak of the accelerator (research/flops.py), or on CPUs a matmul measured at start-up.
  peak_flops: float = 0.0


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  """The pretraining objective (research/objectives.py) and its knobs."""

  name: str = "causal_lm"  # causal_lm | prefix_lm | masked_lm | span_corruption | ul2
  mask_rate: float = 0.15  # masked_lm: share of tokens selected
  mask_token_share: float = 0.8  # ... of which replaced by <mask>
  random_token_share: float = 0.1  # ... replaced by a random token (the rest kept)
  noise_density: float = 0.15  # span_corruption: share of tokens in noise spans
  mean_span_length: float = 3.0
  num_sentinels: int = 100  # <extra_id_0> ... added to the tokenizer


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """A fine-tuning task (research/tasks.py); name "" trains the pretraining objective instead.

  The task's kind (research/kinds/) picks the format for the family: encoder = classifier /
  span head, decoder = last-token classifier or prompt + response (loss on the response only),
  encoder_decoder = text-to-text.
  """

  name: str = ""  # "" | a bundled task: sst2 | squad | spa_eng | eng_spa | scitldr | alpaca
  # A task from your own files replaces the named one (README, "Your own task"): its kind
  # (classification | span_qa | text_to_text | instruction | preference), comma-separated
  # JSONL/TSV/CSV files (preference: JSONL of prompt, chosen, rejected),
  # and the fields the kind reads; metric by name (accuracy | exact_match | bleu | rouge | squad_f1).
  kind: str = ""
  train_files: str = ""
  eval_files: str = ""
  text_fields: str = ""  # classification: one field, or two for a pair ("premise,hypothesis")
  label_field: str = "label"
  input_field: str = ""  # text_to_text
  target_field: str = ""
  metric: str = ""  # "" = the kind's default (accuracy, squad_f1, rouge); text_to_text names one
  max_input_len: int = 0  # encoder input tokens (encoder_decoder); 0: data.seq_len
  max_target_len: int = 32  # response tokens incl. EOS, trained on and generated
  doc_stride: int = 64  # squad, encoder: tokens shared by consecutive windows of a long context
  max_answer_len: int = 30  # squad, encoder: longest predicted span, in tokens
  decoding: str = "greedy"  # greedy | beam: how evaluation generates
  beam_size: int = 4
  length_penalty: float = 0.6  # GNMT alpha for beam search
  eval_examples: int = 0  # examples the periodic in-training evaluation scores; 0: all
  eval_batch_size: int = 64  # rows per generation / prediction batch
  # Pack several short examples into each row (segment ids keep them apart): text-to-text,
  # prompt and instruction examples; losses and metrics are those of the unpacked examples.
  # Encoder-decoder rows hold data.seq_len input tokens (at least max_input_len) and targets in
  # the same proportion: raise data.seq_len to fit several examples per row.
  packing: bool = False
  # kind=preference (DPO): how far the tuned model may move from the reference (the model the
  # run starts from); the loss is -log sigmoid(dpo_beta * the log-ratio margin).
  dpo_beta: float = 0.1


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Low-rank adapters (research/lora.py): rank 0 trains every parameter (full fine-tuning).

  With rank r > 0 each targeted kernel W is used as W + (alpha / r) * A @ B; only A, B (and a
  task's head, which the pretrained model lacks) train, the base stays as init_from gave it.
  """

  rank: int = 0
  alpha: float = 16.0
  # Rank dropout: each of the r components of an update dropped with this probability per
  # step and layer (the update is merged into the kernel, so there is no adapter input to drop).
  dropout: float = 0.0
  # Comma-separated patterns (fnmatch) of the modules whose kernel gets an adapter: a pattern
  # without "/" matches the module's own name, one with "/" its whole path
  # ("decoder/block_0/self_attention/query"; scanned blocks sit under ".../layers/...").
  # Default: every attention projection (self and cross) and every MLP matrix.
  targets: str = "query,key,value,out,wi,wi_gate,wo"


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh ('data', 'fsdp', 'tensor'); -1 takes all remaining devices."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1


# Logical axis name -> mesh axes. Parameters and activations use these names; changing the
# parallelism layout means editing this table (or overriding it in one config), nothing else.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("length", None),
    ("position", None),
    ("relpos_buckets", None),
    ("norm", None),
    ("classes", None),
    ("token_types", None),
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_vocab", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  model: ModelConfig
  optimizer: OptimizerConfig
  data: DataConfig
  train: TrainConfig
  mesh: MeshConfig
  objective: ObjectiveConfig = ObjectiveConfig()
  task: TaskConfig = TaskConfig()
  lora: LoraConfig = LoraConfig()
  rules: tuple[tuple[str, Any], ...] = DEFAULT_RULES
  # The pretrained model whose parameters, architecture and tokenizer this run starts from: a
  # workdir (a pretraining run or an imported checkpoint), a named model (gemma3-270m), a GGUF
  # file or a Hugging Face folder; task heads it lacks are initialised, the optimizer is new.
  init_from: str = ""

  @classmethod
  def from_config_dict(cls, config: ml_collections.ConfigDict | dict,
                       notes: list[str] | None = None) -> "ExperimentConfig":
    """Builds and validates the typed config; raises ConfigError naming the bad entry.

    With `notes` (a list: what a new run's command line gives), entries left at a default that
    the rest of the config contradicts are derived from it first (derive_defaults), one note
    line each appended to `notes`. A saved config (a workdir's) is taken as it is."""
    raw = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    if notes is not None:
      raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
      notes.extend(derive_defaults(raw))
    unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ConfigError(f"unknown config section(s) {sorted(unknown)}; "
                        f"valid sections are {[f.name for f in dataclasses.fields(cls)]}")
    sections = {}
    for field in dataclasses.fields(cls):
      if field.name == "rules":
        rules = raw.get("rules", DEFAULT_RULES)
        sections["rules"] = tuple((str(k), _freeze(v)) for k, v in rules)
        continue
      if field.name == "init_from":
        if not isinstance(raw.get("init_from", ""), str):
          raise ConfigError(f"config init_from must be a str (a workdir, a named model, a GGUF "
                            f"file or a Hugging Face folder), got {raw['init_from']!r}")
        sections["init_from"] = raw.get("init_from", "")
        continue
      section_type = _SECTION_TYPES[field.name]
      sections[field.name] = _build_section(section_type, field.name, raw.get(field.name, {}))
    experiment = cls(**sections)
    validate(experiment)
    return experiment

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


_SECTION_TYPES = {
    "model": ModelConfig,
    "optimizer": OptimizerConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "mesh": MeshConfig,
    "objective": ObjectiveConfig,
    "task": TaskConfig,
    "lora": LoraConfig,
}


def _freeze(value):
  if isinstance(value, list):
    return tuple(_freeze(v) for v in value)
  return value


def _build_section(section_type, name: str, values: dict):
  fields = {f.name: f for f in dataclasses.fields(section_type)}
  unknown = set(values) - set(fields)
  if unknown:
    raise ConfigError(f"unknown key(s) {sorted(f'{name}.{k}' for k in unknown)}; "
                      f"valid keys of '{name}' are {sorted(fields)}")
  hints = typing.get_type_hints(section_type)
  kwargs = {}
  for key, value in values.items():
    expected = hints[key]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if expected in (int, float, str, bool) and not isinstance(value, expected) or (
        expected is int and isinstance(value, bool)):
      raise ConfigError(f"config {name}.{key} must be {expected.__name__}, got "
                        f"{type(value).__name__} {value!r}; fix the value in the config file "
                        f"or the --config.{name}.{key} flag")
    kwargs[key] = value
  return section_type(**kwargs)


_CHOICES = {
    ("model", "family"): ("decoder", "encoder", "encoder_decoder"),
    ("model", "position"): ("learned", "rope", "relative", "none"),
    ("model", "norm"): ("layernorm", "rmsnorm"),
    ("model", "norm_position"): ("pre", "post"),
    ("model", "mlp_activation"): ("gelu", "gelu_tanh", "relu", "swiglu", "geglu"),
    ("model", "remat"): ("none", "full", "dots_saveable"),
    ("model", "attention"): ("auto", "xla", "cudnn", "splash"),
    ("model", "param_dtype"): ("float32", "bfloat16"),
    ("model", "activation_dtype"): ("float32", "bfloat16"),
    ("model", "matmul_dtype"): ("float32", "bfloat16", "auto"),
    ("model", "rope_scaling"): ("none", "linear", "llama3"),
    ("optimizer", "schedule"): ("cosine", "linear", "constant"),
    ("optimizer", "decay_rule"): ("matrices", "matrices_no_embed"),
    ("data", "tokenizer"): ("char", "sentencepiece", "hf"),
    ("data", "packing"): ("windows", "stream", "documents"),
    ("train", "nonfinite"): ("stop", "skip"),
    ("task", "decoding"): ("greedy", "beam"),
}

# Which pretraining objectives each family can train with (objectives.TRANSFORMS implements
# exactly these pairs; a test checks that the two agree).
FAMILY_OBJECTIVES = {
    "decoder": ("causal_lm", "prefix_lm"),
    "encoder": ("masked_lm",),
    "encoder_decoder": ("span_corruption", "prefix_lm", "ul2"),
}


def derive_defaults(raw: dict[str, Any]) -> list[str]:
  """Sets, in the raw config dict, the entries a user would otherwise have to know to set;
  returns one note line per entry set. Only an entry still at its default is derived, and a
  run from init_from takes its architecture from the pretrained model instead.

  - A classification task from the user's files with two text fields on an encoder: token
    types (sentence A / B embeddings), model.num_token_types=2.
  - data.seq_len above model.max_len: max_len follows it (the position table, or the longest
    context a decoder decodes with), where that was the only reason to stop.
  (The SentencePiece vocabulary a small corpus can fill is derived when it is trained:
  research/data/tokenizers.py.)"""
  def get(section: str, key: str):
    default = getattr(_SECTION_TYPES[section](), key)
    return raw.get(section, {}).get(key, default)

  def put(section: str, key: str, value) -> None:
    raw.setdefault(section, {})[key] = value

  notes = []
  if raw.get("init_from"):
    return notes
  fields = [f.strip() for f in str(get("task", "text_fields")).split(",") if f.strip()]
  if (get("model", "family") == "encoder" and get("task", "train_files")
      and get("task", "kind") == "classification" and len(fields) == 2
      and get("model", "num_token_types") == 0):
    put("model", "num_token_types", 2)
    notes.append(f"note: task.text_fields={','.join(fields)} is a sentence pair: "
                 "model.num_token_types=2 (sentence A / B embeddings); set "
                 "model.num_token_types to choose")
  seq_len, max_len = get("data", "seq_len"), get("model", "max_len")
  # Where validate() would stop: a learned position table, or a decoder's pretraining context.
  stops = get("model", "position") == "learned" or (
      get("model", "family") != "encoder" and not get("task", "name"))
  if stops and isinstance(seq_len, int) and isinstance(max_len, int) and seq_len > max_len > 0:
    put("model", "max_len", seq_len)
    notes.append(f"note: data.seq_len={seq_len} is longer than model.max_len={max_len}: "
                 f"model.max_len={seq_len}; set model.max_len to choose")
  return notes


def validate(config: ExperimentConfig) -> None:
  """Checks what can be checked before any device is touched; raises ConfigError."""
  for (section, key), choices in _CHOICES.items():
    value = getattr(getattr(config, section), key)
    if value not in choices:
      raise ConfigError(f"config {section}.{key}={value!r} is not one of {list(choices)}")
  m, d, o = config.model, config.data, config.optimizer
  for key in ("num_layers", "num_heads", "embed_dim", "mlp_dim", "max_len"):
    if getattr(m, key) <= 0:
      raise ConfigError(f"config model.{key} must be positive, got {getattr(m, key)}")
  if m.head_dim == 0 and m.embed_dim % m.num_heads:
    raise ConfigError(f"model.embed_dim={m.embed_dim} is not divisible by model.num_heads="
                      f"{m.num_heads}; change one of them or set model.head_dim")
  if m.num_heads % m.resolved_kv_heads:
    raise ConfigError(f"model.num_heads={m.num_heads} is not a multiple of model.num_kv_heads="
                      f"{m.num_kv_heads}; grouped-query attention needs whole groups")
  if set(m.layer_pattern) - {"L", "G"}:
    raise ConfigError(f"model.layer_pattern={m.layer_pattern!r} may hold only 'L' (local) and "
                      "'G' (global) layers, e.g. 'LLLLLG'")
  if "L" in m.layer_pattern and m.local_window <= 0:
    raise ConfigError(f"model.layer_pattern={m.layer_pattern!r} has local layers but "
                      "model.local_window=0; set the local layers' window, e.g. 512")
  if "L" in m.layer_pattern and m.position == "relative":
    raise ConfigError(f"model.layer_pattern={m.layer_pattern!r} with position='relative': T5's "
                      "relative bias is one table shared by every layer and cannot follow two "
                      "cache sizes; use position='rope' with local layers")
  for key in ("query_pre_attn_scalar", "attn_logit_softcap", "final_logit_softcap",
              "local_window"):
    if getattr(m, key) < 0:
      raise ConfigError(f"config model.{key}={getattr(m, key)} must be >= 0 (0: off)")
  if m.rope_scaling != "none" and not m.rope_scaling_factor >= 1.0:
    raise ConfigError(f"model.rope_scaling_factor={m.rope_scaling_factor} must be >= 1 with "
                      f"model.rope_scaling={m.rope_scaling!r}")
  if m.rope_scaling == "llama3" and not m.rope_high_freq_factor > m.rope_low_freq_factor > 0:
    raise ConfigError("model.rope_scaling='llama3' needs rope_high_freq_factor > "
                      "rope_low_freq_factor > 0")
  if m.position == "rope" and m.resolved_head_dim % 2:
    raise ConfigError(f"rotary positions need an even head dimension, got {m.resolved_head_dim}")
  if d.seq_len <= 0 or d.batch_size <= 0:
    raise ConfigError("data.seq_len and data.batch_size must be positive")
  if d.seq_len > m.max_len and m.position == "learned":
    raise ConfigError(f"data.seq_len={d.seq_len} is longer than the position table "
                      f"model.max_len={m.max_len}; raise model.max_len or lower data.seq_len")
  # max_len bounds decoding's KV cache (an encoder never decodes). A fine-tuning task checks
  # its own prompt and answer lengths against it when it generates.
  if (d.seq_len > m.max_len and m.position == "rope" and m.family != "encoder"
      and not config.task.name):
    raise ConfigError(f"data.seq_len={d.seq_len} is longer than model.max_len={m.max_len}, the "
                      "longest context the model decodes with; raise model.max_len or lower "
                      "data.seq_len")
  if not 0.0 < d.validation_fraction < 1.0:
    raise ConfigError(f"data.validation_fraction={d.validation_fraction} must be in (0, 1)")
  if d.dataset == "text_files" and not d.files:
    raise ConfigError("data.dataset='text_files' needs data.files (a folder or glob of "
                      ".txt/.jsonl files)")
  if o.grad_accum_steps <= 0 or d.batch_size % o.grad_accum_steps:
    raise ConfigError(f"data.batch_size={d.batch_size} is not divisible by "
                      f"optimizer.grad_accum_steps={o.grad_accum_steps}")
  for section, key, minimum in [
      ("train", "steps", 1), ("train", "log_every", 1), ("train", "checkpoint_every", 1),
      ("train", "keep_checkpoints", 1), ("train", "eval_every", 0), ("train", "eval_batches", 0),
      ("train", "eval_batch_size", 0), ("train", "peak_flops", 0),
      ("model", "vocab_size", 0), ("model", "num_kv_heads", 0),
      ("model", "head_dim", 0), ("model", "num_decoder_layers", 0), ("model", "attention_window", 0),
      ("model", "num_token_types", 0), ("model", "logits_chunk", 0), ("data", "vocab_size", 0),
      ("data", "num_workers", 0),
      ("optimizer", "warmup_steps", 0), ("optimizer", "decay_steps", 0),
      ("objective", "num_sentinels", 0 if config.task.name or config.objective.name not in (
          "span_corruption", "ul2") else 1)]:
    value = getattr(getattr(config, section), key)
    if value < minimum:
      raise ConfigError(f"config {section}.{key}={value} must be >= {minimum}" +
                        (" (train.steps must be positive)" if key == "steps" else ""))
  for section_type in _SECTION_TYPES.values():  # nan and inf pass every comparison below
    section = next(n for n, t in _SECTION_TYPES.items() if t is section_type)
    for f in dataclasses.fields(section_type):
      value = getattr(getattr(config, section), f.name)
      if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config {section}.{f.name}={value} must be a finite number")
  for key in ("learning_rate", "end_learning_rate", "weight_decay", "clip_norm", "eps"):
    if getattr(o, key) < 0:
      raise ConfigError(f"config optimizer.{key}={getattr(o, key)} must be >= 0")
  for section, key in (("train", "seed"), ("data", "shuffle_seed")):
    value = getattr(getattr(config, section), key)
    if not 0 <= value < 2**31:  # seeds the PRNG keys and grain's and numpy's generators
      raise ConfigError(f"config {section}.{key}={value} must be in [0, 2**31); pass a "
                        "non-negative seed")
  rope_bases = ("rope_base", "local_rope_base") if "L" in m.layer_pattern else ("rope_base",)
  for key in rope_bases if m.position == "rope" else ():
    if not getattr(m, key) > 1.0:
      raise ConfigError(f"config model.{key}={getattr(m, key)} must be > 1 (the base of the "
                        "rotary positions' wavelengths, e.g. 10000)")
  if m.position == "relative":
    if m.relative_buckets < 4 or m.relative_max_distance <= m.relative_buckets // 2:
      raise ConfigError(f"model.relative_buckets={m.relative_buckets} must be >= 4 and "
                        f"model.relative_max_distance={m.relative_max_distance} above half of "
                        "it with model.position='relative' (T5: 32 and 128)")
  if not (0 <= o.b1 < 1 and 0 <= o.b2 < 1):
    raise ConfigError(f"optimizer betas must be in [0, 1), got b1={o.b1}, b2={o.b2}")
  if not 0.0 <= m.dropout_rate < 1.0:
    raise ConfigError(f"model.dropout_rate={m.dropout_rate} must be in [0, 1)")
  task = config.task
  if (not task.name and d.packing == "documents" and m.family == "decoder"
      and config.objective.name == "prefix_lm"):
    raise ConfigError("objective.name='prefix_lm' on the decoder cannot use "
                      "data.packing='documents' (one prefix per row, not per document); use "
                      "data.packing='stream' or 'windows'")
  user_only = [f"task.{key}" for key in ("kind", "eval_files", "text_fields", "input_field",
                                         "target_field")
               if getattr(task, key) != getattr(TaskConfig(), key)]
  if not task.train_files and user_only:
    running = (f"the bundled task {task.name!r}" if task.name else
               f"the pretraining objective {config.objective.name!r}")
    raise ConfigError(f"{', '.join(user_only)} describe(s) a task from your own files, but "
                      f"task.train_files is empty, so {running} would run with it ignored: "
                      "give task.train_files (and task.eval_files) too, or drop "
                      f"{', '.join(user_only)}")
  if task.train_files and not task.name:
    raise ConfigError("task.train_files replaces the task of a task config; start from one of "
                      "the wanted family, e.g. --config=configs/sst2_bert.py")
  for key, minimum in (("max_input_len", 0), ("max_target_len", 2), ("doc_stride", 0),
                       ("max_answer_len", 1), ("beam_size", 1), ("eval_examples", 0),
                       ("eval_batch_size", 1)):
    if getattr(task, key) < minimum:
      raise ConfigError(f"config task.{key}={getattr(task, key)} must be >= {minimum}")
  if not task.dpo_beta > 0:
    raise ConfigError(f"config task.dpo_beta={task.dpo_beta} must be > 0 (DPO's beta, e.g. 0.1)")
  if task.train_files and task.label_field in [f.strip() for f in task.text_fields.split(",")]:
    raise ConfigError(f"task.label_field={task.label_field!r} is also among task.text_fields="
                      f"{task.text_fields!r}: the model would read the answer it is asked for; "
                      "list only the input fields in task.text_fields")
  if task.name:  # the task's kind checks that it fits the family (research/taskdefs.py)
    taskdefs.check(config)
  objectives = FAMILY_OBJECTIVES[m.family]
  if not task.name and config.objective.name not in objectives:  # a task replaces the objective
    fits = [f for f, objs in FAMILY_OBJECTIVES.items() if config.objective.name in objs]
    raise ConfigError(f"objective.name='{config.objective.name}' does not fit "
                      f"model.family='{m.family}'; the {m.family} family trains with "
                      f"{list(objectives)}" + (f", and {config.objective.name} needs "
                                               f"model.family in {fits}" if fits else ""))
  lora = config.lora
  if lora.rank < 0:
    raise ConfigError(f"config lora.rank={lora.rank} must be >= 0 (0: full fine-tuning)")
  if lora.rank and not config.init_from:
    raise ConfigError(f"lora.rank={lora.rank} adapts a pretrained model, and init_from is empty; "
                      "set --config.init_from=gemma3-270m (or a workdir, GGUF file or Hugging "
                      "Face folder), or lora.rank=0 to train every parameter")
  if lora.rank and not lora.alpha > 0:
    raise ConfigError(f"config lora.alpha={lora.alpha} must be > 0 (the update's scale is "
                      "alpha / rank)")
  if not 0.0 <= lora.dropout < 1.0:
    raise ConfigError(f"config lora.dropout={lora.dropout} must be in [0, 1)")
  if lora.rank and not [t for t in lora.targets.split(",") if t.strip()]:
    raise ConfigError("config lora.targets is empty; name the projections to adapt, e.g. "
                      "'query,key,value,out,wi,wi_gate,wo'")
  ob = config.objective
  if not (0 < ob.mask_rate < 1 and 0 < ob.noise_density < 1 and ob.mean_span_length >= 1
          and ob.mask_token_share + ob.random_token_share <= 1):
    raise ConfigError("objective rates must satisfy 0 < mask_rate < 1, 0 < noise_density < 1, "
                      "mean_span_length >= 1, mask_token_share + random_token_share <= 1")


def base_config() -> ml_collections.ConfigDict:
  """A ConfigDict holding every field's default: config files start here and change what they
  choose, so any field can be overridden from the command line (--config.model.x=...)."""
  config = ml_collections.ConfigDict()
  for name, section_type in _SECTION_TYPES.items():
    config[name] = ml_collections.ConfigDict(dataclasses.asdict(section_type()))
  config.rules = DEFAULT_RULES
  config.init_from = ""
  return config


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """Imports a config file and calls its get_config() (what the CLI flag does)."""
  file = pathlib.Path(path)
  if not file.is_file():
    raise ConfigError(f"config file {path} does not exist; pass --config=configs/<name>.py")
  spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
      raise ConfigError(f"config file {path} defines no get_config(); define one that returns "
                        "research.config.base_config() with your changes")
    config = module.get_config()
  except SyntaxError as e:
    raise ConfigError(f"config file {path} has a syntax error ({e.filename}:{e.lineno}: "
                      f"{e.msg}); fix the file") from None
  except ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (whatever the file's code raises)
    raise ConfigError(f"config file {path} failed to load ({type(e).__name__}: {e}); fix the "
                      "file, or install what it imports") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"config file {path}: get_config() returned {type(config).__name__}, not a "
                      "ConfigDict; return research.config.base_config() with your changes")
  return config


def derive(config_file: str, base_name: str) -> ml_collections.ConfigDict:
  """The config of a sibling file: variants start from it and change a few entries,
  e.g. `config = derive(__file__, "sst2_bert.py"); config.model.family = "decoder"`."""
  return load_config_file(str(pathlib.Path(config_file).with_name(base_name)))
