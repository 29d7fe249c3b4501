"""Memory of a Gemma 3 270M fine-tuning step: LoRA against full fine-tuning, each with every
position's logits or only the loss positions' (model.logits_chunk).

  .venv/bin/python benchmarks/lora_memory.py [--batch=8 --seq_len=64 --rank=8 --chunk=32]

Nothing is trained and no weight is read: the model's config comes from the installed GGUF
file's metadata (train.pretrained_config), the state and the batch are abstract, and each
variant's train step (research.train's, with the LoRA base an argument of its own) is compiled
for this machine's one CPU device. Reported: the bytes of what the optimizer trains, of its
state (AdamW's two moments), and XLA's buffer assignment of the compiled step (arguments,
temporaries, and their total, donated state counted once: research.bench.memory_stats).
XLA allocates for every chunk a step may compute, so the chunked variants' figures do not
depend on how many positions carry loss (their time does: benchmarks/loss_positions.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib
import sys
import time

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp

from research import bench, lora, machine, train
from research.config import LoraConfig
# pylint: enable=wrong-import-position


def compiled_step(config, batch_shapes):
  """(trained bytes, optimizer-state bytes, memory_stats) of the config's compiled step."""
  model, loss_fn, _ = train.build_model_and_loss(config)
  tx = train.build_optimizer(config)
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), devices=jax.devices()[:1],
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  abstract, shardings = train.state_shardings(model, tx, config, mesh)
  step_kw = dict(model=model, tx=tx, base_rng=jax.random.key(0))
  args = [abstract, batch_shapes]
  if config.lora.rank:
    base = jax.eval_shape(lambda: nn.unbox(train.init_params(model, config, jax.random.key(0))))
    on_base = lora.loss_on_base(loss_fn, config.lora)
    step = lambda state, batch, frozen: train.train_step(
        state, batch, loss_fn=functools.partial(on_base, base=frozen), **step_kw)
    args.append(base)
  else:
    step = functools.partial(train.train_step, loss_fn=loss_fn, **step_kw)
  with jax.set_mesh(mesh), nn.logical_axis_rules(config.rules):
    compiled = jax.jit(step, donate_argnums=(0,)).lower(*args).compile()
  return (lora.num_bytes(abstract.params), lora.num_bytes(abstract.opt_state),
          bench.memory_stats(compiled))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=64)
  parser.add_argument("--rank", type=int, default=8)
  parser.add_argument("--chunk", type=int, default=32)
  args = parser.parse_args()
  pretrained = train.pretrained_config("gemma3-270m")
  b, t = args.batch, args.seq_len
  shapes = {"inputs": jax.ShapeDtypeStruct((b, t), jnp.int32),
            "targets": jax.ShapeDtypeStruct((b, t), jnp.int32),
            "weights": jax.ShapeDtypeStruct((b, t), jnp.float32)}
  print(f"machine: {machine.summary(machine.describe())}")
  print(f"Gemma 3 270M ({pretrained.model.vocab_size}-token vocabulary), batch {b} x {t}, "
        "float32 parameters and matmuls, AdamW; bytes per device (one CPU device)")
  print("| variant | trained (MiB) | optimizer state (MiB) | arguments (MiB) | temporaries (MiB) "
        "| total (MiB) | compile (s) |")
  print("|---|---|---|---|---|---|---|")
  for name, rank, chunk in [("full fine-tuning", 0, 0),
                            (f"full fine-tuning, logits_chunk={args.chunk}", 0, args.chunk),
                            (f"LoRA r={args.rank}", args.rank, 0),
                            (f"LoRA r={args.rank}, logits_chunk={args.chunk}", args.rank,
                             args.chunk)]:
    config = dataclasses.replace(
        pretrained, init_from="gemma3-270m" if rank else "",
        model=dataclasses.replace(pretrained.model, logits_chunk=chunk, dropout_rate=0.0),
        data=dataclasses.replace(pretrained.data, seq_len=t, batch_size=b),
        lora=LoraConfig(rank=rank, alpha=2.0 * max(rank, 1)))
    begin = time.perf_counter()
    trained, optimizer, memory = compiled_step(config, shapes)
    seconds = time.perf_counter() - begin
    mib = lambda n: f"{n / 2**20:,.1f}"
    print(f"| {name} | {mib(trained)} | {mib(optimizer)} | {mib(memory['argument'])} | "
          f"{mib(memory['temp'])} | {mib(memory['total'])} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
  main()
