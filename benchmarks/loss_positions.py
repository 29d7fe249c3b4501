"""The output layer of a decoder loss at Gemma 3 270M's size (vocabulary 262,144, width 640):
every position's logits at once against logits only where the loss is, in chunks
(model.logits_chunk; research/objectives.py, chunked_token_cross_entropy).

  .venv/bin/python benchmarks/loss_positions.py [--batch=8 --seq_len=64 --loss_share=0.4]

A translation or instruction row carries loss on its response only (the last loss_share of
its positions here). Each variant computes the summed cross-entropy and its gradient with
respect to the hidden states (and with --table=trained the tied embedding table), jitted;
timed alternately (median of --rounds), peak temporary memory from XLA's memory analysis of
the compiled program, and the loss and gradients checked equal between the variants.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import statistics
import sys
import time

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

from research import machine, objectives
from research.config import ModelConfig
# pylint: enable=wrong-import-position


def variants(cfg: ModelConfig, chunks: list[int], argnums: tuple[int, ...]):
  """name -> f(hidden, table, targets, weights) -> (loss_sum, gradients w.r.t. argnums)."""

  def full(hidden, table, targets, weights):
    logits = objectives.output_logits(cfg, {"token_embed": {"embedding": table}}, hidden)
    return objectives.token_cross_entropy(logits, targets, weights)["loss_sum"]

  def chunked(chunk, hidden, table, targets, weights):
    logits_fn = functools.partial(objectives.output_logits, cfg,
                                  {"token_embed": {"embedding": table}})
    return objectives.chunked_token_cross_entropy(hidden, logits_fn, targets, weights,
                                                  chunk)["loss_sum"]

  fns = {"all positions": full}
  fns.update({f"loss positions, chunk {c}": functools.partial(chunked, c) for c in chunks})
  return {name: jax.jit(jax.value_and_grad(fn, argnums=argnums)) for name, fn in fns.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=64)
  parser.add_argument("--loss_share", type=float, default=0.4)
  parser.add_argument("--chunks", default="16,32")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--matmul_dtype", default="float32")
  parser.add_argument("--table", choices=["frozen", "trained"], default="frozen",
                      help="frozen: gradient w.r.t. the hidden states only (LoRA, whose output "
                      "layer is frozen); trained: also w.r.t. the embedding table (full "
                      "fine-tuning), whose (V, E) gradient every chunk adds to")
  args = parser.parse_args()
  cfg = ModelConfig(vocab_size=262_144, embed_dim=640, num_heads=4, tie_embeddings=True,
                    scale_embeddings=True, matmul_dtype=args.matmul_dtype)
  rng = np.random.default_rng(0)
  b, t = args.batch, args.seq_len
  hidden = jnp.asarray(rng.normal(size=(b, t, cfg.embed_dim)), jnp.float32)
  table = jnp.asarray(rng.normal(scale=0.02, size=(cfg.vocab_size, cfg.embed_dim)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, cfg.vocab_size, (b, t)), jnp.int32)
  start = t - int(round(args.loss_share * t))
  weights = jnp.asarray(np.broadcast_to(np.arange(t) >= start, (b, t)), jnp.float32)
  inputs = (hidden, table, targets, weights)
  fns = variants(cfg, [int(c) for c in args.chunks.split(",")],
                 (0,) if args.table == "frozen" else (0, 1))
  compiled, results = {}, {}
  for name, fn in fns.items():
    compiled[name] = fn.lower(*inputs).compile()
    results[name] = jax.block_until_ready(compiled[name](*inputs))
  reference = results["all positions"]
  times = {name: [] for name in fns}
  for _ in range(args.rounds):
    for name in fns:
      begin = time.perf_counter()
      jax.block_until_ready(compiled[name](*inputs))
      times[name].append(time.perf_counter() - begin)
  print(f"machine: {machine.summary(machine.describe())}")
  print(f"batch {b} x {t} positions, loss on the last {t - start} of each row; vocabulary "
        f"{cfg.vocab_size}, width {cfg.embed_dim}, matmul operands {args.matmul_dtype}; "
        f"value and gradient ({'hidden' if args.table == 'frozen' else 'hidden, table'}); "
        f"median of {args.rounds}")
  print(f"| variant | seconds | vs all | peak temporaries (MiB) | loss rel. diff | grad max diff |")
  print("|---|---|---|---|---|---|")
  base_time = statistics.median(times["all positions"])
  for name in fns:
    seconds = statistics.median(times[name])
    memory = compiled[name].memory_analysis()
    temp = getattr(memory, "temp_size_in_bytes", float("nan")) / 2**20
    loss, grads = results[name]
    loss_diff = abs(float(loss) - float(reference[0])) / abs(float(reference[0]))
    grad_diff = max(float(jnp.max(jnp.abs(g - r))) for g, r in zip(grads, reference[1]))
    print(f"| {name} | {seconds:.3f} | {base_time / seconds:.2f}x | {temp:,.0f} | "
          f"{loss_diff:.1e} | {grad_diff:.1e} |")


if __name__ == "__main__":
  main()
