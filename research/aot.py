"""Ahead-of-time compilation for a TPU slice, on a machine without one: does a config fit, and
how fast could it run there?

  python -m research.aot --config=configs/X.py --topology=v5p:4x4x4 [--num_slices=2] \
      [--config.mesh.fsdp=-1 ...] [--json=FILE] [--programs=train,eval,decode]

`--topology` takes JAX's topology names (`v5e:2x2`, `v5p:4x4x4`, `v4:2x2x2`, `v6e:4x4`) or Cloud
TPU accelerator types (`v5litepod-16`, `v5p-128`, `v4-32`, `v6e-8`; v4 and v5p types count
TensorCores, two per chip). libtpu (requirements-tpu.txt) describes the slice's devices;
research.train's own functions build the mesh (the config's mesh section and logical rules), the
state shardings and the jitted, donated train step, which is lowered over abstract arguments
and compiled for those devices. So is the eval step and, for generative models, one KV-cache
decoding step. With LoRA (lora.rank > 0) the state is the adapters and their optimizer state
and the frozen base is an argument of its own, as research.train runs it; init_from's
architecture is taken when init_from is on this machine (else the config's, with a note).
For each program it prints:
  - per-device bytes: parameters, optimizer state, batch (from their shardings), and XLA's
    buffer assignment (arguments, outputs, temporaries, code); their sum against the chip's HBM;
  - FLOPs per device: XLA's count of the compiled program against research/flops.py;
  - the collectives of the optimized HLO: kind, count, bytes;
  - a roofline lower bound on the step time (an estimate, not a measurement): the largest of
    FLOPs at the chip's published bf16 peak, HBM bytes at its bandwidth, and collective bytes
    (as a ring moves them) at its interchip bandwidth, and the MFU that bound implies.
XLA's cost analysis counts the body of a loop once, so for scanned layers (model.scan_layers)
the FLOP, byte and collective figures come from the same program unscanned at 1 and 2 layers,
extrapolated linearly to the config's depth; the memory figures are the scanned program's own.
Exit status 2 with one line when a program does not fit.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
import re
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import flags
from etils import epath
from ml_collections import config_flags

from research import (bench, cli, decode, flops, gguf_io, matmul, models, objectives, paths,
                      sharding, tasks, train)
from research.hlo import Costs, global_flops
from research.checkpoint import abstract_like
from research.config import ConfigError, ExperimentConfig, UserError

GiB = 1024**3


# ---------------------------------------------------------------------------------------------
# Chips and topologies
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures of a TPU generation (Cloud TPU documentation)."""

  name: str
  hbm_bytes: int
  bf16_flops: float  # dense peak
  hbm_bandwidth: float  # bytes/s
  ici_bandwidth: float  # bytes/s: the "interchip interconnect BW" figure
  torus_dims: int  # 2 (v5e, v6e) or 3 (v4, v5p)
  cores_per_chip_in_type: int  # what a Cloud accelerator type's number counts


CHIPS = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12, 1228e9, 2400e9 / 8, 3, 2),
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12, 819e9, 1600e9 / 8, 2, 1),
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12, 2765e9, 4800e9 / 8, 3, 2),
    "v6e": Chip("TPU v6e", 32 * GiB, 918e12, 1640e9, 3584e9 / 8, 2, 1),
}
# Cloud TPU accelerator-type prefixes -> chip generation.
TYPE_PREFIXES = {"v4": "v4", "v5litepod": "v5e", "v5e": "v5e", "v5p": "v5p", "v6e": "v6e"}


class TopologyError(UserError):
  pass


def valid_names() -> str:
  return ("JAX topology names v4:AxBxC, v5p:AxBxC, v5e:AxB, v6e:AxB (e.g. v5e:2x2, v5p:4x4x4) or "
          "Cloud TPU types v4-N, v5p-N (N TensorCores, 2 per chip), v5litepod-N, v6e-N (N chips)")


def torus_shape(chips: int, dims: int) -> tuple[int, ...]:
  """The slice shape Cloud TPU gives `chips` chips: from 2x2(x1), the smallest dimension doubles
  (the last of equal ones), e.g. v5p 64 chips -> 4x4x4, v5e 32 chips -> 4x8."""
  shape = [1] * dims
  if chips == 1:
    return tuple(shape)
  shape[0] = shape[1] = 2
  while math.prod(shape) < chips:
    smallest = min(shape)
    shape[max(i for i, s in enumerate(shape) if s == smallest)] *= 2
  if math.prod(shape) != chips:
    raise TopologyError(f"{chips} chips is not a TPU slice size (a power of two); "
                        f"valid: {valid_names()}")
  return tuple(shape)


