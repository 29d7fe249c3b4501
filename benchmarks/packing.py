"""What packing with segment ids buys (issue #17): fine-tuning packed against padded, and
pretraining on whole documents against a stream of windows.

  .venv/bin/python benchmarks/packing.py --out=runs/packing_bench           # the comparison
  .venv/bin/python benchmarks/packing.py --steps=6 --eval_examples=4 --eval_batches=2 \
      --out=/tmp/packing_smoke                                             # a smoke run

1. Fine-tuning configs/alpaca_gpt.py and configs/spa_eng_t5.py, task.packing=False (one example
   per row, padded) against True, with the same steps, seed and tokenizer: real (non-padding)
   tokens per second of training, their ratio, and the validation loss and task metric of
   each after the run. Real tokens: non-pad input tokens (decoder); non-pad encoder inputs plus
   targets (encoder-decoder), counted over the very batches the run trained on. Alpaca's
   256-token rows hold several examples as they are; spa_eng_t5's 24-token rows hold one
   sentence pair, so its packed run has rows 4x as long and 1/4 as many (data.seq_len=96,
   batch 16; --t5_row_factor): the same tokens per step, the same examples (cut at
   max_input_len as before).
2. Pretraining configs/gpt_shakespeare_char.py's model with data.packing="documents" against
   "stream" at equal steps, on a corpus of documents: Tiny Shakespeare's training text cut at
   blank lines (one speech a document, data.dataset="text_files"); the validation loss of each,
   over the same validation windows (EOS-separated documents).

Each run goes through research.train.train_and_evaluate in its own workdir under --out. The
two runs of a comparison alternate in --rounds rounds (each resumes from its checkpoint), so a
shared machine's changing load weighs on both alike; training seconds come from metrics.jsonl,
leaving out the first logged window of each round (it compiles). Writes <out>/packing.json
and <out>/packing.md.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import time

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from research import tasks, train  # pylint: disable=wrong-import-position
from research.config import (ExperimentConfig,  # pylint: disable=wrong-import-position
                             load_config_file)
from research.paths import DATA_ROOT, REPO_ROOT  # pylint: disable=wrong-import-position

# name: (config, what the packed run changes besides task.packing)
FINETUNE = {"alpaca_gpt": ("configs/alpaca_gpt.py", lambda args: {}),
            "spa_eng_t5": ("configs/spa_eng_t5.py", lambda args: {"data": {
                "seq_len": 24 * args.t5_row_factor, "batch_size": 64 // args.t5_row_factor}})}
PRETRAIN = "configs/gpt_shakespeare_char.py"
METRICS = ("eval/rouge1", "eval/rougeL", "eval/bleu")  # whichever the task reports


def make_config(path: str, sections: dict[str, dict]) -> ExperimentConfig:
  config = load_config_file(str(REPO_ROOT / path))
  for section, values in sections.items():
    config[section].update(values)
  return ExperimentConfig.from_config_dict(config)


def timed_windows(workdir: pathlib.Path, starts: list[int]) -> list[tuple[int, int, float]]:
  """(first step, end step, seconds) of each logged training window in metrics.jsonl, but the
  first window after each start (it compiles)."""
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  windows, previous = [], 0
  for record in (r for r in records if "train/steps_per_second" in r):
    step = record["step"]
    if not any(previous <= s < step for s in starts):
      windows.append((previous, step, (step - previous) / record["train/steps_per_second"]))
    previous = step
  return windows


def real_tokens(batch: dict, pad_id: int) -> tuple[int, int]:
  """(real tokens, token slots) of a training batch."""
  if "encoder_inputs" in batch:
    real = (batch["encoder_inputs"] != pad_id).sum() + (batch["targets"] != pad_id).sum()
    return int(real), batch["encoder_inputs"].size + batch["targets"].size
  return int((batch["inputs"] != pad_id).sum()), batch["inputs"].size


def real_tokens_per_step(config: ExperimentConfig, workdir: pathlib.Path,
                         steps: int) -> tuple[list, int]:
  """Real tokens of each of the first `steps` training batches (the ones the run took), and
  the token slots of a batch."""
  exp = train.build_experiment(config, workdir)
  batches = iter(exp.train_batches())
  counts = [real_tokens(next(batches), exp.data.tokenizer.pad_id) for _ in range(steps)]
  return [real for real, _ in counts], counts[0][1]


def fresh(workdir: pathlib.Path) -> pathlib.Path:
  """An empty workdir: a run here starts from step 0, not from an earlier run's checkpoint."""
  if workdir.exists():
    shutil.rmtree(workdir)
  return workdir


