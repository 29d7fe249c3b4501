"""Task kinds and the bundled tasks.

KINDS maps a kind's name to its class (research/kinds/<kind>.py); TASKS maps a bundled task's
name to its description. Adding a kind is one class and one line here; adding a bundled task
is a TFDS builder (research/data/tasks.py) and one TaskDef here.
"""

from __future__ import annotations

from research.config import ConfigError, ExperimentConfig
from research.kinds.base import METRICS, Kind, TaskDef
from research.kinds.classification import Classification
from research.kinds.instruction import Instruction
from research.kinds.span_qa import SpanQA
from research.kinds.text_to_text import TextToText

KINDS: dict[str, type[Kind]] = {
    k.NAME: k for k in (Classification, SpanQA, TextToText, Instruction)}

TASKS: dict[str, TaskDef] = {t.name: t for t in (
    TaskDef("sst2", "classification", "accuracy", before="sentiment: ",
            text_fields=("sentence",), labels=("negative", "positive")),
    TaskDef("squad", "span_qa", "squad_f1", after="\nanswer: "),
    TaskDef("spa_eng", "text_to_text", "bleu", "test", "Spanish: ", "\nEnglish: ",
            input_field="es", target_field="en"),
    TaskDef("scitldr", "text_to_text", "rouge", "test", "", "\nTL;DR: ",
            input_field="document", target_field="summary", references_field="all_summaries"),
    TaskDef("alpaca", "instruction", "rouge", "validation", *Instruction.TEMPLATE),
)}


def is_user_task(config: ExperimentConfig) -> bool:
  return bool(config.task.train_files)


def _split(text: str) -> tuple[str, ...]:
  return tuple(t.strip() for t in text.split(",") if t.strip())


def task_of(config: ExperimentConfig) -> TaskDef:
  """The config's task: a bundled one (task.name), or the user's files (task.train_files)."""
  t = config.task
  if not is_user_task(config):
    if t.name not in TASKS:
      raise ConfigError(f"config task.name={t.name!r} is not one of {sorted(TASKS)}; or give "
                        "your own files with task.kind, task.train_files and task.eval_files")
    return TASKS[t.name]
  if t.kind not in KINDS:
    raise ConfigError(f"config task.kind={t.kind!r} is not one of {sorted(KINDS)} (a task "
                      "from task.train_files needs its kind)")
  if not t.eval_files:
    raise ConfigError("task.train_files needs task.eval_files too (the files evaluated on)")
  kind = KINDS[t.kind]
  if t.kind == "classification" and not _split(t.text_fields):
    raise ConfigError("task.kind=classification needs task.text_fields (one field, or two "
                      "for a pair: --config.task.text_fields=premise,hypothesis)")
  if t.kind == "text_to_text" and not (t.input_field and t.target_field):
    raise ConfigError("task.kind=text_to_text needs task.input_field and task.target_field")
  default_metric = {"classification": "accuracy", "span_qa": "squad_f1",
                    "instruction": "rouge"}.get(t.kind, "")
  metric = t.metric or default_metric
  if metric not in METRICS:
    raise ConfigError(f"config task.metric={metric!r} is not one of {sorted(METRICS)}")
  return TaskDef("user", t.kind, metric, "validation", *kind.TEMPLATE,
                 text_fields=_split(t.text_fields), label_field=t.label_field,
                 input_field=t.input_field, target_field=t.target_field,
                 files=(("train", _split(t.train_files)), ("validation", _split(t.eval_files))))


def kind_class(config: ExperimentConfig) -> type[Kind]:
  return KINDS[task_of(config).kind]


def check(config: ExperimentConfig) -> None:
  """Raises ConfigError when the config's task cannot run on its model family."""
  kind_class(config).check(config)
