"""Benchmark of one config: its training step, decoding speed and input pipeline.

  python -m research.bench --config=configs/gpt_shakespeare_char.py [--config.model.x=...] \
      [--steps=30] [--out=bench.json] [--synthetic] [--decode_tokens=256] [--skip=decode,pipeline]

Prints a table and (with --out) writes the same figures as JSON:
  - the training step (research.train's, on the config's mesh): compile time, then the median,
    p10 and p90 of --steps timed steps after --warmup untimed ones, each on a batch already on
    the device; tokens/s; analytic FLOPs per step (research/flops.py; XLA's own count of the
    compiled step beside it) and model FLOP/s;
  - MFU against matmul peaks measured in this process (float32 and bfloat16 operands; timed
    before and after the step, the faster kept), and against the chip's published peak on a
    GPU or TPU;
  - per-device memory of the compiled step (XLA's memory analysis);
  - decoding: new tokens/s with the KV cache (research/decode.py) and by recomputing the full
    forward pass for every new token, for decoder and encoder-decoder configs;
  - the input pipeline: examples/s the grain pipeline delivers alone, next to what the step
    consumes.
Timings on a shared machine are noisy: compare figures from one run, or medians of several.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import sys
import tempfile
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from research import cli, decode, flops, layers, models, objectives, sharding, tasks, train
from research.config import ConfigError, ExperimentConfig

Array = jax.Array


# ---------------------------------------------------------------------------------------------
# An experiment without a dataset
# ---------------------------------------------------------------------------------------------


def synthetic_experiment(config: ExperimentConfig, devices=None) -> train.Experiment:
  """research.train's Experiment (mesh, model, optimizer, shardings) without data: for random
  batches of the right shapes (synthetic_batch). model.vocab_size must be set."""
  if config.model.vocab_size <= 0:
    raise ConfigError("synthetic batches need model.vocab_size > 0 (there is no tokenizer to "
                      "take it from); pass --config.model.vocab_size=N")
  mesh = sharding.make_mesh(config, devices)
  model, loss_fn, _ = train.build_model_and_loss(config)
  tx = train.build_optimizer(config)
  abstract, shardings = train.state_shardings(model, tx, config, mesh)
  frozen = train.base_shardings(model, config, mesh) if config.lora.rank else None
  return train.Experiment(config=config, mesh=mesh, model=model, tx=tx, abstract_state=abstract,
                          shardings=shardings, data=None, transform=None, loss_fn=loss_fn,
                          frozen_shardings=frozen)


def synthetic_batch(config: ExperimentConfig, seed: int = 0,
                    batch_size: int | None = None) -> dict[str, np.ndarray]:
  """This process's share of a batch of random tokens, shaped as the config's pretraining
  objective or fine-tuning task makes them (what the input pipeline would deliver).
  batch_size: the global batch (default data.batch_size)."""
  rng = np.random.default_rng([seed, jax.process_index()])
  b = (batch_size or config.data.batch_size) // jax.process_count()
  input_len, target_len = flops.sequence_lengths(config)
  ids = lambda n: rng.integers(0, config.model.vocab_size, (b, n), dtype=np.int32)
  family, task = models.family_of(config.model), config.task.name
  if task and not family.seq2seq:  # research/tasks.py's collated formats
    fmt = tasks.format_name(config)
    if fmt == "classify":
      return {"inputs": ids(input_len), "input_mask": np.ones((b, input_len), bool),
              "lengths": np.full((b,), input_len, np.int32),
              "labels": rng.integers(0, 2, (b,), dtype=np.int32), "weights": np.ones((b,), np.float32)}
    if fmt == "span":
      span = lambda: rng.integers(0, input_len, (b,), dtype=np.int32)
      return {"inputs": ids(input_len), "input_mask": np.ones((b, input_len), bool),
              "token_types": np.zeros((b, input_len), np.int32), "starts": span(), "ends": span(),
              "weights": np.ones((b,), np.float32)}
    if fmt == "preference":  # each pair's chosen and rejected sequences side by side
      pairs = lambda: rng.integers(0, config.model.vocab_size, (b, 2, input_len), dtype=np.int32)
      return {"inputs": pairs(), "targets": pairs(),
              "weights": np.ones((b, 2, input_len), np.float32),
              "reference": np.zeros((b, 2), np.float32), "pair_weights": np.ones((b,), np.float32)}
  out = family.random_batch(rng, b, input_len, target_len, config.model.vocab_size,
                            config.objective.mask_rate)
  if family.decoder_only and not task and objectives.objective_of(config.objective).prefix:
    out["prefix_lengths"] = rng.integers(1, input_len, (b,), dtype=np.int32)
  return out


# ---------------------------------------------------------------------------------------------
# The training step
# ---------------------------------------------------------------------------------------------


def percentiles(seconds: list[float]) -> dict[str, float]:
  ms = np.asarray(seconds) * 1e3
  return {"median": float(np.median(ms)), "p10": float(np.percentile(ms, 10)),
          "p90": float(np.percentile(ms, 90))}


def memory_stats(compiled) -> dict[str, int] | None:
  """Per-device bytes of a compiled program (XLA's buffer assignment), or None if unknown."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  out = {k: int(getattr(stats, f"{k}_size_in_bytes")) for k in
         ("argument", "output", "alias", "temp", "generated_code")}
  # Donated arguments alias outputs: they are counted once.
  out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


