"""Which packed row shape trains spa_eng_t5 on the fewest FLOPs per real token (issue #17): over a
grid of (input, target) row lengths, the fill that the training packer reaches on the training
pairs, and the packed/padded throughput ratio that fill allows if a FLOP costs the same in both.

  .venv/bin/python benchmarks/packing_rows.py

The packer is training's own (research.data.packing.pack_windows: 1,024 pairs at a time, rows
filled with both sides kept even), fed the first --pairs training pairs in a seeded order, cut
as training cuts them; --packer=first_fit packs with grain's first-fit over 64 open rows instead
(what fine-tuning used before). The
bound of a shape is its real tokens per analytic training GFLOP (research.flops) over those of
the padded rows (one pair per row of max_input_len + max_target_len). Longer rows fill better but
pay more attention per token; target slots cost about twice input slots (the output layer).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
import grain
import numpy as np
from benchmarks.packing import finetune_sections, make_config
from research import flops, kinds, tasks, train
from research.data import packing
# pylint: enable=wrong-import-position

CONFIG = "configs/spa_eng_t5.py"


def fill(examples: list[dict[str, np.ndarray]], input_len: int, target_len: int, pad_id: int,
         packer: str) -> tuple[int, int]:
  """(rows, real tokens) of the examples packed into rows of these lengths."""
  lengths = {"source": input_len, "target": target_len}
  read = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  rows = getattr(packing, packer)(grain.MapDataset.source(examples).to_iter_dataset(read),
                                  lengths, seed=0, padding={k: pad_id for k in lengths})
  count = real = 0
  for row in rows:
    count += 1
    real += int((row["source_segment_ids"] > 0).sum() + (row["target_segment_ids"] > 0).sum())
  return count, real


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--out", default="runs/packing_rows", help="workdir of the tokenizer")
  parser.add_argument("--pairs", type=int, default=20000)
  parser.add_argument("--inputs", default="72,96,120,144,192", help="input row lengths")
  parser.add_argument("--packer", default="pack_windows", choices=("pack_windows", "first_fit"))
  parser.add_argument("--t5_row_factor", type=int, default=4)  # finetune_sections reads it
  args = parser.parse_args()
  exp = train.build_experiment(make_config(CONFIG, finetune_sections("spa_eng_t5", "packed", args)),
                               pathlib.Path(args.out).resolve())
  kind = exp.data.kind
  records = tasks.records(kinds.task_of(exp.config), exp.config.data.train_split,
                          exp.data.data_dir)
  features = kind.features(records)
  order = np.random.default_rng(0).permutation(len(features))[:args.pairs]
  examples = [kind.pack_example(features[i]) for i in order]
  padded_real = sum(len(e["source"]) + len(e["target"]) for e in examples)
  padded_gflop = len(examples) * flops.training_flops_per_example(
      exp.config, (kind.input_len, kind.target_len)) / 1e9
  padded_rate = padded_real / padded_gflop
  print(f"padded ({kind.input_len} + {kind.target_len}): {padded_real / len(examples):.1f} real "
        f"tokens per row, {padded_rate:.1f} real tokens/GFLOP\n")
  print("| rows (inputs + targets) | fill | real tokens/GFLOP | bound (packed / padded) |")
  print("|---|---|---|---|")
  results = []
  for input_len in map(int, args.inputs.split(",")):
    for target_len in range(8 * round(0.5 * input_len / 8), int(0.68 * input_len) + 1, 4):
      rows, real = fill(examples, input_len, target_len, exp.data.tokenizer.pad_id,
                        args.packer)
      row_gflop = flops.training_flops_per_example(exp.config, (input_len, target_len)) / 1e9
      rate, share = real / (rows * row_gflop), real / (rows * (input_len + target_len))
      results.append((rate / padded_rate, input_len, target_len, share))
      print(f"| {input_len} + {target_len} | {share:.1%} | {rate:.1f} | "
            f"{rate / padded_rate:.3f}x |", flush=True)
  best = max(results)
  print(f"\nbest: {best[1]} + {best[2]}, {best[3]:.1%} full, {best[0]:.3f}x")


if __name__ == "__main__":
  main()
