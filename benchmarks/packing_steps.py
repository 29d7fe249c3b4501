"""The training step alone, packed against padded, in one process (issue #17): what bounds the
fine-tuning ratio that benchmarks/packing.py measures through whole runs.

  .venv/bin/python benchmarks/packing_steps.py --only=spa_eng_t5
  .venv/bin/python benchmarks/packing_steps.py --only=spa_eng_t5 --dropout_rate=0

Each run (a config padded, and packed as benchmarks/packing.py packs it) compiles its train step
once and takes the same first 8 batches of its data; the runs then alternate, `--chunks` times,
timing 4 steps each, so that a shared machine's changing load weighs on both alike. Printed per
run: the median milliseconds per step, real (non-padding) tokens per step and per second, the
analytic training FLOPs per step (research.flops, on the rows the run trains on) and real tokens
per GFLOP. The ratio of the last is what the throughput ratio would be if a FLOP cost the same
in both runs; work whose cost is the same per step in both (dropout's random bits, the optimizer
update) pulls the measured ratio below it.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import statistics
import sys
import time

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
import flax.linen as nn
import jax
from benchmarks.packing import FINETUNE, finetune_sections, fresh, make_config, real_tokens
from research import flops, tasks, train
# pylint: enable=wrong-import-position

STEPS_PER_CHUNK = 4


class TimedRun:
  """One run's compiled step, state and batches."""

  def __init__(self, config, workdir: pathlib.Path):
    self.exp = train.build_experiment(config, workdir)
    batches = iter(self.exp.train_batches())
    self.batches = [next(batches) for _ in range(2 * STEPS_PER_CHUNK)]
    pad = self.exp.data.tokenizer.pad_id
    self.real_per_step = statistics.fmean(real_tokens(b, pad)[0] for b in self.batches)
    self.flops_per_step = flops.training_flops_per_step(
        self.exp.config, getattr(self.exp.data, "row_lengths", None))
    self.step, _ = train.make_step_fns(self.exp)
    self.seconds: list[float] = []
    with self._context():
      self.state = train.create_state(self.exp.model, self.exp.tx, self.exp.config,
                                      self.exp.shardings, jax.random.key(0))
      self._steps(self.batches[:1])  # compiles

  @contextlib.contextmanager
  def _context(self):
    with jax.set_mesh(self.exp.mesh), nn.logical_axis_rules(self.exp.config.rules):
      yield

  def _steps(self, batches) -> None:
    metrics = None
    for batch in batches:
      self.state, metrics = self.step(self.state, batch)
    jax.block_until_ready(metrics)

  def time_chunk(self, k: int) -> None:
    chunk = self.batches[(k % 2) * STEPS_PER_CHUNK:][:STEPS_PER_CHUNK]
    with self._context():
      begin = time.perf_counter()
      self._steps(chunk)
      self.seconds.append((time.perf_counter() - begin) / STEPS_PER_CHUNK)

  def summary(self) -> dict[str, float]:
    seconds = statistics.median(self.seconds)
    return {"ms_per_step": 1e3 * seconds, "real_tokens_per_step": self.real_per_step,
            "real_tokens_per_second": self.real_per_step / seconds,
            "gflops_per_step": self.flops_per_step / 1e9,
            "real_tokens_per_gflop": self.real_per_step / (self.flops_per_step / 1e9)}


def compare(name: str, args, out: pathlib.Path) -> dict[str, dict[str, float]]:
  path, _ = FINETUNE[name]
  runs = {}
  for mode in ("padded", "packed"):
    sections = finetune_sections(name, mode, args)
    if args.dropout_rate is not None:
      sections["model"] = {"dropout_rate": args.dropout_rate}
    workdir = fresh(out / f"{name}_{mode}")
    if mode == "packed":  # the padded run's tokenizer, for the same tokens
      tasks.copy_tokenizer(out / f"{name}_padded", workdir)
    runs[mode] = TimedRun(make_config(path, sections), workdir)
  for k in range(args.chunks):
    for run in runs.values():
      run.time_chunk(k)
  return {mode: run.summary() for mode, run in runs.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--out", default="runs/packing_steps")
  parser.add_argument("--only", default=",".join(FINETUNE), help="comma-separated configs among "
                      + ", ".join(FINETUNE))
  parser.add_argument("--chunks", type=int, default=15, help="timed chunks of 4 steps per run")
  parser.add_argument("--dropout_rate", type=float, default=None,
                      help="model.dropout_rate for both runs (default: the config's)")
  parser.add_argument("--t5_row_factor", type=int, default=4,
                      help="spa_eng_t5 packed: rows this many times as long, as many times fewer")
  args = parser.parse_args()
  out = pathlib.Path(args.out).resolve()
  for name in args.only.split(","):
    result = compare(name, args, out)
    for mode, r in result.items():
      print(f"{name} {mode}: {r['ms_per_step']:.1f} ms/step, {r['real_tokens_per_step']:,.0f} "
            f"real tokens/step, {r['real_tokens_per_second']:,.0f} real tokens/s, "
            f"{r['gflops_per_step']:.2f} GFLOP/step, {r['real_tokens_per_gflop']:.1f} real "
            "tokens/GFLOP")
    ratio = {k: result["packed"][k] / result["padded"][k]
             for k in ("real_tokens_per_second", "real_tokens_per_gflop")}
    print(f"{name} packed / padded: {ratio['real_tokens_per_second']:.2f}x real tokens/s; "
          f"{ratio['real_tokens_per_gflop']:.2f}x real tokens per FLOP")


if __name__ == "__main__":
  main()
