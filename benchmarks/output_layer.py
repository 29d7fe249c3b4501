"""The layouts of a decoding step's output-layer product at Gemma 3 270M's size (a 262,144 x 640
tied table, one row of hidden state): medians of jitted calls, printed as a table.

  python benchmarks/output_layer.py [--repeats=7]

Figures and what they decided: benchmarks/README.md, "The output layer".
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

VOCAB, WIDTH = 262_144, 640


def median_ms(fn, *args, repeats: int) -> float:
  jitted = jax.jit(fn)
  jitted(*args).block_until_ready()  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jitted(*args).block_until_ready()
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()
  table32 = jnp.asarray(np.random.default_rng(0).standard_normal((VOCAB, WIDTH), np.float32))
  table16 = table32.astype(jnp.bfloat16)
  x = jnp.ones((1, WIDTH), jnp.float32)
  column = lambda x: x.reshape(WIDTH, 1)
  cases = {
      "float32, table @ x.T": (lambda x, w: (w @ column(x)).T, table32),
      "float32, x @ table.T": (lambda x, w: x @ w.T, table32),
      "bfloat16 table, table @ x.T, float32 result": (lambda x, w: jnp.matmul(
          w, column(x).astype(jnp.bfloat16), preferred_element_type=jnp.float32).T, table16),
      "bfloat16 table cast to float32 first": (
          lambda x, w: (w.astype(jnp.float32) @ column(x)).T, table16),
  }
  print(f"| product (M = 1 row), {jax.devices()[0].device_kind} | ms |\n|---|---|")
  for name, (fn, table) in cases.items():
    print(f"| {name} | {median_ms(fn, x, table, repeats=args.repeats):.1f} |")


if __name__ == "__main__":
  main()
