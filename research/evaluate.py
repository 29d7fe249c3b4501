"""Evaluate a trained workdir on a whole split, or a pretrained model few-shot on a task.

  python -m research.evaluate --workdir=runs/gpt_shakespeare_char [--split=validation] [--step=N]
  python -m research.evaluate --workdir=runs/sst2_bert --predictions=runs/sst2_bert/dev.jsonl
  python -m research.evaluate --pretrained=gemma3-270m --task=spa_eng [--shots=3 --limit=200]

Prints the metrics of the workdir's objective (loss, perplexity, token accuracy over every token
of the split) or task (its loss plus accuracy, SQuAD exact match/F1, sacrebleu BLEU with its
signature, or ROUGE-1/2/L, over every example of the split) and writes them to
<workdir>/eval.json (or --output). For a task, --predictions=FILE also writes one JSON line per
example: its input, reference, prediction and whether it is correct (or its score).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys

import flax.linen as nn
import jax
from absl import app, flags
from etils import epath

from research import checkpoint as ckpt_lib
from research import cli, fewshot, paths, tasks
from research import workdir as workdir_lib
from research.config import UserError
from research.experiment import build_experiment, evaluate_split, make_eval_fn
from research.load import load_experiment_config

def define_flags() -> None:
  """The CLI's flags (defined only when run as a program: importing this module defines none)."""
  flags.DEFINE_string("workdir", None, "A training workdir.")
  flags.DEFINE_string("pretrained", None, "Instead of --workdir: a named model (gemma3-270m), "
                      "a GGUF file or a Hugging Face folder, evaluated few-shot on --task.")
  flags.DEFINE_string("task", "", "With --pretrained: spa_eng, eng_spa, sst2, squad or scitldr.")
  flags.DEFINE_integer("shots", None, "With --pretrained: solved examples in the prompt "
                       "(default: the task's, research/fewshot.py).")
  flags.DEFINE_integer("limit", 0, "With --pretrained: the first N examples of the split "
                       "(0: all).")
  flags.DEFINE_string("split", "", "Split to evaluate (default: the config's eval split).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("output", "", "Where to write the JSON (default: WORKDIR/eval.json).")
  flags.DEFINE_string("predictions", "", "A task's predictions, one JSON line per example.")


def evaluate_workdir(workdir: str, split: str = "", step: int | None = None,
                     predictions: str = "") -> dict:
  """Metrics of a workdir's checkpoint on a whole split (a task's predictions to a file)."""
  config = load_experiment_config(workdir)
  if split:
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, eval_split=split))
  if predictions and not config.task.name:
    raise UserError("--predictions is for a fine-tuning task's workdir; this one pretrains")
  exp = build_experiment(config, workdir)
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  step = step if step is not None else checkpointer.latest_step()
  if step is None or step not in checkpointer.all_steps():
    raise UserError(f"no checkpoint {'' if step is None else step} in {checkpointer.directory}; "
                    f"available steps: {checkpointer.all_steps()}")
  eval_fn = make_eval_fn(exp)
  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(exp.config.rules):
    state = checkpointer.restore(step, ckpt_lib.abstract_like(exp.abstract_state, exp.shardings))
    metrics = evaluate_split(exp, eval_fn, state.params, task_examples=0,
                             predictions_file=predictions or None)
  what = ({"task": _task_name(exp.config)} if exp.is_task
          else {"objective": exp.config.objective.name})
  return {"step": step, "split": exp.config.data.eval_split, **what,
          **{k.removeprefix("eval/"): v for k, v in metrics.items()}}


def check_output(output: epath.Path, what: str = "--output folder", flag: str = "--output",
                 example: str = "eval.json") -> None:
  """--output (or --predictions) must be a file that can be written (checked before the
  evaluation runs)."""
  if paths.is_url(output):
    return
  if output.is_dir():
    raise UserError(f"{flag}={output} is a folder; name a file (e.g. {output / example})")
  folder = output.parent
  if not folder.is_dir():
    raise UserError(f"{flag}={output}: folder {folder} does not exist; create it first")
  workdir_lib.check_writable(folder, what)