@dataclasses.dataclass(frozen=True)
class Topology:
  generation: str  # key of CHIPS
  name: str  # JAX's topology name, e.g. v5p:4x4x4
  chips: int  # per slice

  @property
  def chip(self) -> Chip:
    return CHIPS[self.generation]


def parse_topology(text: str) -> Topology:
  """A JAX topology name (v5e:2x2) or a Cloud TPU accelerator type (v5litepod-16, v5p-128)."""
  text = text.strip().lower()
  named = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+)+)", text)
  if named:
    generation, dims = named.group(1), tuple(int(d) for d in named.group(2).split("x"))
    if len(dims) != CHIPS[generation].torus_dims:
      raise TopologyError(f"topology {text!r}: {generation} slices have "
                          f"{CHIPS[generation].torus_dims} dimensions; valid: {valid_names()}")
    return Topology(generation, text, math.prod(dims))
  typed = re.fullmatch(r"(v4|v5litepod|v5e|v5p|v6e)-(\d+)", text)
  if typed:
    generation = TYPE_PREFIXES[typed.group(1)]
    chip = CHIPS[generation]
    count = int(typed.group(2))
    if count % chip.cores_per_chip_in_type:
      raise TopologyError(f"{text}: {generation} types count TensorCores, "
                          f"{chip.cores_per_chip_in_type} per chip; valid: {valid_names()}")
    chips = count // chip.cores_per_chip_in_type
    dims = torus_shape(chips, chip.torus_dims)
    return Topology(generation, f"{generation}:{'x'.join(map(str, dims))}", chips)
  raise TopologyError(f"unknown TPU topology {text!r}; valid: {valid_names()}")


def tpu_devices(topology: Topology, num_slices: int = 1) -> list:
  """The devices of `num_slices` slices of `topology`, described by libtpu (no TPU needed)."""
  # Compile-only: no chip is opened, so several processes (test workers, a CLI started by a
  # test) may load libtpu at once; and there is no Cloud TPU metadata server to ask.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  try:
    # libtpu's topologies: only when compiling for a TPU
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
    kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
    desc = topologies.get_topology_desc(topology_name=topology.name, platform="tpu", **kwargs)
  except (RuntimeError, ValueError) as e:
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "tpu" in message.lower() and ("unknown backend" in message.lower() or
                                     "not found" in message.lower()):
      raise TopologyError("libtpu is not installed; run scripts/setup.sh (it installs "
                          "requirements-tpu.txt)") from e
    raise TopologyError(f"topology {topology.name!r}: {message}; valid: {valid_names()}") from e
  return list(desc.devices)


def per_device_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs carrying shardings (the largest
  shard: every device holds one of the same shape)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


# ---------------------------------------------------------------------------------------------
# The programs: research.train's train and eval steps, one decoding step
# ---------------------------------------------------------------------------------------------


def placeholder_vocab(config: ExperimentConfig) -> tuple[ExperimentConfig, str]:
  """A config with model.vocab_size set (0 means "the tokenizer's", unknown before data is read):
  data.vocab_size for SentencePiece (8000 if 0), 256 for characters (an upper bound), the
  tokenizer file's size for hf; plus the objective's special tokens."""
  if config.model.vocab_size > 0:
    return config, ""
  data = config.data
  if data.tokenizer == "hf" and data.tokenizer_path:
    # HF tokenizers: only for a tokenizer.json
    import tokenizers  # pylint: disable=import-outside-toplevel
    size = tokenizers.Tokenizer.from_file(data.tokenizer_path).get_vocab_size()
  elif data.tokenizer == "sentencepiece":
    size = data.vocab_size or 8000
  else:
    size = 256
  size += len(objectives.required_special_tokens(config.objective))
  note = (f"model.vocab_size=0 (the tokenizer's): compiled with {size} for the {data.tokenizer} "
          "tokenizer; pass --config.model.vocab_size=N for the exact figure")
  return dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=size)), note


