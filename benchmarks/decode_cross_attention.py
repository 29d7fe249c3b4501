"""Encoder-decoder decoding tokens/s with the cross-attention keys/values cached once per input
(research/decode.py's one step), against projecting them from the encoder output at every step
(what decoding did before). Greedy, random parameters (speed does not depend on them), in one
process, the variants interleaved over --rounds (order alternating); medians reported.

Two loops:
  scan  the whole decode compiled as one program (research.generate, evaluation): XLA hoists a
        loop-invariant projection out of the while loop, so here the two should cost the same;
        their XLA FLOP counts are printed to show it.
  host  one jitted step per token called from Python (a server or research.chat stepping
        token by token): here the projection really runs at every step.

  python benchmarks/decode_cross_attention.py --config=configs/spa_eng_t5.py
  python benchmarks/decode_cross_attention.py --config=configs/scitldr_t5.py
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repository root

from absl import app, flags  # pylint: disable=wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

from research import decode, models
from research.config import load_config_file, ExperimentConfig

_CONFIG = flags.DEFINE_string("config", "configs/spa_eng_t5.py", "an encoder-decoder config")
_BATCH = flags.DEFINE_integer("batch_size", 0, "rows decoded together; 0: task.eval_batch_size")
_INPUT_LEN = flags.DEFINE_integer("input_len", 0, "encoder tokens; 0: the task's max_input_len")
_STEPS = flags.DEFINE_integer("steps", 0, "tokens generated per row; 0: task.max_target_len")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "timed calls of each variant, interleaved")
_JSON = flags.DEFINE_string("json", "", "also write the figures here")


@functools.partial(jax.jit, static_argnames=("model", "num_steps"))
def _recomputing(params, inputs, mask, *, model, num_steps):
  """Greedy decoding that projects the encoder output to keys/values at every step."""
  encoded = model.apply({"params": params}, inputs, input_mask=mask, method="encode")
  start = jnp.zeros((inputs.shape[0], 1), jnp.int32)
  logits, variables = model.apply({"params": params}, encoded, start, encoder_mask=mask,
                                  decode=True, method="decode", mutable=["cache"])

  def body(carry, _):
    cache, logits = carry
    token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    logits, variables = model.apply({"params": params, "cache": cache}, encoded, token[:, None],
                                    encoder_mask=mask, decode=True, method="decode",
                                    mutable=["cache"])
    return (variables["cache"], logits), token

  _, tokens = jax.lax.scan(body, (variables["cache"], logits), None, length=num_steps)
  return tokens.T


def _recomputing_step(model, mask):
  def step(params, cache, encoded, tokens):
    logits, variables = model.apply({"params": params, "cache": cache}, encoded, tokens[:, None],
                                    encoder_mask=mask, decode=True, method="decode",
                                    mutable=["cache"])
    return logits[:, -1], variables["cache"]
  return jax.jit(step, donate_argnums=(1,))


def main(argv):
  del argv
  raw = load_config_file(_CONFIG.value).to_dict()
  raw["model"]["vocab_size"] = raw["model"]["vocab_size"] or raw["data"]["vocab_size"] or 8000
  config = ExperimentConfig.from_config_dict(raw)
  if config.model.family != "encoder_decoder":
    sys.exit(f"error: {_CONFIG.value} is a {config.model.family} config; give an "
             "encoder_decoder one")
  batch = _BATCH.value or config.task.eval_batch_size
  input_len = _INPUT_LEN.value or config.task.max_input_len or config.data.seq_len
  steps = _STEPS.value or config.task.max_target_len
  model_cfg = dataclasses.replace(config.model, max_len=max(config.model.max_len, steps))
  model = models.EncoderDecoder(model_cfg)
  rng = np.random.default_rng(0)
  inputs = jnp.asarray(rng.integers(3, model_cfg.vocab_size, (batch, input_len)), jnp.int32)
  mask = jnp.ones(inputs.shape, bool)
  params = jax.jit(model.init)(jax.random.key(0), inputs, inputs[:, :steps])["params"]
  greedy = decode.SamplingConfig(temperature=0.0)
  scan_cached = decode._sample.lower(params, inputs, mask, jax.random.key(0), model=model,
                                     num_steps=steps, sampling=greedy).compile()
  scan_recomputed = _recomputing.lower(params, inputs, mask, model=model,
                                       num_steps=steps).compile()
  prefill = jax.jit(functools.partial(decode.prefill, model))
  cached_step = jax.jit(functools.partial(decode.step, model), donate_argnums=(1,))
  recomputing_step = _recomputing_step(model, mask)
  encode = jax.jit(lambda p, x: model.apply({"params": p}, x, input_mask=mask, method="encode"))

  def host_loop(recompute: bool):
    logits, cache = prefill(params, inputs, mask)
    encoded = encode(params, inputs) if recompute else None
    out = []
    for _ in range(steps):
      token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      out.append(token)
      if recompute:
        logits, cache = recomputing_step(params, cache, encoded, token)
      else:
        logits, cache = cached_step(params, cache, token)
    return jnp.stack(out, axis=1)

  variants = {
      "scan, cached": lambda: scan_cached(params, inputs, mask, jax.random.key(0)),
      "scan, recomputed": lambda: scan_recomputed(params, inputs, mask),
      "host, cached": lambda: host_loop(False),
      "host, recomputed": lambda: host_loop(True),
  }
  outs = {name: np.asarray(jax.block_until_ready(fn())) for name, fn in variants.items()}
  same = all(np.array_equal(outs["scan, cached"], o) for o in outs.values())
  times = {name: [] for name in variants}
  for round_ in range(_ROUNDS.value):
    for name, fn in sorted(variants.items(), reverse=bool(round_ % 2)):  # alternate the order
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  result = {"config": _CONFIG.value, "batch": batch, "input_len": input_len, "steps": steps,
            "backend": jax.default_backend(), "same_tokens": same,
            "xla_flops": {"scan, cached": scan_cached.cost_analysis().get("flops"),
                          "scan, recomputed": scan_recomputed.cost_analysis().get("flops"),
                          "step, cached": cached_step.lower(
                              params, decode.init_cache(model, batch, input_len),
                              jnp.zeros((batch,), jnp.int32)).compile().cost_analysis()
                          .get("flops"),
                          "step, recomputed": recomputing_step.lower(
                              params, decode.init_cache(model, batch, input_len),
                              encode(params, inputs), jnp.zeros((batch,), jnp.int32)).compile()
                          .cost_analysis().get("flops")}}
  for name, ts in times.items():
    median = statistics.median(ts)
    result[name] = {"median_s": median, "tokens_per_s": batch * steps / median, "times_s": ts}
  print(f"{_CONFIG.value}: {batch} rows, {input_len} encoder tokens, {steps} new tokens each; "
        f"same tokens in all four: {same}")
  for name in variants:
    r = result[name]
    print(f"  {name:17s}: {r['tokens_per_s']:10,.0f} tokens/s (median of {_ROUNDS.value}: "
          f"{1e3 * r['median_s']:.1f} ms)")
  for loop in ("scan", "host"):
    ratio = result[f"{loop}, recomputed"]["median_s"] / result[f"{loop}, cached"]["median_s"]
    result[f"{loop}_speedup"] = ratio
    print(f"  {loop}: cached / recomputed {ratio:.2f}x")
  flops_ = result["xla_flops"]
  print(f"  XLA FLOPs, whole scan program: cached {flops_['scan, cached']:.3g}, recomputed "
        f"{flops_['scan, recomputed']:.3g}; one step: cached {flops_['step, cached']:.3g}, "
        f"recomputed {flops_['step, recomputed']:.3g}")
  if _JSON.value:
    with open(_JSON.value, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
