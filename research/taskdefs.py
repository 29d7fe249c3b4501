"""What a fine-tuning task is, as data: the bundled tasks, and what each task kind states about
itself without any data (the families it runs on, its format on each, its template), with the
checks a config's task must pass.

This sits below research.config, which runs `check` as it parses a config, so that a bad task
stops there; the kinds' classes (research/kinds/) sit above and do the work (features, batches,
heads, losses, predictions), reading their families, formats and templates from here. Adding a
kind is one KindFacts here and one class there; adding a bundled task is a TFDS builder
(research/data/tasks.py) and one TaskDef here.
"""

from __future__ import annotations

import dataclasses

from research.errors import ConfigError

# The metrics a task may name (research.kinds.base.METRICS computes them).
METRIC_NAMES = ("accuracy", "exact_match", "squad_f1", "bleu", "rouge")

# The instruction kind's chat template: plain words, so any tokenizer can spell it.
USER_PREFIX = "User: "
ASSISTANT_PREFIX = "\nAssistant: "

# How a family generates a task's target when the kind has no head of its own there: an
# encoder-decoder reads the input and decodes the target; a decoder continues a prompt.
GENERATIVE_FORMAT = {"encoder_decoder": "seq2seq", "decoder": "prompt"}


@dataclasses.dataclass(frozen=True)
class TaskDef:
  """One task: where its records come from, which of their fields a kind reads, its template
  and metric. Bundled tasks are entries of TASKS; a user's task is made from the config's task.*
  fields (task_of)."""

  name: str
  kind: str  # a key of KIND_FACTS (and of research.kinds.KINDS)
  metric: str  # one of METRIC_NAMES
  eval_split: str = "validation"  # where the README figures come from
  before: str = ""  # generative input text = before + source(record) + after
  after: str = ""
  text_fields: tuple[str, ...] = ()  # classification: one text or a pair
  label_field: str = "label"
  labels: tuple[str, ...] = ()  # classification: label words (empty: taken from the data)
  input_field: str = ""  # text_to_text
  target_field: str = ""
  references_field: str = ""  # text_to_text: a list of references (default: [target])
  files: tuple[tuple[str, tuple[str, ...]], ...] = ()  # a user's task: (split, files) pairs
  dataset: str = ""  # the bundled TFDS dataset its records come from ('': the task's name)

  @property
  def dataset_name(self) -> str:
    return self.dataset or self.name


@dataclasses.dataclass(frozen=True)
class KindFacts:
  """What a task kind is on each family, before any data: where it runs, what it trains there
  (a format: 'seq2seq', 'prompt', or a head of its own such as 'classify' or 'span'), and the
  template a user's task of this kind gets (before, after)."""

  name: str
  families: tuple[str, ...] = ("decoder", "encoder_decoder")
  template: tuple[str, str] = ("", "\n")
  own_formats: tuple[tuple[str, str], ...] = ()  # (family, format) where not generative
  default_metric: str = ""  # a user's task that names none

  def format_for(self, family: str) -> str:
    return dict(self.own_formats).get(family, GENERATIVE_FORMAT.get(family, "prompt"))


KIND_FACTS: dict[str, KindFacts] = {k.name: k for k in (
    KindFacts("classification", ("encoder", "decoder", "encoder_decoder"), ("", ""),
              (("encoder", "classify"), ("decoder", "classify")), "accuracy"),
    KindFacts("span_qa", ("encoder", "decoder", "encoder_decoder"), ("", "\nanswer: "),
              (("encoder", "span"),), "squad_f1"),
    KindFacts("text_to_text"),
    KindFacts("instruction", template=(USER_PREFIX, ASSISTANT_PREFIX), default_metric="rouge"),
    # DPO on (prompt, chosen, rejected); its prediction is the response it prefers.
    KindFacts("preference", ("decoder",), (USER_PREFIX, ASSISTANT_PREFIX),
              (("decoder", "preference"),), "accuracy"),
)}