@dataclasses.dataclass
class CompiledStep:
  """research.train's step compiled for one experiment, with its state and device batches."""

  exp: train.Experiment
  compiled: Any
  state: train.TrainState
  batches: list
  lower_s: float
  compile_s: float
  calls: int = 0
  metrics: Any = None

  def run(self, n: int) -> list[float]:
    """Runs n steps, each waited for; returns their seconds."""
    times = []
    with jax.set_mesh(self.exp.mesh), nn.logical_axis_rules(self.exp.config.rules):
      for _ in range(n):
        start = time.perf_counter()
        self.state, self.metrics = self.compiled(self.state,
                                                 self.batches[self.calls % len(self.batches)])
        jax.block_until_ready((self.state, self.metrics))
        times.append(time.perf_counter() - start)
        self.calls += 1
    return times


def xla_flops(compiled) -> float | None:
  """FLOPs XLA's cost analysis counts in a compiled program (per device): element-wise work and
  the optimizer included; the body of a loop (model.scan_layers) is counted once."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  return float(cost["flops"]) if cost and "flops" in cost else None


def compile_train_step(exp: train.Experiment, local_batches: list[dict]) -> CompiledStep:
  """Initialises the state and compiles research.train's step (timing tracing and compiling)."""
  cfg = exp.config
  step_fn, _ = train.make_step_fns(exp)
  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(cfg.rules):
    batches = [sharding.shard_batch(b, exp.mesh, cfg.rules) for b in local_batches]
    state = train.create_state(exp.model, exp.tx, cfg, exp.shardings,
                               jax.random.key(cfg.train.seed))
    start = time.perf_counter()
    lowered = step_fn.lower(state, batches[0])
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
  return CompiledStep(exp, compiled, state, batches, lower_s, compile_s)


def bench_train_step(exp: train.Experiment, local_batches: list[dict], steps: int,
                     warmup: int) -> dict[str, Any]:
  """Compiles research.train's step and times `steps` calls after `warmup` untimed ones."""
  cfg = exp.config
  step = compile_train_step(exp, local_batches)
  step.run(warmup)
  times = step.run(steps)
  loss = float(step.metrics["loss_sum"] / max(float(step.metrics["weight_sum"]), 1.0))
  step_ms = percentiles(times)
  seconds = step_ms["median"] / 1e3
  flops_per_step = flops.training_flops_per_step(cfg)
  return {
      "steps": steps, "warmup": warmup, "lower_s": step.lower_s, "compile_s": step.compile_s,
      "step_ms": step_ms,
      "tokens_per_s": cfg.data.batch_size * cfg.data.seq_len / seconds,
      "examples_per_s": cfg.data.batch_size / seconds,
      "flops_per_step": flops_per_step,
      "xla_flops_per_step": xla_flops(step.compiled),
      "model_flops_per_s": flops_per_step / seconds,
      "memory_per_device": memory_stats(step.compiled),
      "final_loss": loss,
      "state": step.state,
  }


