"""Prefill and batch-1 decode speed of a pretrained model (Gemma 3 270M by default): ours against
transformers (PyTorch, CPU, the same dtype) and llama.cpp (llama-cpp-python on the same GGUF
file), side by side in one run, and the peak memory of our load.

  .venv/bin/python benchmarks/pretrained_speed.py [--pretrained=gemma3-270m] [--dtype=float32]
      [--prompt_len=128 --new_tokens=64 --repeats=5] [--peer_python=/tmp/torchenv/bin/python]

The peers run benchmarks/pretrained_peers.py in --peer_python's interpreter (torch,
transformers, accelerate, gguf, llama-cpp-python: never the project's .venv); with no such
interpreter only our figures print. Ours: decode.prefill and decode.step, each jitted once, on
the model loaded with research.convert.load_pretrained, its context (max_len) sized to the
prompt and the new tokens (a RoPE model's max_len holds no parameter). The output layer's share
of a decode step is timed alone: the tied (262,144 x 640) embedding product of one token.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from pretrained_peers import prompt_ids  # pylint: disable=wrong-import-position  (beside this file)
from research import convert, decode, gguf_io, layers, models  # pylint: disable=wrong-import-position

PEERS = pathlib.Path(__file__).resolve().with_name("pretrained_peers.py")


def load(source: str, dtype: str, context: int):
  """(model, params, config) with params in `dtype` and max_len = context."""
  _, params, _, config = convert.load_pretrained(source, dtype)
  model_cfg = dataclasses.replace(config.model, max_len=context, param_dtype=dtype,
                                  matmul_dtype=dtype, activation_dtype="float32")
  return models.build_model(model_cfg), params, model_cfg


def time_ours(model, params, cfg, prompt_len: int, new_tokens: int, repeats: int) -> dict:
  ids = jnp.asarray([prompt_ids(cfg.vocab_size, prompt_len)], jnp.int32)
  mask = jnp.ones(ids.shape, bool)
  prefill = jax.jit(functools.partial(decode.prefill, model))
  step = jax.jit(functools.partial(decode.step, model))
  prefill_s, decode_s = [], []
  for _ in range(repeats + 1):  # the first run compiles and warms up
    start = time.perf_counter()
    logits, cache = prefill(params, ids, mask)
    logits.block_until_ready()
    prefill_s.append(time.perf_counter() - start)
    token = jnp.argmax(logits, -1).astype(jnp.int32)
    start = time.perf_counter()
    for _ in range(new_tokens):
      logits, cache = step(params, cache, token)
      token = jnp.argmax(logits, -1).astype(jnp.int32)
    token.block_until_ready()
    decode_s.append((time.perf_counter() - start) / new_tokens)
  # The output layer alone: one token's hidden state against the tied embedding table.
  table = params["token_embed"]["embedding"]
  head = jax.jit(lambda x, w: layers.dense_transposed(x, w, layers.dtype(cfg.matmul_dtype)))
  x = jnp.ones((1, cfg.embed_dim), jnp.float32)
  head(x, table).block_until_ready()
  head_s = []
  for _ in range(max(20, new_tokens)):
    start = time.perf_counter()
    head(x, table).block_until_ready()
    head_s.append(time.perf_counter() - start)
  return {"prefill_s": statistics.median(prefill_s[1:]),
          "decode_step_s": statistics.median(decode_s[1:]),
          "output_layer_s": statistics.median(head_s)}


def peak_memory_of_load(source: str, dtype: str) -> float:
  """GiB of the largest resident set of a fresh process that loads the model in `dtype`."""
  code = (f"import sys; sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r}); "
          f"import pretrained_speed as p; m, params, c = p.load({source!r}, "
          f"{dtype!r}, 256); import jax; jax.block_until_ready(params); "
          "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1])})
  # VmHWM (KiB), not ru_maxrss: Linux keeps ru_maxrss across fork and exec, so the child would
  # report this process's own peak when it is the larger.
  return int(out.stdout.strip().splitlines()[-1]) / 2**20


def run_peer(python: str, peer: str, gguf: pathlib.Path, args) -> dict | None:
  command = [python, str(PEERS), f"--gguf={gguf}", f"--peer={peer}",
             f"--prompt_len={args.prompt_len}", f"--new_tokens={args.new_tokens}",
             f"--repeats={args.repeats}", f"--dtype={args.dtype}"]
  result = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
  if result.returncode:
    print(f"note: the {peer} peer failed: {result.stderr.strip().splitlines()[-1:]}",
          file=sys.stderr)
    return None
  return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--pretrained", default="gemma3-270m")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--prompt_len", type=int, default=128)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--peer_python", default="/tmp/torchenv/bin/python")
  args = parser.parse_args()
  gguf = gguf_io.resolve(args.pretrained)
  model, params, cfg = load(args.pretrained, args.dtype, args.prompt_len + args.new_tokens + 1)
  rows = {"ours (JAX)": time_ours(model, params, cfg, args.prompt_len, args.new_tokens,
                                  args.repeats)}
  del params
  if pathlib.Path(args.peer_python).is_file():
    for peer in ("transformers", "llama.cpp"):
      result = run_peer(args.peer_python, peer, gguf, args)
      if result:
        rows[f"{peer} {result.get('version', '')}"] = result
  memory = peak_memory_of_load(args.pretrained, "bfloat16")
  ours = rows["ours (JAX)"]
  print(f"{args.pretrained}, {args.dtype}, prompt {args.prompt_len} tokens, "
        f"{args.new_tokens} new, median of {args.repeats}")
  print("| | prefill tokens/s | decode tokens/s (batch 1) | ours / it, decode |")
  print("|---|---|---|---|")
  for name, r in rows.items():
    print(f"| {name} | {args.prompt_len / r['prefill_s']:,.0f} | {1 / r['decode_step_s']:,.1f} "
          f"| {r['decode_step_s'] / ours['decode_step_s']:.2f}x |")
  print(f"output layer alone: {1e3 * ours['output_layer_s']:.1f} ms of a "
        f"{1e3 * ours['decode_step_s']:.1f} ms decode step "
        f"({ours['output_layer_s'] / ours['decode_step_s']:.0%})")
  print(f"peak resident memory of our load in bfloat16: {memory:.2f} GiB")


if __name__ == "__main__":
  main()