def check_not_own(workdir: epath.Path, output: str, predictions: str) -> None:
  """--output and --predictions name neither one of the workdir's own files (config.json,
  metrics.jsonl, a checkpoint, ...) nor the same file: UserError, before anything is read."""
  for flag, value in (("--output", output), ("--predictions", predictions)):
    if value:
      own = workdir_lib.own_file(workdir, paths.workdir_path(value))
      if own is not None:
        raise UserError(f"{flag}={value} would overwrite {own} of the workdir it evaluates; "
                        f"name a new file (e.g. {workdir / 'eval.json'} or another folder)")
  metrics = output or os.fspath(workdir / "eval.json")
  if predictions and (workdir_lib.resolved_path(paths.workdir_path(predictions))
                      == workdir_lib.resolved_path(paths.workdir_path(metrics))):
    raise UserError(f"--predictions={predictions} is also where the metrics go (--output="
                    f"{metrics}); name two different files")


def _task_name(config) -> str:
  return tasks.task_name(config)


def main(argv) -> None:
  cli.quiet_logs()
  cli.reject_positional_args(argv)

  f = flags.FLAGS

  def body():
    if bool(f.workdir) == bool(f.pretrained):
      raise UserError("pass one of --workdir=RUN (a training workdir) and --pretrained=MODEL "
                      "with --task=NAME (few-shot)")
    if f.pretrained:
      return evaluate_pretrained()
    if f.task or f.shots is not None or f.limit:
      raise UserError("--task, --shots and --limit are for --pretrained (few-shot); a workdir "
                      "is evaluated on its own task (pick the split with --split)")
    workdir = paths.workdir_path(f.workdir)
    paths.check_bucket(workdir)
    if not paths.is_url(workdir) and not workdir.is_dir():
      raise UserError(f"--workdir {workdir} {'is a file' if workdir.exists() else 'does not exist'}"
                      ": not a training workdir; pass the --workdir of a run started with "
                      "research.train")
    output = epath.Path(f.output) if f.output else workdir / "eval.json"
    check_not_own(workdir, f.output, f.predictions)  # a read never writes over what it reads
    paths.check_bucket(output)  # before the evaluation, not after it
    check_output(output, "--output folder" if f.output else "--workdir")
    if f.predictions:
      paths.check_bucket(f.predictions)
      check_output(paths.workdir_path(f.predictions), "--predictions folder", "--predictions",
                   "predictions.jsonl")
    # Writing into the workdir waits for no one: a run training there holds its lock.
    in_workdir = not f.output and workdir.is_dir()
    with (workdir_lib.lock(workdir, "research.evaluate") if in_workdir
          else contextlib.nullcontext()):
      result = evaluate_workdir(f.workdir, f.split, f.step, f.predictions)
      for key, value in result.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
      if jax.process_index() == 0:
        paths.write_atomic(output, json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}" + (f" and {f.predictions}" if f.predictions else ""), file=sys.stderr)

  def evaluate_pretrained():
    if not f.task:
      raise UserError(f"--pretrained is evaluated few-shot on a task: add --task=NAME, one of "
                      f"{sorted(fewshot.TASKS)}")
    if f.step is not None:
      raise UserError("--step is for a workdir's checkpoints; --pretrained has one set of weights")
    for path, flag in ((f.output, "--output"), (f.predictions, "--predictions")):
      if path:
        paths.check_bucket(path)
        check_output(paths.workdir_path(path), f"{flag} folder", flag)
    result = fewshot.run(f.pretrained, f.task, split=f.split, shots=f.shots, limit=f.limit,
                         predictions_file=f.predictions)
    for key, value in result.items():
      print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    if f.output:
      paths.write_atomic(epath.Path(f.output), json.dumps(result, indent=2) + "\n")
      print(f"wrote {f.output}", file=sys.stderr)

  cli.run_cli(body)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
