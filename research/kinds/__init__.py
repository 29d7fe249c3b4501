"""Task kinds: KINDS maps a kind's name to its class (research/kinds/<kind>.py).

What a kind states without data (its families, formats and template), the bundled tasks and the
checks on a config's task are in research/taskdefs.py, below research.config, which runs those
checks as it parses a config; they are re-exported here. Adding a kind is one KindFacts there,
one class here and one entry in KINDS.
"""

from __future__ import annotations

from research.config import ExperimentConfig
from research.kinds.base import METRICS, Kind  # pylint: disable=unused-import
from research.kinds.classification import Classification
from research.kinds.instruction import Instruction
from research.kinds.preference import Preference
from research.kinds.span_qa import SpanQA
from research.kinds.text_to_text import TextToText
from research.taskdefs import (TASKS, TaskDef, check, is_user_task,  # pylint: disable=unused-import
                               task_of)

KINDS: dict[str, type[Kind]] = {
    k.NAME: k for k in (Classification, SpanQA, TextToText, Instruction, Preference)}


def kind_class(config: ExperimentConfig) -> type[Kind]:
  return KINDS[task_of(config).kind]
