"""Compile time of a decoder's loss gradient at 4 and 24 layers, scanned (model.scan_layers)
against unrolled: scanning keeps it flat in depth (tests/test_scale.py checks the cause, a
program of the same size at any depth; the seconds are measured here).

  .venv/bin/python benchmarks/scan_compile_time.py [--rounds=3] [--layers=4,24]

Each round compiles every (scan, depth) once, with its own batch size so that no compilation
comes from a cache; prints the median seconds and the ratio deep / shallow for each.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import machine, models, objectives
from research.config import ModelConfig
# pylint: enable=wrong-import-position

SEQ = 32


def compile_seconds(num_layers: int, scan: bool, batch_size: int) -> float:
  cfg = ModelConfig(family="decoder", vocab_size=64, num_layers=num_layers, num_heads=4,
                    embed_dim=64, mlp_dim=128, max_len=SEQ, scan_layers=scan)
  model = models.build_model(cfg)
  params = nn.unbox(jax.eval_shape(lambda: model.init(
      jax.random.key(0), *models.dummy_inputs(cfg, SEQ))["params"]))
  data = {"inputs": jax.ShapeDtypeStruct((batch_size, SEQ), jnp.int32),
          "targets": jax.ShapeDtypeStruct((batch_size, SEQ), jnp.int32),
          "weights": jax.ShapeDtypeStruct((batch_size, SEQ), jnp.float32)}
  lowered = jax.jit(jax.grad(lambda p, b: objectives.decoder_loss(model, p, b)["loss_sum"])).lower(
      params, data)
  start = time.perf_counter()
  lowered.compile()
  return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--layers", default="4,24")
  args = parser.parse_args()
  depths = [int(n) for n in args.layers.split(",")]
  times = {(scan, n): [] for scan in (True, False) for n in depths}
  for round_index in range(args.rounds):
    for scan in (True, False):
      for n in depths:
        times[scan, n].append(compile_seconds(n, scan, batch_size=2 + round_index))
  print(f"median of {args.rounds} compiles on {machine.summary(machine.describe())}:")
  for scan in (True, False):
    medians = [float(np.median(times[scan, n])) for n in depths]
    cells = ", ".join(f"{n} layers {m:.2f} s" for n, m in zip(depths, medians))
    print(f"  {'scanned' if scan else 'unrolled'}: {cells}; {depths[-1]} / {depths[0]} layers: "
          f"{medians[-1] / medians[0]:.2f}x")


if __name__ == "__main__":
  main()