MATMUL_DTYPES = ("float32", "bfloat16")


def measure_peaks() -> dict[str, float]:
  """This host's matmul peak per operand dtype, timed now (flops.time_matmul_peak)."""
  return {dtype: flops.time_matmul_peak(dtype) for dtype in MATMUL_DTYPES}


def peaks(config: ExperimentConfig, *timings: dict[str, float]) -> dict[str, Any]:
  """Matmul peaks measured here and, on a known accelerator, the published ones (all devices).

  timings: measure_peaks() results from around the timed step (one more is taken if none).
  A shared CPU can run everything slower for a while, the square product included, so one
  timing can land in a slow phase and put MFU above 100%: the peak is the fastest timing, and
  all of them are kept beside it.
  """
  timings = timings or (measure_peaks(),)
  kind = jax.devices()[0].device_kind
  out: dict[str, Any] = {"published": None, "device_kind": kind}
  for dtype in MATMUL_DTYPES:
    out[f"measured_{dtype}"] = max(t[dtype] for t in timings)
    out[f"measured_{dtype}_timings"] = [t[dtype] for t in timings]
  published = flops.published_peak(kind, layers.resolve_matmul_dtype(config.model.matmul_dtype))
  if published is not None:
    out["published"] = published * jax.device_count()
  return out


def peak_spread(peak: dict[str, Any], dtype: str = "float32") -> float:
  """Fastest over slowest of the peak timings: 1.0 on a quiet machine."""
  timings = peak[f"measured_{dtype}_timings"]
  return max(timings) / min(timings)


# ---------------------------------------------------------------------------------------------
# Decoding: KV cache vs recomputation
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("model", "num_steps"))
def recompute_greedy(params, prompt: Array, *, model: nn.Module, num_steps: int) -> Array:
  """Greedy decoding without a cache: every new token reruns the full forward pass.

  The sequence lives in a (B, P + num_steps) buffer, so one compiled program serves every step;
  attention is causal, so the slots not yet written do not change the logits read. Each step
  therefore costs a forward pass over P + num_steps tokens (a loop over growing shapes would
  average about half that, but would compile once per length).
  """
  b, p = prompt.shape
  buffer = jnp.zeros((b, p + num_steps), jnp.int32).at[:, :p].set(prompt)

  def step(buffer, t):  # writes slot t from the logits at slot t - 1
    logits = model.apply({"params": params}, buffer)  # (B, P + n, V)
    token = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, t - 1, axis=1, keepdims=False),
                       axis=-1).astype(jnp.int32)
    return jax.lax.dynamic_update_slice(buffer, token[:, None], (0, t)), token

  _, tokens = jax.lax.scan(step, buffer, jnp.arange(p, p + num_steps))
  return tokens.T  # (B, n)


@functools.partial(jax.jit, static_argnames=("model", "num_steps"))
def recompute_greedy_seq2seq(params, encoder_tokens: Array, *, model: nn.Module,
                             num_steps: int) -> Array:
  """Encoder-decoder greedy decoding without a cache: the encoder runs once, the decoder reruns
  over the whole (B, num_steps) decoder buffer for every new token (start token: 0, as T5)."""
  encoded = model.apply({"params": params}, encoder_tokens, method="encode")
  buffer = jnp.zeros((encoder_tokens.shape[0], num_steps), jnp.int32)

  def step(buffer, t):  # predicts decoder token t from the inputs up to slot t
    logits = model.apply({"params": params}, encoded, buffer, method="decode")
    token = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False),
                       axis=-1).astype(jnp.int32)
    # The next decoder input is this token, at slot t + 1 (slot 0 holds the start token).
    buffer = jax.lax.dynamic_update_slice(buffer, token[:, None],
                                          (0, jnp.minimum(t + 1, num_steps - 1)))
    return buffer, token

  _, tokens = jax.lax.scan(step, buffer, jnp.arange(num_steps))
  return tokens.T


