"""Our GPT train step (float32, and bfloat16 matmul operands) against the PyTorch peer,
interleaved in rounds so that a busy machine slows all of them alike.

  .venv/bin/python benchmarks/compare_torch_peer.py --shape=small --rounds=6 --steps=10 \
      [--torch_python=/tmp/torchenv/bin/python] [--omp_passive]

Our side: configs/gpt_shakespeare_char_nanogpt.py (nanoGPT's architecture and optimizer) at the
peer's shape, research.train's compiled step on random batches (research/bench.py). The peer:
benchmarks/torch_peer_gpt.py --serve in the torch interpreter, eager fp32, 2 threads. Each
round runs --steps steps of each contender in turn (the order rotating); the table gives the
median ms/step over all rounds and the speed relative to the peer (> 1: faster than PyTorch).
--omp_passive sets OMP_WAIT_POLICY=PASSIVE for the peer: when other processes share the cores,
OpenMP's spinning threads wait on each other (30x slower steps were seen on a loaded machine).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # pylint: disable=wrong-import-position

from research import bench  # pylint: disable=wrong-import-position
from research.config import (ExperimentConfig,  # pylint: disable=wrong-import-position
                             load_config_file)
from research.paths import REPO_ROOT  # pylint: disable=wrong-import-position

SHAPES = {"small": (4, 4, 128, 64, 12), "10.7m": (6, 6, 384, 256, 8)}  # as the peer's


def our_config(shape: str, matmul_dtype: str) -> ExperimentConfig:
  layers, heads, width, context, batch = SHAPES[shape]
  config = load_config_file(str(REPO_ROOT / "configs/gpt_shakespeare_char_nanogpt.py"))
  config.model.update(num_layers=layers, num_heads=heads, embed_dim=width, mlp_dim=4 * width,
                      max_len=context, vocab_size=65, matmul_dtype=matmul_dtype)
  config.data.update(seq_len=context, batch_size=batch)
  config.mesh.update(data=1)
  return ExperimentConfig.from_config_dict(config)


class Peer:
  """The torch peer in its own interpreter, answering "run N steps" requests."""

  def __init__(self, python: str, shape: str, passive: bool):
    env = dict(os.environ)
    if passive:
      env["OMP_WAIT_POLICY"] = "PASSIVE"
    self.process = subprocess.Popen(
        [python, str(REPO_ROOT / "benchmarks/torch_peer_gpt.py"), f"--shape={shape}", "--serve"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    self.parameters = json.loads(self.process.stdout.readline())["parameters"]

  def run(self, n: int) -> list[float]:
    self.process.stdin.write(f"{n}\n")
    self.process.stdin.flush()
    return json.loads(self.process.stdout.readline())["step_s"]

  def close(self) -> None:
    self.process.stdin.close()
    self.process.wait(timeout=60)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
  parser.add_argument("--rounds", type=int, default=6)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--torch_python", default="/tmp/torchenv/bin/python")
  parser.add_argument("--omp_passive", action="store_true")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  if not pathlib.Path(args.torch_python).exists():
    sys.exit(f"error: {args.torch_python} not found; install torch into its own venv: "
             "python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy")
  contenders = {}
  for dtype in ("float32", "bfloat16"):
    config = our_config(args.shape, dtype)
    exp = bench.synthetic_experiment(config)
    step = bench.compile_train_step(exp, [bench.synthetic_batch(config, s) for s in range(4)])
    step.run(3)  # warm-up
    contenders[f"ours {dtype}"] = step.run
  peer = Peer(args.torch_python, args.shape, args.omp_passive)
  contenders["pytorch fp32"] = peer.run
  times = {name: [] for name in contenders}
  names = list(contenders)
  try:
    for r in range(args.rounds):
      for name in names[r % len(names):] + names[:r % len(names)]:
        times[name] += contenders[name](args.steps)
  finally:
    peer.close()
  medians = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
  peer_ms = medians["pytorch fp32"]
  print(f"shape {args.shape}: {args.rounds} rounds x {args.steps} steps, interleaved"
        + (", peer with OMP_WAIT_POLICY=PASSIVE" if args.omp_passive else ""))
  for name, ms in medians.items():
    print(f"  {name:<14} {ms:8.2f} ms/step  ({peer_ms / ms:.2f}x the peer's speed)")
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(
        {"shape": args.shape, "rounds": args.rounds, "steps": args.steps,
         "omp_passive": args.omp_passive, "median_ms": medians,
         "step_s": times}, indent=2) + "\n")


if __name__ == "__main__":
  main()
