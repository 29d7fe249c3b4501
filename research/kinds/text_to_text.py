"""Text-to-text: an input field -> a target field (translation, summarisation, a user's pairs).

  decoder          before + input + after = the prompt -> the target (loss on the target only)
  encoder_decoder  before + input + after -> the target
The metric is chosen by name (research.kinds.base.METRICS); references come from
`references_field` (a list of texts) when the task has one, otherwise [target].
"""

from __future__ import annotations

from research.kinds import base


class TextToText(base.Kind):
  NAME = "text_to_text"

  def source(self, record: base.Record) -> str:
    return record[self.task.input_field]

  def target(self, record: base.Record) -> str:
    return record[self.task.target_field]

  def references(self, record: base.Record) -> list[str]:
    if self.task.references_field:
      return list(record[self.task.references_field])
    return [self.target(record)]
