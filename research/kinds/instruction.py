"""Instruction tuning: an instruction (and optional input) -> a response, in the chat template
that research.chat speaks; the loss is on the response only.

  decoder          "User: <instruction>\\n\\n<input>\\nAssistant: " -> response [eos]
  decoder with Gemma's vocabulary (its turn markers read as their ids, as research.chat writes
  a one-turn conversation):
                   "<bos><start_of_turn>user\\n<instruction>\\n\\n<input><end_of_turn>\\n
                    <start_of_turn>model\\n" -> response [eos]
  encoder_decoder  the plain text -> the response
Records have Alpaca's fields: instruction, input (may be empty), output.

A Gemma response ends with EOS, not <end_of_turn>: the base (pretrained) Gemma 3 270M never
learned to write <end_of_turn>, whose row of the tied embedding is as close to the ~6,000
<unusedN> rows as they are to each other (cosine 0.995), and LoRA leaves that row frozen. After
64 LoRA steps trained to end with it (configs/gemma3_270m_chat_lora.py), its probability where
a response ends was 0.002 on 12 validation examples, argmax never, and greedy replies ran on in
tokens of that cluster ("slotBox"); EOS, which the base writes at the end of a document, is
learned at once. research.chat stops at either, as Gemma's own generation config does.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from research import decode
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

  def __init__(self, task: base.TaskDef, config, tokenizer=None, labels=()):
    super().__init__(task, config, tokenizer, labels)
    self.template = PLAIN  # the text of task.before / task.after (base.Kind encodes them)
    if tokenizer is not None and self.format == "prompt" and chat_template(tokenizer) is GEMMA:
      # Trained in the template research.chat writes for this vocabulary, so that a chat with
      # the tuned model reads as its training did; responses still end with EOS (docstring).
      self.template = GEMMA
      self.before = np.concatenate([base.begin_of_text(tokenizer),
                                    self._encode_turn(GEMMA.user)]).astype(np.int32)
      self.after = self._encode_turn(GEMMA.assistant)

  def _encode_turn(self, text: str) -> np.ndarray:
    return decode.encode_with_specials(self.tokenizer, text, list(self.template.markers))

  def source_ids(self, record: base.Record, budget: int) -> np.ndarray:
    if self.template is PLAIN:
      return super().source_ids(record, budget)
    # The user's turn is encoded whole, as research.chat encodes it: "user\n" and the message
    # are one text between two markers (encoded apart, a merge across them could differ).
    begin = base.begin_of_text(self.tokenizer)
    turn = self._encode_turn(GEMMA.user + self.source(record))  # <start_of_turn> "user\n..."
    room = budget - len(begin) - len(self.after)
    if room < len(self.before) - len(begin) + 1:
      raise DataError(f"the {self.task.name} chat template takes "
                      f"{len(self.before) + len(self.after)} tokens, more than the {budget} "
                      "available; raise data.seq_len")
    return np.concatenate([begin, turn[:room], self.after]).astype(np.int32)

  def source(self, record: base.Record) -> str:
    return instruction_text(record)

  def target(self, record: base.Record) -> str:
    return record["output"]