def batch_spec(config: ExperimentConfig, mesh, batch_size: int | None = None) -> dict:
  """Abstract global batch, sharded as research.train shards it."""
  spec = sharding.batch_sharding(mesh, config.rules)
  local = bench.synthetic_batch(config, batch_size=batch_size)
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=spec) for k, v in local.items()}


def _batch_axis_spec(mesh, config: ExperimentConfig, leaf, batch: int):
  """A cache leaf sharded like the batch along its first axis of size `batch` (scanned layers
  put a layer axis before it), the rest replicated."""
  batch_axes = tuple(nn.logical_to_mesh_axes(("batch",), config.rules))
  axes = [None] * len(leaf.shape)
  if batch in leaf.shape:
    axes[list(leaf.shape).index(batch)] = batch_axes[0] if batch_axes else None
  return jax.sharding.NamedSharding(mesh, sharding.fit_spec(axes, leaf.shape, dict(mesh.shape)))


def is_generative(config: ExperimentConfig) -> bool:
  if not models.family_of(config.model).generates:
    return False
  if config.task.name:
    return tasks.format_name(config) in ("prompt", "seq2seq")
  return True


def decode_batch_size(config: ExperimentConfig) -> int:
  if config.task.name:
    return config.task.eval_batch_size
  return config.train.eval_batch_size or config.data.batch_size


def abstract_base(exp: train.Experiment) -> Any:
  """With LoRA, the frozen base as research.train holds it (every parameter of the model, on
  the shardings of its logical axes), abstract: a compile needs its shapes, never its values."""
  shapes = jax.eval_shape(functools.partial(train.init_params, exp.model, exp.config),
                          jax.random.key(0))
  return abstract_like(nn.unbox(shapes), exp.frozen_shardings)


def lower_programs(exp: train.Experiment, programs: tuple[str, ...]) -> dict[str, tuple]:
  """{program: (lowered, {part: abstract tree})} for research.train's own jitted functions.
  With LoRA the train and eval steps take the state's adapters and, as an argument of its own
  (not donated, not differentiated), the frozen base; decoding runs on the merged tree, which
  has the base's shapes."""
  cfg, mesh = exp.config, exp.mesh
  lora = bool(cfg.lora.rank)
  if lora and exp.frozen is None:
    exp.frozen = abstract_base(exp)  # what make_step_fns would otherwise load from init_from
  step_fn, eval_fn = train.make_step_fns(exp)
  state = abstract_like(exp.abstract_state, exp.shardings)
  params = ({"trained parameters": state.params, "frozen base": exp.frozen} if lora else
            {"parameters": state.params})
  out = {}
  with jax.set_mesh(mesh), nn.logical_axis_rules(cfg.rules):
    if "train" in programs:
      batch = batch_spec(cfg, mesh)
      out["train"] = (step_fn.lower(state, batch), {
          **params, "optimizer state": state.opt_state, "batch": batch})
    if "eval" in programs:
      batch = batch_spec(cfg, mesh, cfg.train.eval_batch_size or cfg.data.batch_size)
      out["eval"] = (eval_fn.lower(state.params, batch), {**params, "batch": batch})
    if "decode" in programs and is_generative(cfg):
      out["decode"] = lower_decode(exp, exp.frozen if lora else state.params)
  return out


def lower_decode(exp: train.Experiment, params) -> tuple:
  """decode.step, the one decoding step of every family, over a cache for the config's decoding
  batch (an encoder-decoder's holds the encoder's cross-attention keys and values)."""
  cfg, mesh, model = exp.config, exp.mesh, exp.model
  b = decode_batch_size(cfg)
  input_len, _ = flops.sequence_lengths(cfg)
  cache = jax.eval_shape(lambda: decode.init_cache(model, b, input_len))
  place = lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                            sharding=_batch_axis_spec(mesh, cfg, leaf, b))
  cache = jax.tree.map(place, cache)
  tokens = place(jax.ShapeDtypeStruct((b,), jnp.int32))
  step = jax.jit(functools.partial(decode.step, model), donate_argnums=(1,))
  return step.lower(params, cache, tokens), {"parameters": params, "KV cache": cache}


