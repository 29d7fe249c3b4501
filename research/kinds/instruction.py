"""Instruction tuning: an instruction (and optional input) -> a response, in the chat template
that research.chat speaks; the loss is on the response only.

  decoder          "User: <instruction>\\n\\n<input>\\nAssistant: " -> response [eos]
  encoder_decoder  the same text -> the response
Records have Alpaca's fields: instruction, input (may be empty), output.
"""

from __future__ import annotations

from research.kinds import base

# The chat template: plain words, so any tokenizer can spell it.
USER_PREFIX = "User: "
ASSISTANT_PREFIX = "\nAssistant: "
TURN_SEPARATOR = "\n"  # follows the EOS that ends each assistant turn


def instruction_text(record: base.Record) -> str:
  return record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")


class Instruction(base.Kind):
  NAME = "instruction"
  TEMPLATE = (USER_PREFIX, ASSISTANT_PREFIX)

  def source(self, record: base.Record) -> str:
    return instruction_text(record)

  def target(self, record: base.Record) -> str:
    return record["output"]
