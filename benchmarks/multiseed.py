"""Several seeds per program (research/multiseed.py): what one vmapped K-seed step costs against K
single-seed steps here, and what it would cost on one TPU v5e chip.

  source scripts/env.sh && .venv/bin/python benchmarks/multiseed.py [--rounds=15] [--cpu_seeds=4] \
      [--tpu_seeds=1,8,64] [--arms=decoder_lm,encdec_span] [--skip=cpu|tpu]

(a) CPU: the ablation arm's full-size train step (experiments/ablation/<arm>.py, random batches of
    its shapes) for K seeds: research.train's step called once per seed, K times, against
    research.multiseed's vmapped step called once; both compiled before timing, the two timed in
    alternation for --rounds rounds; medians, and their ratio from the same run.
(b) TPU: the vmapped step compiled ahead of time for one v5e chip (research.aot's libtpu topology,
    no TPU needed) for each K of --tpu_seeds: XLA's per-chip memory, research.aot's roofline
    lower bound on the step time (an estimate, not a measurement), whole and per seed, and the
    number of operations the program launches per step. A roofline has no per-launch cost, which
    is what a small model's step mostly pays on a TPU and what K seeds share; so it cannot show
    that gain, and the launch count is printed beside it.
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# pylint: disable=wrong-import-position
import flax.linen as nn
import jax
import numpy as np

from research import aot, bench, flops, multiseed, sharding, train
from research.config import ExperimentConfig, load_config_file
from research.hlo import Costs, global_flops
from research.train_state import state_initializer

# The character vocabulary of Tiny Shakespeare (68), plus span corruption's 100 sentinels.
VOCAB = {"decoder_lm": 68, "encdec_span": 168}


def arm_config(arm: str) -> ExperimentConfig:
  config = load_config_file(str(REPO / "experiments" / "ablation" / f"{arm}.py"))
  config.model.vocab_size = VOCAB[arm]
  return ExperimentConfig.from_config_dict(config)


def cpu_row(arm: str, num_seeds: int, rounds: int) -> dict:
  """Median seconds of K single-seed steps and of one K-seed step, timed alternately."""
  exp = bench.synthetic_experiment(arm_config(arm), jax.devices()[:1])
  cfg = exp.config
  seeds = list(range(num_seeds))
  program = multiseed.build_program(exp, num_seeds)
  single_step, _ = train.make_step_fns(exp)
  local = [bench.synthetic_batch(cfg, seed=s) for s in seeds]
  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(cfg.rules):
    init = state_initializer(exp.model, exp.tx, exp.config, exp.shardings)
    singles = [init(jax.random.key(s)) for s in seeds]
    stacked = program.stack(singles)
    batches = [sharding.shard_batch(b, exp.mesh, cfg.rules) for b in local]
    stacked_batch = program.shard_batch(local)
    seed_array = program.seed_array(seeds)
    times = {"sequential": [], "vmapped": []}
    for r in range(rounds + 2):  # two untimed rounds: compilation, first-call allocations
      start = time.perf_counter()
      for k in range(num_seeds):
        singles[k], metrics = single_step(singles[k], batches[k])
      jax.block_until_ready((singles, metrics))
      middle = time.perf_counter()
      stacked, metrics = program.step(stacked, stacked_batch, seed_array)
      jax.block_until_ready((stacked, metrics))
      end = time.perf_counter()
      if r >= 2:
        times["sequential"].append(middle - start)
        times["vmapped"].append(end - middle)
  seq, vm = (statistics.median(times[k]) for k in ("sequential", "vmapped"))
  return {"arm": arm, "seeds": num_seeds, "sequential_s": seq, "vmapped_s": vm,
          "speed_ratio": seq / vm,
          "parameters": sum(x.size for x in jax.tree.leaves(exp.abstract_state.params))}


def launched_ops(hlo_text: str) -> int:
  """Top-level instructions of a compiled program that run on the chip (fusions, custom calls,
  copies, ...): each costs a launch whatever its size, a cost a roofline leaves out and that
  K seeds in one program share."""
  from research import hlo  # pylint: disable=import-outside-toplevel
  computations, entry = hlo._parse_hlo(hlo_text)  # pylint: disable=protected-access
  idle = hlo._NO_TRAFFIC  # pylint: disable=protected-access
  return sum(1 for _, _, op, _, _ in computations[entry]["instructions"]
             if op not in idle and not op.endswith("-done"))


def tpu_row(arm: str, num_seeds: int, topology: aot.Topology) -> dict:
  """The K-seed step compiled for one chip of `topology`: memory and roofline."""
  devices = aot.tpu_devices(topology)
  exp = bench.synthetic_experiment(arm_config(arm), devices)
  cfg = exp.config
  program = multiseed.build_program(exp, num_seeds)
  state = program.abstract_state
  one = aot.batch_spec(cfg, exp.mesh)
  batch = {k: jax.ShapeDtypeStruct((num_seeds,) + v.shape, v.dtype,
                                   sharding=program.batch_sharding) for k, v in one.items()}
  seeds = jax.ShapeDtypeStruct((num_seeds,), np.int32, sharding=program.seed_sharding)
  start = time.perf_counter()
  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(cfg.rules):
    lowered = program.step.lower(state, batch, seeds)
    compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  per_chip = len(devices) / topology.chips
  memory = aot.memory(compiled, {"parameters": state.params, "optimizer state": state.opt_state,
                                 "batch": batch}, topology.chip.hbm_bytes / per_chip)
  costs = Costs.of(compiled.as_text(), global_flops(lowered) / len(devices), len(devices))
  model_flops = num_seeds * flops.training_flops_per_step(cfg) / len(devices)
  roof = aot.roofline(costs, model_flops, topology.chip, per_chip)
  return {"arm": arm, "seeds": num_seeds, "memory_bytes": memory["total bytes"],
          "hbm_bytes": memory["hbm bytes"], "fits": memory["fits"],
          "step_s": roof["step_s_lower_bound"],
          "per_seed_s": roof["step_s_lower_bound"] / num_seeds,
          "limited_by": roof["limited_by"], "mfu": roof.get("mfu_upper_bound", 0.0),
          "compute_s": roof["compute_s"], "hbm_s": roof["hbm_s"],
          "compile_s": compile_s, "ops": launched_ops(compiled.as_text())}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--arms", default="decoder_lm,encdec_span")
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--cpu_seeds", type=int, default=4)
  parser.add_argument("--tpu_seeds", default="1,8,64")
  parser.add_argument("--topology", default="v5e:1x1")
  parser.add_argument("--skip", default="")
  args = parser.parse_args()
  arms = args.arms.split(",")
  if "cpu" not in args.skip:
    print(f"CPU: {args.cpu_seeds} seeds; median of {args.rounds} rounds, each timing "
          f"{args.cpu_seeds} single-seed steps then one {args.cpu_seeds}-seed vmapped step\n")
    print("| arm | parameters | K single-seed steps | one K-seed step | speed ratio (vmapped / "
          "sequential) |")
    print("|---|---|---|---|---|")
    for arm in arms:
      r = cpu_row(arm, args.cpu_seeds, args.rounds)
      print(f"| {arm} | {r['parameters'] / 1e6:.2f}M | {1e3 * r['sequential_s']:.1f} ms | "
            f"{1e3 * r['vmapped_s']:.1f} ms | {r['speed_ratio']:.2f}x |", flush=True)
  if "tpu" not in args.skip:
    topology = aot.parse_topology(args.topology)
    print(f"\nTPU {topology.name} ({topology.chips} chip), compiled ahead of time; roofline = "
          "lower bound on the step time (research.aot), an estimate\n")
    print("| arm | seeds K | memory per chip | roofline step (compute / HBM terms) | per seed | "
          "limited by | MFU bound | ops launched per step (per seed) | compile here |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arm in arms:
      for k in (int(s) for s in args.tpu_seeds.split(",")):
        r = tpu_row(arm, k, topology)
        print(f"| {arm} | {k} | {r['memory_bytes'] / 2**20:,.1f} MiB of "
              f"{r['hbm_bytes'] / 2**30:.0f} GiB | {1e3 * r['step_s']:.3f} ms "
              f"({1e3 * r['compute_s']:.3f} / {1e3 * r['hbm_s']:.3f}) | "
              f"{1e6 * r['per_seed_s']:.1f} us | {r['limited_by']} | {100 * r['mfu']:.1f}% | "
              f"{r['ops']} ({r['ops'] / k:.1f}) | "
              f"{r['compile_s']:.0f} s |", flush=True)


if __name__ == "__main__":
  main()