def compare(runs: dict[str, tuple[str, dict, pathlib.Path]], args) -> dict:
  """Trains each run (label: config, sections, workdir) to the same step, in args.rounds rounds
  that alternate between the runs (each round resumes from the last checkpoint), so that a
  machine's load changing over time weighs on every run alike. Rounds before the last evaluate
  on one batch and one example (research.train evaluates at the end of every run)."""
  path, sections, _ = next(iter(runs.values()))
  first = make_config(path, sections)
  total = first.train.steps
  schedule = {"decay_steps": first.optimizer.decay_steps or total}  # as in one straight run
  starts = {label: [] for label in runs}
  finals, walls = {}, {label: 0.0 for label in runs}
  for k in range(1, args.rounds + 1):
    for label, (path, sections, workdir) in runs.items():
      last = k == args.rounds
      cheap_eval = {} if last else {"eval_batches": 1}
      config = make_config(path, {
          **sections, "optimizer": schedule,
          "train": {**sections.get("train", {}), "steps": total * k // args.rounds,
                    **cheap_eval},
          "task": {**sections.get("task", {}),
                   **({} if last else {"eval_examples": 1, "eval_batch_size": 1})}})
      starts[label].append(total * (k - 1) // args.rounds)
      begin = time.perf_counter()
      finals[label] = train.train_and_evaluate(config, str(workdir))
      walls[label] += time.perf_counter() - begin
  results = {}
  for label, (path, sections, workdir) in runs.items():
    config = make_config(path, {**sections, "optimizer": schedule})
    per_step, slots = real_tokens_per_step(config, workdir, total)
    windows = timed_windows(workdir, starts[label])
    seconds = sum(w[2] for w in windows)
    results[label] = {
        "steps": total, "wall_seconds": walls[label], "timed_steps": sum(b - a for a, b, _ in
                                                                          windows),
        "timed_seconds": seconds, "real_tokens_per_step": sum(per_step) / total,
        "real_fraction": sum(per_step) / total / slots,
        # Real tokens of the timed steps over their seconds.
        "real_tokens_per_second": (sum(sum(per_step[a:b]) for a, b, _ in windows) / seconds
                                   if seconds else float("nan")),
        "eval": {k: v for k, v in finals[label].items() if isinstance(v, (int, float))}}
  return results


def finetune_sections(name: str, mode: str, args) -> dict[str, dict]:
  """What the `mode` ("padded" or "packed") fine-tuning of FINETUNE[name] changes in its
  config: task.packing, and for the packed run what FINETUNE says besides."""
  sections = {"task": {"packing": mode == "packed"}, "data": {}}
  for section, values in (FINETUNE[name][1](args) if mode == "packed" else {}).items():
    sections.setdefault(section, {}).update(values)
  return sections


def finetune(name: str, args, out: pathlib.Path) -> dict:
  path, _ = FINETUNE[name]
  runs = {}
  for mode in ("padded", "packed"):
    sections = {**finetune_sections(name, mode, args), "train": dict(args.train)}
    if args.eval_examples:
      sections["task"]["eval_examples"] = args.eval_examples
    runs[mode] = (path, sections, fresh(out / f"{name}_{mode}"))
  # The same tokenizer for both: the padded run's, built here first.
  train.build_experiment(make_config(path, runs["padded"][1]), runs["padded"][2])
  tasks.copy_tokenizer(runs["padded"][2], runs["packed"][2])
  results = compare(runs, args)
  results["ratio"] = (results["packed"]["real_tokens_per_second"] /
                      results["padded"]["real_tokens_per_second"])
  return results


def speeches_corpus(folder: pathlib.Path) -> pathlib.Path:
  """Tiny Shakespeare's text cut at blank lines: one speech per JSON line."""
  text = (DATA_ROOT / "tiny_shakespeare" / "input.txt").read_text(encoding="utf-8")
  speeches = [s.strip() for s in text.split("\n\n") if s.strip()]
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / "speeches.jsonl"
  path.write_text("".join(json.dumps({"text": s}) + "\n" for s in speeches), encoding="utf-8")
  return folder


def pretrain(args, out: pathlib.Path) -> dict:
  corpus = speeches_corpus(out / "speeches")
  runs = {}
  for packing in ("stream", "documents"):
    sections = {"data": {"dataset": "text_files", "files": str(corpus), "packing": packing,
                         "data_dir": str(out / "tfds")},
                "train": dict(args.train)}
    runs[packing] = (PRETRAIN, sections, fresh(out / f"gpt_{packing}"))
  return compare(runs, args)


def markdown(report: dict) -> str:
  lines = ["| run | steps | real tokens/step (share) | real tokens/s | eval loss | metric |",
           "|---|---|---|---|---|---|"]
  for name, runs in report["finetune"].items():
    for mode in ("padded", "packed"):
      lines.append(_row(f"{name} {mode}", runs[mode]))
    lines.append(f"| {name} packed / padded | | | **{runs['ratio']:.2f}x** | | |")
  for mode, result in report["pretrain"].items():
    lines.append(_row(f"gpt_shakespeare_char speeches, packing={mode}", result))
  return "\n".join(lines) + "\n"


def _row(label: str, r: dict) -> str:
  metric = ", ".join(f"{k.split('/')[-1]} {r['eval'][k]:.2f}" for k in METRICS if k in r["eval"])
  return (f"| {label} | {r['steps']} | {r['real_tokens_per_step']:,.0f} "
          f"({r['real_fraction']:.0%}) | {r['real_tokens_per_second']:,.0f} | "
          f"{r['eval'].get('eval/loss', float('nan')):.4f} | {metric} |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--out", default="runs/packing_bench")
  parser.add_argument("--steps", type=int, default=0, help="0: each config's train.steps")
  parser.add_argument("--eval_examples", type=int, default=0,
                      help="task examples generated for the metric (0: the config's)")
  parser.add_argument("--eval_batches", type=int, default=0, help="0: the whole split")
  parser.add_argument("--rounds", type=int, default=4,
                      help="alternate the compared runs in this many rounds (1: one after another)")
  parser.add_argument("--t5_row_factor", type=int, default=4,
                      help="spa_eng_t5 packed: rows this many times as long, as many times fewer")
  parser.add_argument("--only", default=",".join([*FINETUNE, "pretrain"]),
                      help="comma-separated runs among " + ", ".join([*FINETUNE, "pretrain"]))
  args = parser.parse_args()
  out = pathlib.Path(args.out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  args.train = {"eval_every": 0, "eval_batches": args.eval_batches, "async_checkpoints": False,
                "checkpoint_every": 1_000_000}  # a checkpoint at the end of each round only
  if args.steps:
    args.train.update(steps=args.steps, log_every=max(1, args.steps // (5 * args.rounds)))
  only = args.only.split(",")
  report = {"command": " ".join(sys.argv), "finetune": {}, "pretrain": {}}
  report["finetune"] = {name: finetune(name, args, out) for name in FINETUNE if name in only}
  if "pretrain" in only:
    report["pretrain"] = pretrain(args, out)
  (out / "packing.json").write_text(json.dumps(report, indent=1) + "\n")
  (out / "packing.md").write_text(markdown(report))
  print(markdown(report))


if __name__ == "__main__":
  main()
