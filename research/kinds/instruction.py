"""Instruction tuning: an instruction (and optional input) -> a response, in the chat template
that research.chat speaks; the loss is on the response only.

  decoder          "User: <instruction>\\n\\n<input>\\nAssistant: " -> response [eos]
  encoder_decoder  the same text -> the response
Records have Alpaca's fields: instruction, input (may be empty), output.
"""

from __future__ import annotations

import dataclasses

from research.config import DataError
from research.kinds import base
# The chat template: plain words, so any tokenizer can spell it (research.taskdefs holds it:
# it is the template of a user's instruction task too).
from research.taskdefs import ASSISTANT_PREFIX, USER_PREFIX

TURN_SEPARATOR = "\n"  # follows the EOS that ends each assistant turn


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """How a conversation is written for a model: user + <message> + assistant + <reply> + the
  end token + after_end, turn after turn. end: a token of the vocabulary ('' : the EOS)."""
  user: str
  assistant: str
  end: str
  after_end: str

  @property
  def markers(self) -> tuple[str, ...]:
    """The special tokens the template spells, to be read as their ids, not as text."""
    return tuple(m for m in ("<start_of_turn>", "<end_of_turn>", self.end)
                 if m and m in self.user + self.assistant + self.end)


PLAIN = ChatTemplate(USER_PREFIX, ASSISTANT_PREFIX, "", TURN_SEPARATOR)
GEMMA = ChatTemplate("<start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>model\n",
                     "<end_of_turn>", "\n")


def chat_template(tokenizer) -> ChatTemplate:
  """Gemma's turn markers for a vocabulary that has them (Gemma's were trained with them), the
  plain template otherwise."""
  try:
    tokenizer.token_to_id("<start_of_turn>")
    tokenizer.token_to_id("<end_of_turn>")
  except (DataError, ValueError):
    return PLAIN
  return GEMMA


def instruction_text(record: base.Record) -> str:
  return record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")


class Instruction(base.Kind):
  NAME = "instruction"

  def source(self, record: base.Record) -> str:
    return instruction_text(record)

  def target(self, record: base.Record) -> str:
    return record["output"]