def _timed(fn, repeats: int) -> tuple[float, float, Any]:
  """(first call's seconds, median of `repeats` later calls, last result)."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return first, float(np.median(times)), out


def _fit_params(params: Any, shapes: Any) -> Any:
  """params reshaped to `shapes` by zero-padding (or cutting) each axis: a position table for a
  longer max_len. Decoding speed does not depend on the values."""

  def fit(x, shape):
    x = np.asarray(x)
    x = x[tuple(slice(0, n) for n in shape.shape)]
    return jnp.asarray(np.pad(x, [(0, n - m) for n, m in zip(shape.shape, x.shape)]), shape.dtype)

  return jax.tree.map(fit, params, shapes)


def bench_decode(config: ExperimentConfig, params: Any, new_tokens: int = 256,
                 batch_size: int = 1, prompt_len: int = 8,
                 repeats: int = 5) -> dict[str, Any] | None:
  """Greedy new tokens/s with the KV cache and with full recomputation. The model's max_len is
  raised to hold prompt + new tokens (a learned position table is zero-padded to match).
  None for the encoder family, which fills masks in one pass."""
  family = models.family_of(config.model)
  if not family.generates:
    return None
  if new_tokens <= 0:
    raise ConfigError(f"--decode_tokens={new_tokens} must be positive")
  seq2seq = family.seq2seq
  needed = new_tokens if seq2seq else prompt_len + new_tokens
  model_cfg = dataclasses.replace(config.model, max_len=max(config.model.max_len, needed),
                                  dropout_rate=0.0, remat="none")
  model = models.build_model(model_cfg)
  input_len = config.data.seq_len if seq2seq else prompt_len
  rng = np.random.default_rng(0)
  prompt = jnp.asarray(rng.integers(0, model_cfg.vocab_size, (batch_size, input_len)), jnp.int32)
  shapes = nn.unbox(jax.eval_shape(lambda: model.init(
      jax.random.key(0), *models.dummy_inputs(model_cfg, 1))["params"]))
  params = _fit_params(jax.device_get(params), shapes)
  greedy = decode.SamplingConfig(temperature=0.0)
  key = jax.random.key(0)
  if seq2seq:
    mask = np.ones(prompt.shape, bool)
    cached = lambda: decode.generate_seq2seq(model, params, prompt, mask, new_tokens, key, greedy)
    recompute = lambda: recompute_greedy_seq2seq(params, prompt, model=model,
                                                 num_steps=new_tokens)
  else:
    cached = lambda: decode.generate(model, params, prompt, new_tokens, key, greedy)[:, input_len:]
    recompute = lambda: recompute_greedy(params, prompt, model=model, num_steps=new_tokens)
  cached_first, cached_s, cached_tokens = _timed(cached, repeats)
  recompute_first, recompute_s, recompute_tokens = _timed(recompute, repeats)
  generated = batch_size * new_tokens
  return {
      "family": family.name, "batch": batch_size, "input_len": input_len, "new_tokens": new_tokens,
      "max_len": model_cfg.max_len,
      "cached_tokens_per_s": generated / cached_s,
      "recompute_tokens_per_s": generated / recompute_s,
      "speedup": recompute_s / cached_s,
      "cached_first_call_s": cached_first, "recompute_first_call_s": recompute_first,
      # The two agree token for token (up to float ties), or one of them is wrong.
      "same_tokens": float(np.mean(np.asarray(cached_tokens) == np.asarray(recompute_tokens))),
  }


# ---------------------------------------------------------------------------------------------
# Input pipeline
# ---------------------------------------------------------------------------------------------


def bench_pipeline(exp: train.Experiment, num_batches: int = 50,
                   warmup: int = 3) -> tuple[dict[str, Any], list[dict]]:
  """Examples/s the grain training pipeline delivers on its own (objective transform included),
  and the first batches it made (for the step benchmark)."""
  iterator = iter(exp.train_batches())
  first = [next(iterator) for _ in range(warmup)]
  start = time.perf_counter()
  rows = 0
  for _ in range(num_batches):
    rows += len(next(iter(next(iterator).values())))
  seconds = time.perf_counter() - start
  iterator.close()  # stops its read-ahead threads, which would slow the timings that follow
  return {"batches": num_batches, "examples_per_s": rows / seconds,
          "ms_per_batch": 1e3 * seconds / num_batches}, first


# ---------------------------------------------------------------------------------------------
# The whole benchmark
# ---------------------------------------------------------------------------------------------


def run(config: ExperimentConfig, workdir: str | pathlib.Path | None = None, *, steps: int = 30,
        warmup: int = 3, synthetic: bool = False, decode_tokens: int = 256,
        decode_batch: int = 1, pipeline_batches: int = 50, skip: tuple[str, ...] = (),
        devices=None) -> dict[str, Any]:
  """Runs the benchmarks and returns their figures (what --out writes). devices: those the
  config's mesh spans (default: all)."""
  unknown = set(skip) - {"decode", "pipeline"}
  if unknown:
    raise ConfigError(f"--skip={','.join(sorted(unknown))}: can skip only decode and pipeline")
  if steps < 1 or warmup < 0:
    raise ConfigError(f"--steps={steps} must be >= 1 and --warmup={warmup} >= 0")
  pipeline = None
  if synthetic:
    exp = synthetic_experiment(config, devices)
    local_batches = [synthetic_batch(exp.config, seed) for seed in range(4)]
  else:
    with tempfile.TemporaryDirectory() as scratch:
      exp = train.build_experiment(config, workdir or scratch, devices)
      if "pipeline" in skip:
        iterator = iter(exp.train_batches())
        local_batches = [next(iterator) for _ in range(4)]
        iterator.close()
      else:
        pipeline, local_batches = bench_pipeline(exp, pipeline_batches)
  cfg = exp.config
  result: dict[str, Any] = {
      "config": cfg.to_dict(),
      "device": {"platform": jax.devices()[0].platform,
                 "device_kind": jax.devices()[0].device_kind,
                 "devices": jax.device_count(), "processes": jax.process_count(),
                 "mesh": dict(exp.mesh.shape)},
      "parameters": models.parameter_count(exp.abstract_state.params),
      "synthetic_data": synthetic,
  }
  before = measure_peaks()
  step = bench_train_step(exp, local_batches, steps, warmup)
  params = step.pop("state").params
  result["train"] = step
  peak = peaks(cfg, before, measure_peaks())
  result["peaks"] = peak
  rate = step["model_flops_per_s"]
  measured_host = jax.process_count()  # a measured peak is one host's
  result["mfu"] = {
      "vs_measured_float32": rate / (peak["measured_float32"] * measured_host),
      "vs_measured_bfloat16": rate / (peak["measured_bfloat16"] * measured_host),
      "vs_published": rate / peak["published"] if peak["published"] else None,
  }
  if pipeline is not None:
    pipeline["step_examples_per_s"] = step["examples_per_s"]
    pipeline["headroom"] = pipeline["examples_per_s"] / step["examples_per_s"]
  result["pipeline"] = pipeline
  result["decode"] = (None if "decode" in skip else
                      bench_decode(cfg, params, decode_tokens, decode_batch))
  return result