TASKS: dict[str, TaskDef] = {t.name: t for t in (
    TaskDef("sst2", "classification", "accuracy", before="sentiment: ",
            text_fields=("sentence",), labels=("negative", "positive")),
    TaskDef("squad", "span_qa", "squad_f1", after="\nanswer: "),
    TaskDef("spa_eng", "text_to_text", "bleu", "test", "Spanish: ", "\nEnglish: ",
            input_field="es", target_field="en"),
    TaskDef("eng_spa", "text_to_text", "bleu", "test", "English: ", "\nSpanish: ",
            input_field="en", target_field="es", dataset="spa_eng"),
    TaskDef("scitldr", "text_to_text", "rouge", "test", "", "\nTL;DR: ",
            input_field="document", target_field="summary", references_field="all_summaries"),
    TaskDef("alpaca", "instruction", "rouge", "validation", *KIND_FACTS["instruction"].template),
)}


def is_user_task(config) -> bool:
  return bool(config.task.train_files)


def _split(text: str) -> tuple[str, ...]:
  return tuple(t.strip() for t in text.split(",") if t.strip())


def task_of(config) -> TaskDef:
  """The config's task (an ExperimentConfig's): a bundled one (task.name), or the user's files
  (task.train_files)."""
  t = config.task
  if not is_user_task(config):
    if t.name not in TASKS:
      raise ConfigError(f"config task.name={t.name!r} is not one of {sorted(TASKS)}; or give "
                        "your own files with task.kind, task.train_files and task.eval_files")
    return TASKS[t.name]
  if t.kind not in KIND_FACTS:
    raise ConfigError(f"config task.kind={t.kind!r} is not one of {sorted(KIND_FACTS)} (a task "
                      "from task.train_files needs its kind)")
  if not t.eval_files:
    raise ConfigError("task.train_files needs task.eval_files too (the files evaluated on)")
  kind = KIND_FACTS[t.kind]
  if t.kind == "classification" and not _split(t.text_fields):
    raise ConfigError("task.kind=classification needs task.text_fields (one field, or two "
                      "for a pair: --config.task.text_fields=premise,hypothesis)")
  if t.kind == "text_to_text" and not (t.input_field and t.target_field):
    raise ConfigError("task.kind=text_to_text needs task.input_field and task.target_field")
  metric = t.metric or kind.default_metric
  if metric not in METRIC_NAMES:
    raise ConfigError(f"config task.metric={metric!r} is not one of {sorted(METRIC_NAMES)}")
  if t.kind == "preference" and metric != "accuracy":
    raise ConfigError(f"task.kind=preference is scored by accuracy (how often the model prefers "
                      f"the chosen response), not task.metric={metric!r}; drop task.metric")
  return TaskDef("user", t.kind, metric, "validation", *kind.template,
                 text_fields=_split(t.text_fields), label_field=t.label_field,
                 input_field=t.input_field, target_field=t.target_field,
                 files=(("train", _split(t.train_files)), ("validation", _split(t.eval_files))))


def check_kind(kind: KindFacts, config) -> None:
  """Raises ConfigError when the config cannot run a task of this kind."""
  family = config.model.family
  if family not in kind.families:
    raise ConfigError(f"task.name='{config.task.name}' (kind {kind.name}) does not fit "
                      f"model.family='{family}'; it runs with model.family in "
                      f"{list(kind.families)}")
  head = kind.format_for(family)
  if head in ("prompt", "preference") and config.task.max_target_len >= config.data.seq_len:
    raise ConfigError(f"task.max_target_len={config.task.max_target_len} leaves no room for "
                      f"the prompt in data.seq_len={config.data.seq_len}; raise data.seq_len "
                      "or lower max_target_len")
  if config.task.packing and head not in ("seq2seq", "prompt"):
    raise ConfigError(f"task.packing=True packs generated text, but task.name="
                      f"'{config.task.name}' (kind {kind.name}) on model.family="
                      f"'{family}' trains a {head} head; set task.packing=False")


def check(config) -> None:
  """Raises ConfigError when the config's task is unknown, incomplete, or cannot run on its
  model family."""
  check_kind(KIND_FACTS[task_of(config).kind], config)
