"""Memory of fine-tuning Gemma 3 270M, LoRA against full fine-tuning, measured on real steps.

  .venv/bin/python benchmarks/lora_memory.py [--steps=3] \
      [--config=configs/gemma3_270m_spa_eng_lora.py] [--modes=lora,full]

Each mode trains in a fresh child process, as research.train would start it (the config's
init_from, its task data and tokenizer, its batch; a temporary workdir, no checkpoint, no
evaluation): "lora" is the config as it is (rank-8 adapters, the base frozen), "full" the same
config with lora.rank=0 (every parameter trained from the pretrained values). Per mode:
  - the bytes of what the optimizer trains and of its state (AdamW's moments and counts), summed
    over the arrays of the state pytree after the steps; with LoRA the frozen base's too;
  - the process's peak resident memory (VmHWM of /proc/self/status; not ru_maxrss, which Linux
    keeps across fork and exec) once the model, data and state are ready, and after the steps:
    the second is the peak of the whole run, loading included;
  - the median seconds of the steps after the first (which compiles): noisy on shared cores.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/gemma3_270m_spa_eng_lora.py"


def peak_rss_bytes() -> int:
  """This process's peak resident memory so far (VmHWM)."""
  with open("/proc/self/status", encoding="ascii") as status:
    for line in status:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024  # reported in KiB
  raise RuntimeError("no VmHWM in /proc/self/status")


def train_steps(config_file: str, mode: str, steps: int) -> dict:
  """Runs `steps` train steps of the config (lora.rank=0 for mode "full") in this process and
  returns the figures of the module docstring."""
  # pylint: disable=import-outside-toplevel  (the parent process never starts JAX)
  import flax.linen as nn
  import jax

  from research import lora, sharding, train
  from research.config import ExperimentConfig, load_config_file
  from research.init_from import copy_pretrained_tokenizer, init_from_pretrained
  # pylint: enable=import-outside-toplevel

  raw = load_config_file(str(REPO / config_file))
  if mode == "full":
    raw.lora.rank = 0
  raw.train.steps = steps
  config = train.inherit_pretrained(ExperimentConfig.from_config_dict(raw))
  with tempfile.TemporaryDirectory() as workdir:
    copy_pretrained_tokenizer(config.init_from, pathlib.Path(workdir))
    exp = train.build_experiment(config, workdir)
    cfg = exp.config
    step_fn, _ = train.make_step_fns(exp)  # with LoRA: loads the frozen base
    rng = jax.random.key(cfg.train.seed)
    # Read outside the run's mesh and kept through the steps, as research.train does.
    pretrained = None if cfg.lora.rank else train.pretrained_params(cfg.init_from)
    with jax.set_mesh(exp.mesh), nn.logical_axis_rules(cfg.rules):
      if cfg.lora.rank:
        state = train.create_state(exp.model, exp.tx, cfg, exp.shardings, rng)
      else:
        state = init_from_pretrained(exp, rng, pretrained)
      batches = iter(exp.train_batches())
      ready_peak = peak_rss_bytes()
      seconds = []
      for _ in range(steps):
        batch = sharding.shard_batch(next(batches), exp.mesh, cfg.rules)
        start = time.perf_counter()
        state, metrics = step_fn(state, batch)
        jax.block_until_ready(metrics)
        seconds.append(time.perf_counter() - start)
    return {
        "mode": mode, "lora_rank": cfg.lora.rank, "steps": steps,
        "batch": [cfg.data.batch_size, cfg.data.seq_len],
        "trained_bytes": lora.num_bytes(state.params),
        "optimizer_state_bytes": lora.num_bytes(state.opt_state),
        "frozen_base_bytes": lora.num_bytes(exp.frozen) if cfg.lora.rank else 0,
        "loss": float(metrics["loss_sum"] / max(float(metrics["weight_sum"]), 1.0)),
        "peak_ready_bytes": ready_peak, "peak_bytes": peak_rss_bytes(),
        "step_s": statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]}


def run_child(config_file: str, mode: str, steps: int) -> dict:
  command = [sys.executable, __file__, f"--config={config_file}", f"--child={mode}",
             f"--steps={steps}"]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
  if result.returncode < 0:  # a signal: the kernel's OOM killer sends SIGKILL
    raise SystemExit(f"error: the {mode} child was killed by signal {-result.returncode} "
                     "(SIGKILL: out of memory?); free memory, or lower --steps")
  if result.returncode:
    raise SystemExit(f"error: the {mode} child failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=DEFAULT_CONFIG)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--modes", default="lora,full")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.steps < 1:
    raise SystemExit(f"error: --steps={args.steps} must be >= 1")
  modes = [m for m in args.modes.split(",") if m]
  if args.child or not modes or set(modes) - {"lora", "full"}:
    if args.child in ("lora", "full"):
      print(json.dumps(train_steps(args.config, args.child, args.steps)))
      return
    raise SystemExit(f"error: modes {args.child or args.modes!r}: choose from lora,full")
  from research import machine  # pylint: disable=import-outside-toplevel
  print(f"machine: {machine.summary(machine.describe())}")
  rows = [run_child(args.config, mode, args.steps) for mode in modes]
  b, t = rows[0]["batch"]
  print(f"{args.config}, {args.steps} steps of {b} x {t} tokens per mode, each in a fresh "
        "process")
  print("| | trained (MiB) | optimizer state (MiB) | frozen base (MiB) | peak RSS, ready (GiB) "
        "| peak RSS, after the steps (GiB) | step (s) | last loss |")
  print("|---|---|---|---|---|---|---|---|")
  mib = lambda n: f"{n / 2**20:,.1f}"
  gib = lambda n: f"{n / 2**30:.2f}"
  for r in rows:
    name = f"LoRA r={r['lora_rank']}" if r["lora_rank"] else "full fine-tuning"
    print(f"| {name} | {mib(r['trained_bytes'])} | {mib(r['optimizer_state_bytes'])} | "
          f"{mib(r['frozen_base_bytes']) if r['lora_rank'] else '-'} | "
          f"{gib(r['peak_ready_bytes'])} | {gib(r['peak_bytes'])} | {r['step_s']:.1f} | "
          f"{r['loss']:.3f} |")


if __name__ == "__main__":
  main()