def format_table(result: dict[str, Any]) -> str:
  """The figures as an aligned two-column table."""
  cfg, step, mfu, peak = result["config"], result["train"], result["mfu"], result["peaks"]
  m = cfg["model"]
  matmul = layers.resolve_matmul_dtype(m["matmul_dtype"])
  matmul = f"auto: {matmul}" if m["matmul_dtype"] == "auto" else matmul
  rows = [
      ("model", f"{m['family']}, {m['num_layers']} layers, width {m['embed_dim']}, "
                f"{result['parameters'] / 1e6:.2f}M parameters, matmul {matmul}"
                f"{', scanned' if m['scan_layers'] else ''}"
                f"{', remat ' + m['remat'] if m['remat'] != 'none' else ''}"),
      ("batch", f"{cfg['data']['batch_size']} x {cfg['data']['seq_len']} tokens"
                f"{' (synthetic)' if result['synthetic_data'] else ''}"),
      ("devices", f"{result['device']['devices']} x {result['device']['device_kind']}, mesh "
                  + " ".join(f"{k}={v}" for k, v in result["device"]["mesh"].items())),
      ("compile", f"{step['compile_s']:.2f} s (+ {step['lower_s']:.2f} s tracing)"),
      ("step time", f"{step['step_ms']['median']:.2f} ms median "
                    f"(p10 {step['step_ms']['p10']:.2f}, p90 {step['step_ms']['p90']:.2f}; "
                    f"{step['steps']} steps)"),
      ("tokens/s", f"{step['tokens_per_s']:,.0f}"),
      ("FLOPs/step", f"{step['flops_per_step'] / 1e9:.3f} GFLOP (analytic, fwd + bwd)"
                     + (f"; XLA counts {step['xla_flops_per_step'] / 1e9:.3f} per device"
                        if step["xla_flops_per_step"] else "")),
      ("model FLOP/s", f"{step['model_flops_per_s'] / 1e9:.1f} GFLOP/s"),
      ("matmul peak", f"{peak['measured_float32'] / 1e9:.0f} GFLOP/s f32, "
                      f"{peak['measured_bfloat16'] / 1e9:.0f} GFLOP/s bf16 (measured here, "
                      "the faster of before and after the step"
                      + (f"; they differ {peak_spread(peak):.2f}x: a noisy machine, rerun"
                         if peak_spread(peak) > 1.2 else "") + ")"),
      ("MFU", f"{100 * mfu['vs_measured_float32']:.1f}% of f32 peak, "
              f"{100 * mfu['vs_measured_bfloat16']:.1f}% of bf16 peak"
              + (f", {100 * mfu['vs_published']:.1f}% of published"
                 if mfu["vs_published"] else "")),
  ]
  memory = step["memory_per_device"]
  if memory:
    rows.append(("memory/device", f"{memory['total'] / 2**20:.1f} MiB (arguments "
                                  f"{memory['argument'] / 2**20:.1f}, temporaries "
                                  f"{memory['temp'] / 2**20:.1f})"))
  if result["pipeline"]:
    p = result["pipeline"]
    rows.append(("input pipeline", f"{p['examples_per_s']:,.0f} examples/s alone; the step "
                                   f"consumes {p['step_examples_per_s']:,.0f} "
                                   f"({p['headroom']:.1f}x headroom)"))
  if result["decode"]:
    d = result["decode"]
    rows.append((f"decode ({d['family']})",
                 f"{d['new_tokens']} new tokens x {d['batch']}: KV cache "
                 f"{d['cached_tokens_per_s']:,.0f} tok/s, recompute "
                 f"{d['recompute_tokens_per_s']:,.0f} tok/s ({d['speedup']:.1f}x)"))
  width = max(len(name) for name, _ in rows)
  return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config()).",
                                  lock_config=True)
  flags.DEFINE_integer("steps", 30, "Timed training steps (after --warmup untimed ones).")
  flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
  flags.DEFINE_string("out", "", "Write the figures to this JSON file.")
  flags.DEFINE_string("workdir", "", "Where the tokenizer and token caches go; '' = a temporary "
                      "directory.")
  flags.DEFINE_bool("synthetic", False, "Random token batches instead of the dataset (needs "
                    "model.vocab_size); no input pipeline figures.")
  flags.DEFINE_integer("decode_tokens", 256, "New tokens per decoding benchmark.")
  flags.DEFINE_integer("decode_batch", 1, "Rows decoded at once.")
  flags.DEFINE_integer("pipeline_batches", 50, "Batches timed from the input pipeline.")
  flags.DEFINE_list("skip", [], "Parts to leave out: decode, pipeline.")
  flags.mark_flags_as_required(["config"])


def main(argv) -> None:
  cli.quiet_logs()
  cli.reject_positional_args(argv)
  f = flags.FLAGS

  def body():
    config = ExperimentConfig.from_config_dict(f.config)
    result = run(config, f.workdir or None, steps=f.steps, warmup=f.warmup,
                 synthetic=f.synthetic, decode_tokens=f.decode_tokens,
                 decode_batch=f.decode_batch, pipeline_batches=f.pipeline_batches,
                 skip=tuple(f.skip))
    print(format_table(result))
    if f.out:
      pathlib.Path(f.out).write_text(json.dumps(result, indent=2, default=float) + "\n")
      print(f"wrote {f.out}", file=sys.stderr)

  cli.run_cli(body)


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
