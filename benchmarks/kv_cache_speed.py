"""Is greedy decoding with the KV cache faster than recomputing the whole prefix at every step?

  .venv/bin/python benchmarks/kv_cache_speed.py                       # the default GPT
  .venv/bin/python benchmarks/kv_cache_speed.py --new_tokens=64 --rounds=2 --repeats=2  # quicker
  .venv/bin/python benchmarks/kv_cache_speed.py --config=configs/spa_eng_t5.py --vocab_size=8000

Decodes `--new_tokens` greedy tokens after an 8-token prompt, with the cache
(research.decode.generate: one compiled scan) and by recomputation (the whole sequence through
the model at every step, research.bench.recompute_greedy), on the config's model with random
parameters (speed does not depend on the values; the two give the same tokens, which is
checked). Each round times both (median of --repeats calls after a compiling one); the rounds
alternate, so a shared machine's changing load weighs on both alike. Prints new tokens/s of each
per round and the median ratio cached / recomputed, writes --out (JSON) when given, and exits 1
when the cache is not faster: the README's claim fails on this machine.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
import flax.linen as nn
import jax
import numpy as np

from research import bench, machine, models
from research.config import ExperimentConfig, load_config_file
# pylint: enable=wrong-import-position

CHAR_VOCAB = 65  # Tiny Shakespeare's characters: the default GPT's vocabulary


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/gpt_shakespeare_char.py")
  parser.add_argument("--vocab_size", type=int, default=CHAR_VOCAB,
                      help="model.vocab_size where the config leaves it to the tokenizer")
  parser.add_argument("--new_tokens", type=int, default=256)
  parser.add_argument("--batch_size", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=5, help="timed calls per round (median)")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", default="", help="a JSON file of the results")
  args = parser.parse_args()

  raw = load_config_file(args.config)
  if not raw.model.vocab_size:
    raw.model.vocab_size = args.vocab_size
  config = ExperimentConfig.from_config_dict(raw)
  model = models.build_model(config.model)
  params = nn.unbox(model.init(jax.random.key(0), *models.dummy_inputs(config.model, 1))["params"])

  rounds = []
  for index in range(args.rounds):
    d = bench.bench_decode(config, params, new_tokens=args.new_tokens,
                           batch_size=args.batch_size, repeats=args.repeats)
    if d is None:
      print(f"error: {args.config} is an encoder: it does not decode token by token",
            file=sys.stderr)
      return 2
    rounds.append(d)
    print(f"round {index + 1}: cached {d['cached_tokens_per_s']:,.0f} tokens/s, recomputed "
          f"{d['recompute_tokens_per_s']:,.0f} tokens/s, ratio {d['speedup']:.2f}x, same tokens "
          f"{d['same_tokens']:.0%}", flush=True)
  ratio = float(np.median([d["speedup"] for d in rounds]))
  same = min(d["same_tokens"] for d in rounds)
  where = machine.summary(machine.describe())
  print(f"{args.config}, batch {args.batch_size}, {args.new_tokens} new tokens, median of "
        f"{args.rounds} rounds x {args.repeats} calls on {where}: the KV cache decodes "
        f"{ratio:.2f}x as fast as recomputation")
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps({
        "config": args.config, "machine": machine.describe(), "new_tokens": args.new_tokens,
        "batch_size": args.batch_size, "median_ratio": ratio, "same_tokens": same,
        "rounds": [{k: v for k, v in d.items() if k != "family"} for d in rounds]},
        indent=1) + "\n")
  if same < 1.0:
    print(f"error: the cached and recomputed tokens differ ({same:.0%} the same)",
          file=sys.stderr)
    return 1
  if ratio <= 1.0:
    print("error: the KV cache is not faster than recomputation here", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