def kernel_flops(config: ExperimentConfig, program: str, num_devices: int) -> float:
  """research/flops.py's attention-score FLOPs of one call of the program, per device: what the
  splash kernels compute and XLA does not count (its remat recomputation aside: the kernels
  skip the blocks a causal or local mask hides, about half, which their backward pass's
  recomputation of the scores about makes up)."""
  model = config.model
  input_len, target_len = flops.sequence_lengths(config)
  forward = flops.forward_flops(model, input_len, target_len, head=flops.training_head(config))
  scores = sum(v for k, v in forward.items() if k.endswith("scores"))
  if program == "train":
    return 3 * scores * config.data.batch_size / num_devices
  if program == "eval":
    return scores * (config.train.eval_batch_size or config.data.batch_size) / num_devices
  return 0.0


def analytic_flops(config: ExperimentConfig, program: str, num_devices: int) -> float | None:
  """research/flops.py's model FLOPs of one call of the program, per device."""
  if program == "train":
    return flops.training_flops_per_step(config) / num_devices
  if program == "eval":
    batch = config.train.eval_batch_size or config.data.batch_size
    return flops.training_flops_per_example(config) / 3 * batch / num_devices
  if program == "decode":
    return flops.decode_step_flops(config, decode_batch_size(config)) / num_devices
  return None


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def memory(compiled, parts: dict[str, Any], hbm_per_device: float) -> dict[str, Any]:
  stats = compiled.memory_analysis()
  out = {f"{name} bytes": per_device_bytes(tree) for name, tree in parts.items()}
  if stats is not None:
    xla = {k: int(getattr(stats, f"{k}_size_in_bytes")) for k in
           ("argument", "output", "alias", "temp", "generated_code")}
    out.update({f"{k} bytes": v for k, v in xla.items()})
    # Donated arguments alias outputs: counted once.
    out["total bytes"] = (xla["argument"] + xla["output"] - xla["alias"] + xla["temp"] +
                          xla["generated_code"])
  else:
    out["total bytes"] = sum(out.values())
  out["hbm bytes"] = hbm_per_device
  out["fits"] = out["total bytes"] <= hbm_per_device
  return out


def refused_memory(error: Exception, parts: dict[str, Any], hbm_per_device: float) -> dict:
  """The memory entry of a program XLA refused to compile for lack of HBM (its message gives
  the temporaries' bytes and the HBM it had), or the error again if it is another one."""
  text = str(error)
  found = re.search(r"HLO temporaries \(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)", text)
  if "RESOURCE_EXHAUSTED" not in text or not found:
    raise error
  out = {f"{name} bytes": per_device_bytes(tree) for name, tree in parts.items()}
  out["temp bytes"] = float(found.group(1)) * GiB
  out["total bytes"] = out["temp bytes"] + sum(v for k, v in out.items() if k != "temp bytes")
  out["hbm bytes"] = hbm_per_device
  out["fits"] = False
  out["refused_by_compiler"] = f"XLA: temporaries {found.group(1)} GiB > {found.group(2)} GiB"
  return out


def roofline(costs: Costs, model_flops: float | None, chip: Chip, per_chip: float,
             kernel_flops: float = 0.0) -> dict:
  """Lower bound on one call's seconds on this chip (an estimate): perfect overlap of compute,
  HBM traffic and collectives, each at its published peak. per_chip: devices per chip.
  The compute term is XLA's FLOPs (a remat's recomputation included, which flops.py leaves out)
  plus kernel_flops, the attention FLOPs inside Pallas kernels (splash), which XLA does not
  count; and at least the model's."""
  peak = chip.bf16_flops / per_chip
  compute_s = max(costs.flops + kernel_flops, model_flops or 0.0) / peak
  hbm_s = costs.hbm_bytes / (chip.hbm_bandwidth / per_chip)
  wire = sum(c["wire_bytes"] for c in costs.collectives.values())
  collective_s = wire / (chip.ici_bandwidth / per_chip)
  bound = max(compute_s, hbm_s, collective_s)
  out = {"compute_s": compute_s, "hbm_s": hbm_s, "collective_s": collective_s,
         "step_s_lower_bound": bound,
         "limited_by": max((("compute", compute_s), ("HBM bandwidth", hbm_s),
                            ("collectives", collective_s)), key=lambda kv: kv[1])[0]}
  if model_flops and bound > 0:
    out["mfu_upper_bound"] = model_flops / (bound * peak)
  return out


