"""Evaluate a trained workdir on a whole split.

  python -m research.evaluate --workdir=runs/gpt_shakespeare_char [--split=validation] [--step=N]

Prints the metrics of the workdir's objective (loss, perplexity, token accuracy over every token
of the split) or task (its loss plus accuracy, SQuAD exact match/F1, sacrebleu BLEU with its
signature, or ROUGE-1/2/L, over every example of the split) and writes them to
<workdir>/eval.json (or --output).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import flax.linen as nn
import jax
from absl import app, flags

from research import checkpoint as ckpt_lib
from research import train
from research.config import UserError

def define_flags() -> None:
  """The CLI's flags (defined only when run as a program: importing this module defines none)."""
  flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
  flags.DEFINE_string("split", "", "Split to evaluate (default: the config's eval split).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("output", "", "Where to write the JSON (default: WORKDIR/eval.json).")


def evaluate_workdir(workdir: str, split: str = "", step: int | None = None) -> dict:
  """Metrics of a workdir's checkpoint on a whole split."""
  config = train.load_experiment_config(workdir)
  if split:
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, eval_split=split))
  exp = train.build_experiment(config, workdir)
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  step = step if step is not None else checkpointer.latest_step()
  if step is None or step not in checkpointer.all_steps():
    raise UserError(f"no checkpoint {'' if step is None else step} in {checkpointer.directory}; "
                    f"available steps: {checkpointer.all_steps()}")
  _, eval_fn = train.make_step_fns(exp)
  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(exp.config.rules):
    state = checkpointer.restore(step, ckpt_lib.abstract_like(exp.abstract_state, exp.shardings))
    metrics = train.evaluate_split(exp, eval_fn, state.params, task_examples=0)
  what = ({"task": exp.config.task.name} if exp.is_task
          else {"objective": exp.config.objective.name})
  return {"step": step, "split": exp.config.data.eval_split, **what,
          **{k.removeprefix("eval/"): v for k, v in metrics.items()}}


def main(argv) -> None:
  train.quiet_logs()
  train.reject_positional_args(argv)

  f = flags.FLAGS

  def body():
    result = evaluate_workdir(f.workdir, f.split, f.step)
    for key, value in result.items():
      print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    output = pathlib.Path(f.output or pathlib.Path(f.workdir) / "eval.json")
    if jax.process_index() == 0:
      output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}", file=sys.stderr)

  train.run_cli(body)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=train.parse_flags)
