"""Figures of the scale options: compile time against depth (scanned or not), FSDP memory.

  .venv/bin/python benchmarks/scale_report.py [--layers=4,12,24] [--out=FILE.json]
  .venv/bin/python benchmarks/scale_report.py --skip_compile --skip_fsdp --step_shape=10.7m \
      --rounds=2 --step_steps=3          # scanned vs unscanned at the 10.7M shape (README)

1. Compile seconds of research.train's step (forward, backward, AdamW) for the default GPT's
   shape (configs/gpt_shakespeare_char.py) at each depth, with and without model.scan_layers,
   interleaved, a fresh batch size per measurement so that nothing comes from a cache.
2. Step time of the default GPT (or, --step_shape=10.7m, the 10.7M GPT in float32) with each
   scale option (unscanned, scanned, scanned with dots_saveable, remat full and dots_saveable),
   interleaved in rounds: what the options cost on a CPU.
3. Per-device bytes of the compiled step's arguments on mesh fsdp=8 (8 CPU devices, made here
   with --xla_force_host_platform_device_count; batch 16), for each family, against the state's
   total / 8.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()

import flax.linen as nn  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from research import bench, train  # pylint: disable=wrong-import-position
from research.config import (ExperimentConfig,  # pylint: disable=wrong-import-position
                             load_config_file)
from research.paths import REPO_ROOT  # pylint: disable=wrong-import-position

FAMILY_CONFIGS = {"decoder": "configs/gpt_shakespeare_char.py",
                  "encoder": "configs/bert_shakespeare_mlm.py",
                  "encoder_decoder": "configs/t5_shakespeare_span.py"}


def config_of(path: str, **sections) -> ExperimentConfig:
  config = load_config_file(str(REPO_ROOT / path))
  config.model.vocab_size = 168  # what the char tokenizer gives with 100 sentinels
  for section, values in sections.items():
    config[section].update(values)
  return ExperimentConfig.from_config_dict(config)


def abstract_batch(config: ExperimentConfig):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                      bench.synthetic_batch(config))


def compile_seconds(num_layers: int, scan: bool, batch_size: int) -> float:
  config = config_of(FAMILY_CONFIGS["decoder"], mesh=dict(data=1),
                     model=dict(num_layers=num_layers, scan_layers=scan),
                     data=dict(batch_size=batch_size))
  exp = bench.synthetic_experiment(config, jax.devices()[:1])
  step, _ = train.make_step_fns(exp)
  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(config.rules):
    lowered = step.lower(exp.abstract_state, abstract_batch(config))
    start = time.perf_counter()
    lowered.compile()
    return time.perf_counter() - start


STEP_VARIANTS = {"unscanned": {}, "scanned": {"scan_layers": True},
                 "scanned dots_saveable": {"scan_layers": True, "remat": "dots_saveable"},
                 "remat full": {"remat": "full"}, "remat dots_saveable": {"remat": "dots_saveable"}}
# --step_shape=10.7m: the PyTorch peer's larger GPT (nanoGPT's architecture, 6 layers, 6 heads,
# width 384, context 256, batch 8, as in benchmarks/compare_torch_peer.py), in float32.
SHAPE_10_7M = dict(config="configs/gpt_shakespeare_char_nanogpt.py",
                   model=dict(num_layers=6, num_heads=6, embed_dim=384, mlp_dim=1536, max_len=256,
                              vocab_size=65, matmul_dtype="float32"),
                   data=dict(seq_len=256, batch_size=8))


def step_times(rounds: int, steps: int = 10, shape: str = "default") -> dict[str, float]:
  """Median ms/step of each variant, interleaved: round r runs `steps` steps of each in turn."""
  runs = {}
  sections = SHAPE_10_7M if shape == "10.7m" else dict(config=FAMILY_CONFIGS["decoder"],
                                                        model={}, data={})
  for name, model in STEP_VARIANTS.items():
    config = config_of(sections["config"], mesh=dict(data=1),
                       model={**sections["model"], **model}, data=sections["data"])
    step = bench.compile_train_step(bench.synthetic_experiment(config, jax.devices()[:1]),
                                    [bench.synthetic_batch(config, s) for s in range(4)])
    step.run(3)
    runs[name] = (step, [])
  for _ in range(rounds):
    for step, times in runs.values():
      times += step.run(steps)
  return {name: 1e3 * float(np.median(times)) for name, (_, times) in runs.items()}


def fsdp_bytes(family: str, scan: bool) -> dict:
  config = config_of(FAMILY_CONFIGS[family], mesh=dict(data=1, fsdp=8, tensor=1),
                     model=dict(scan_layers=scan), data=dict(batch_size=16))
  exp = bench.synthetic_experiment(config, jax.devices()[:8])
  step, _ = train.make_step_fns(exp)
  data = abstract_batch(config)
  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(config.rules):
    compiled = step.lower(exp.abstract_state, data).compile()
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  state = nbytes(exp.abstract_state)
  per_device = compiled.memory_analysis().argument_size_in_bytes - nbytes(data) / 8
  return {"family": family, "scan_layers": scan, "state_bytes": state,
          "per_device_bytes": per_device, "ratio_to_ideal": per_device / (state / 8)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--layers", default="4,12,24")
  parser.add_argument("--skip_compile", action="store_true")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--step_shape", choices=["default", "10.7m"], default="default",
                      help="shape of the step-time comparison (the default GPT's, or 10.7M)")
  parser.add_argument("--step_steps", type=int, default=10, help="steps per variant per round")
  parser.add_argument("--skip_fsdp", action="store_true")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  depths = [int(x) for x in args.layers.split(",")]
  compile_times = {(d, s): [] for d in depths for s in (False, True)}
  for r in range(0 if args.skip_compile else args.rounds):
    for d in depths:
      for s in (False, True):
        compile_times[(d, s)].append(compile_seconds(d, s, batch_size=12 + r))
  if not args.skip_compile:
    print("compile seconds of the train step (median of rounds):")
    print(f"  {'layers':>6} {'unscanned':>10} {'scanned':>10}")
  for d in depths if not args.skip_compile else ():
    print(f"  {d:>6} {np.median(compile_times[(d, False)]):>10.2f} "
          f"{np.median(compile_times[(d, True)]):>10.2f}")
  steps = step_times(args.rounds * 2, args.step_steps, args.step_shape)
  print(f"ms/step of the {'10.7M' if args.step_shape == '10.7m' else 'default'} GPT "
        "(median, interleaved):")
  for name, ms in steps.items():
    print(f"  {name:<20} {ms:8.2f}")
  fsdp = [] if args.skip_fsdp else [fsdp_bytes(f, s) for f in FAMILY_CONFIGS
                                      for s in (False, True)]
  if fsdp:
    print("per-device parameter + optimizer bytes on fsdp=8 (ideal: total / 8):")
  for row in fsdp:
    print(f"  {row['family']:<16} {'scanned' if row['scan_layers'] else 'unscanned':<9} "
          f"{row['per_device_bytes'] / 2**20:8.3f} MiB of {row['state_bytes'] / 2**20:8.3f} "
          f"MiB = {row['ratio_to_ideal']:.3f} x total/8")
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps({
        "compile_s": {f"{d}_{'scanned' if s else 'unscanned'}": v
                      for (d, s), v in compile_times.items()},
        "step_ms": steps, "fsdp": fsdp}, indent=2) + "\n")


if __name__ == "__main__":
  main()