def _layer_counts(config: ExperimentConfig) -> tuple[int, int]:
  m = config.model
  return m.num_layers, models.family_of(m).decoder_layers(m)


def _with_layers(config: ExperimentConfig, enc: int, dec: int) -> ExperimentConfig:
  model = dataclasses.replace(config.model, scan_layers=False, num_layers=enc,
                              num_decoder_layers=dec)
  return dataclasses.replace(config, model=model)


def program_flops(config: ExperimentConfig, devices, lowered: dict) -> dict[str, float]:
  """Per-device FLOPs of each lowered program. A scanned loop's body is counted once, so for
  scanned layers they come from the unscanned program lowered (not compiled) at a few depths:
  flops(E, D) = a + b E + c D, solved exactly and evaluated at the config's depth."""
  n = len(devices)
  if not config.model.scan_layers:
    return {name: global_flops(low) / n for name, (low, _) in lowered.items()}
  enc, dec = _layer_counts(config)
  points = [(1, 1), (2, 1), (1, 2)] if dec else [(1, 0), (2, 0)]
  weights = [1 - (enc - 1) - (dec - 1), enc - 1, dec - 1] if dec else [2 - enc, enc - 1]
  out = dict.fromkeys(lowered, 0.0)
  for (e, d), w in zip(points, weights):
    small = bench.synthetic_experiment(_with_layers(config, e, d), devices)
    for name, (low, _) in lower_programs(small, tuple(lowered)).items():
      out[name] += w * global_flops(low) / n
  return out


def pretrained_architecture(config: ExperimentConfig) -> tuple[ExperimentConfig, str]:
  """The config research.train runs: with init_from, its model's architecture and tokenizer
  (train.inherit_pretrained). Where init_from is not on this machine (a 27B model's weights
  kept where it trains), the config as it is and a note: the programs depend only on the
  model's shapes, which a configs/scale/ file gives in full."""
  source = config.init_from
  if (not source or source in gguf_io.PRETRAINED or "://" in source or
      epath.Path(source).exists()):
    return train.inherit_pretrained(config), ""
  return config, (f"init_from={source} is not on this machine: compiled with the config's own "
                  "model section (a compile needs the base's shapes, not its values)")


def compile_report(config: ExperimentConfig, topology: Topology, num_slices: int = 1,
                   programs: tuple[str, ...] = ("train", "eval", "decode"),
                   notes: tuple[str, ...] = ()) -> dict[str, Any]:
  """Compiles the config's programs for the slice and returns the figures (see module doc).
  `notes`: lines the report carries (pretrained_architecture's)."""
  config, note = placeholder_vocab(config)
  devices = tpu_devices(topology, num_slices)
  chips = topology.chips * num_slices
  per_chip = len(devices) / chips  # devices per chip (v4 compiles one per TensorCore)
  hbm_per_device = topology.chip.hbm_bytes / per_chip
  exp = bench.synthetic_experiment(config, devices)
  cfg = exp.config
  if cfg.lora.rank:
    exp.frozen = abstract_base(exp)
  count = lambda tree: int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))
  trained = count(exp.abstract_state.params)
  report: dict[str, Any] = {
      "topology": topology.name, "num_slices": num_slices, "chips": chips,
      "devices": len(devices), "device_kind": devices[0].device_kind,
      "mesh": dict(exp.mesh.shape),
      # The model's parameters; with LoRA the optimizer trains only the adapters (and a head).
      "parameters": count(exp.frozen) if cfg.lora.rank else trained,
      "trained_parameters": trained, "lora_rank": cfg.lora.rank,
      "matmul_dtype": _resolved_dtype(cfg, exp.mesh),
      "notes": [n for n in (*notes, note) if n],
      "libtpu_init_args": os.environ.get("LIBTPU_INIT_ARGS", ""),
      "programs": {}}
  start = time.perf_counter()
  lowered = lower_programs(exp, programs)
  report["lower_s"] = time.perf_counter() - start
  compiled = {}
  for name, (low, parts) in lowered.items():
    start = time.perf_counter()
    try:
      compiled[name] = low.compile()
      mem = memory(compiled[name], parts, hbm_per_device)
    except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses what cannot fit
      mem = refused_memory(e, parts, hbm_per_device)
    report["programs"][name] = {"compile_s": time.perf_counter() - start, "memory": mem}
  flops_ = program_flops(cfg, devices, lowered)
  costs = {name: Costs.of(c.as_text(), flops_[name], len(devices))
           for name, c in compiled.items()}
  for name, entry in report["programs"].items():
    if name not in compiled:
      continue
    model_flops = analytic_flops(cfg, name, len(devices))
    entry["xla_flops"] = costs[name].flops
    # Pallas kernels (splash attention) are Mosaic custom calls in the compiled program.
    entry["pallas_kernel_calls"] = compiled[name].as_text().count(
        'custom_call_target="tpu_custom_call"')
    entry["analytic_flops"] = model_flops
    entry["kernel_flops"] = (kernel_flops(cfg, name, len(devices))
                             if entry["pallas_kernel_calls"] else 0.0)
    entry["hbm_bytes_accessed"] = costs[name].hbm_bytes
    entry["collectives"] = costs[name].collectives
    entry["roofline"] = roofline(costs[name], model_flops, topology.chip, per_chip,
                                 entry["kernel_flops"])
  report["compile_s"] = sum(p["compile_s"] for p in report["programs"].values())
  return report


