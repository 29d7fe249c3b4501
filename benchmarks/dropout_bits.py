"""Dropout on CPU: JAX's own lowering of the Threefry hash (a loop) against research/threefry.py's
unrolled one, in one process, on the shapes where the task configs drop out the most.

  .venv/bin/python benchmarks/dropout_bits.py

Each shape's dropout (rate 0.1) and its gradient is compiled twice: first with JAX's lowering,
then, after threefry.register_cpu_lowering(), with the unrolled one. The two are then timed
alternately (median of --rounds), and their masks are checked equal.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from research import threefry  # only this module: research.layers would register the lowering
# pylint: enable=wrong-import-position

SHAPES = {  # what drops out, in which config
    "squad_bert attention probabilities (B, N, T, S)": (32, 4, 256, 256),
    "spa_eng_t5 MLP hidden (B, T, F)": (64, 48, 1024),
}


def dropout_and_grad():
  def loss(x, key):
    y = nn.Dropout(0.1, deterministic=False).apply({}, x, rngs={"dropout": key})
    return jnp.sum(y * y), y != 0

  return jax.jit(jax.value_and_grad(loss, has_aux=True))


def seconds(fn, *args) -> float:
  begin = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - begin


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--rounds", type=int, default=9)
  args = parser.parse_args(argv)
  key = jax.random.key(0)
  inputs = {name: jnp.ones(shape, jnp.float32) for name, shape in SHAPES.items()}
  stock = {name: dropout_and_grad().lower(x, key).compile() for name, x in inputs.items()}
  threefry.register_cpu_lowering()
  unrolled = {name: dropout_and_grad().lower(x, key).compile() for name, x in inputs.items()}
  print("| shape | JAX's lowering | unrolled | ratio |\n|---|---|---|---|")
  for name, x in inputs.items():
    (_, mask_stock), _ = stock[name](x, key)
    (_, mask_unrolled), _ = unrolled[name](x, key)
    if not np.array_equal(np.asarray(mask_stock), np.asarray(mask_unrolled)):
      raise SystemExit(f"error: the two lowerings gave different masks for {name}")
    times = {"stock": [], "unrolled": []}
    for _ in range(args.rounds):
      times["stock"].append(seconds(stock[name], x, key))
      times["unrolled"].append(seconds(unrolled[name], x, key))
    a, b = (1e3 * statistics.median(times[k]) for k in ("stock", "unrolled"))
    print(f"| {name} {SHAPES[name]} | {a:.1f} ms | {b:.1f} ms | {a / b:.2f}x |")


if __name__ == "__main__":
  main()