def _resolved_dtype(config: ExperimentConfig, mesh) -> str:
  with jax.set_mesh(mesh):
    return matmul.resolve_matmul_dtype(config.model.matmul_dtype)


def _gib(n: float) -> str:
  return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / 2**20:.1f} MiB"


def format_report(report: dict[str, Any]) -> str:
  lines = [f"{report['topology']} x {report['num_slices']} slice(s): {report['chips']} chips, "
           f"{report['devices']} devices ({report['device_kind']}); mesh {report['mesh']}; "
           f"{report['parameters'] / 1e6:,.1f}M parameters; matmul operands "
           f"{report['matmul_dtype']}"]
  if report.get("lora_rank"):
    lines.append(f"LoRA rank {report['lora_rank']}: {report['trained_parameters'] / 1e6:,.1f}M "
                 "parameters trained (adapters and any head), the base frozen")
  lines += [f"note: {n}" for n in report["notes"]]
  if report.get("libtpu_init_args"):
    lines.append(f"XLA TPU options (LIBTPU_INIT_ARGS): {report['libtpu_init_args']}")
  for name, p in report["programs"].items():
    mem = p["memory"]
    lines.append(f"\n[{name}] compiled in {p['compile_s']:.1f} s")
    parts = [f"{k[:-6]} {_gib(v)}" for k, v in mem.items()
             if k.endswith(" bytes") and k not in ("total bytes", "hbm bytes", "alias bytes",
                                                   "argument bytes", "output bytes",
                                                   "temp bytes", "generated_code bytes")]
    lines.append("  per device: " + ", ".join(parts))
    if "argument bytes" in mem:
      lines.append(f"  XLA buffers: arguments {_gib(mem['argument bytes'])}, outputs "
                   f"{_gib(mem['output bytes'])} ({_gib(mem['alias bytes'])} aliased to donated "
                   f"arguments), temporaries {_gib(mem['temp bytes'])}, code "
                   f"{_gib(mem['generated_code bytes'])}")
    verdict = "fits" if mem["fits"] else "DOES NOT FIT"
    lines.append(f"  total {_gib(mem['total bytes'])} of {_gib(mem['hbm bytes'])} HBM: {verdict}")
    if "refused_by_compiler" in mem:
      lines.append(f"  the TPU compiler refused it ({mem['refused_by_compiler']})")
      continue
    analytic = p["analytic_flops"]
    ratio = f" ({p['xla_flops'] / analytic:.2f}x)" if analytic else ""
    lines.append(f"  FLOPs per device: XLA {p['xla_flops']:.3e}, research/flops.py "
                 f"{analytic:.3e}{ratio}" if analytic else
                 f"  FLOPs per device: XLA {p['xla_flops']:.3e}")
    kernels = p.get("pallas_kernel_calls", 0)
    lines.append("  attention: " + (f"splash ({kernels} Pallas kernel calls; XLA counts no FLOPs "
                                    f"inside them: {p['kernel_flops']:.3e} by research/flops.py, "
                                    "added to the compute term)" if kernels else "XLA"))
    colls = p["collectives"]
    lines.append("  collectives: " + (", ".join(
        f"{k} x{int(v['count'])} {v['bytes'] / 2**20:,.1f} MiB" for k, v in colls.items())
                                      or "none"))
    r = p["roofline"]
    mfu = f", MFU <= {100 * r['mfu_upper_bound']:.0f}%" if "mfu_upper_bound" in r else ""
    lines.append(f"  roofline estimate: >= {1e3 * r['step_s_lower_bound']:.2f} ms per call "
                 f"(compute {1e3 * r['compute_s']:.2f}, HBM {1e3 * r['hbm_s']:.2f}, collectives "
                 f"{1e3 * r['collective_s']:.2f} ms; {r['limited_by']}-bound{mfu})")
  return "\n".join(lines)


def knobs(config: ExperimentConfig, mesh_shape: dict) -> str:
  m = config.model
  out = []
  if mesh_shape.get("fsdp", 1) < math.prod(mesh_shape.values()):
    out.append("raise --config.mesh.fsdp (shard parameters and optimizer state over more chips)")
  if m.remat == "none":
    out.append("set --config.model.remat=full")
  out.append("lower --config.data.batch_size")
  if not m.scan_layers:
    out.append("set --config.model.scan_layers=True")
  return "; ".join(out)


def check_fits(report: dict[str, Any], config: ExperimentConfig) -> str | None:
  """The one-line error for the first program that does not fit, or None."""
  for name, p in report["programs"].items():
    mem = p["memory"]
    if not mem["fits"]:
      generation = report["topology"].split(":")[0]
      return (f"the {name} step needs {_gib(mem['total bytes'])} per device but a {generation} "
              f"device has {_gib(mem['hbm bytes'])} of HBM; {knobs(config, report['mesh'])}")
  return None


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def libtpu_args_of_config(config_file: str) -> str:
  """The XLA TPU options a config file names in a module-level LIBTPU_INIT_ARGS (as TOPOLOGY
  names its slice), put in the environment unless it already sets LIBTPU_INIT_ARGS: libtpu reads
  them when it loads, here as on the slice, where `research.train` needs the same variable."""
  if "LIBTPU_INIT_ARGS" in os.environ or not config_file:
    return os.environ.get("LIBTPU_INIT_ARGS", "")
  try:
    spec = importlib.util.spec_from_file_location("_aot_config_module", config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except Exception:  # pylint: disable=broad-except
    return ""  # the config flag has loaded it already; a second load is only for this constant
  args = getattr(module, "LIBTPU_INIT_ARGS", "")
  if args:
    os.environ["LIBTPU_INIT_ARGS"] = args
  return args


def main(argv) -> None:
  cli.quiet_logs()
  cli.reject_positional_args(argv)
  f = flags.FLAGS

  def body():
    libtpu_args_of_config(config_flags.get_config_filename(f["config"]))
    config = ExperimentConfig.from_config_dict(f.config)
    config, note = pretrained_architecture(config)
    if f.json:
      paths.check_bucket(f.json)
    topology = parse_topology(f.topology)
    if f.num_slices < 1:
      raise ConfigError(f"--num_slices={f.num_slices} must be >= 1")
    programs = tuple(p for p in f.programs.split(",") if p)
    unknown = set(programs) - {"train", "eval", "decode"}
    if unknown:
      raise ConfigError(f"--programs: unknown {sorted(unknown)}; choose from train,eval,decode")
    print(f"compiling for {topology.name} ({topology.chips * f.num_slices} chips) ...",
          file=sys.stderr)
    report = compile_report(config, topology, f.num_slices, programs, notes=(note,))
    print(format_report(report))
    if f.json:
      paths.write_atomic(paths.workdir_path(f.json), json.dumps(report, indent=2, default=float))
    problem = check_fits(report, config)
    if problem:
      raise UserError(problem)

  cli.run_cli(body)


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config()).",
                                  lock_config=True)
  flags.DEFINE_string("topology", None, "TPU slice: a JAX topology name (v5e:2x2, v5p:4x4x4) "
                      "or a Cloud TPU accelerator type (v5litepod-16, v5p-128).")
  flags.DEFINE_integer("num_slices", 1, "Slices joined over the data-center network "
                       "(multislice); the mesh's data axis spans them.")
  flags.DEFINE_string("programs", "train,eval,decode", "Which programs to compile.")
  flags.DEFINE_string("json", "", "Also write the figures to this JSON file.")
  flags.mark_flags_as_required(["config", "topology"])


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
