"""Chat with an instruction-tuned decoder (configs/alpaca_gpt.py) in the terminal.

  python -m research.chat --workdir=runs/alpaca_gpt                      # interactive
  python -m research.chat --workdir=runs/alpaca_gpt --prompt="Give three tips for staying healthy."

The conversation is written in the template the model was fine-tuned on (research/tasks.py):
  User: <message>\\nAssistant: <reply><eos>\\n User: ...
Earlier turns are kept while they fit in the context window (model.max_len minus the tokens
to generate); the oldest go first. Type /reset to forget the conversation, /quit (or Ctrl-D)
to leave.
"""

from __future__ import annotations

import math
import sys

import jax
import numpy as np
from absl import app, flags
from etils import epath

from research import decode, kinds, models, tasks, train
from research.kinds.instruction import Instruction
from research.config import UserError

def define_flags() -> None:
  """The CLI's flags (defined only when run as a program, so importing Chat defines none)."""
  flags.DEFINE_string("workdir", None, "A decoder workdir (e.g. SFT on alpaca).", required=True)
  flags.DEFINE_string("prompt", None, "Answer this once and exit (no interaction).")
  flags.DEFINE_integer("max_new_tokens", 0, "Longest reply, in tokens; 0: 128, or half the "
                       "model's context when that is shorter.")
  flags.DEFINE_float("temperature", 0.7, "Softmax temperature; 0 = greedy.")
  flags.DEFINE_float("top_p", 0.9, "Nucleus sampling mass (1.0 = off).")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")


class Chat:
  """A conversation with a decoder: history of (user, reply) turns and the model to extend it."""

  def __init__(self, workdir: str, max_new_tokens: int, sampling: decode.SamplingConfig,
               seed: int = 0):
    from research.data.tokenizers import load_tokenizer  # pylint: disable=import-outside-toplevel
    config = train.load_experiment_config(workdir)
    if config.model.family != "decoder":
      raise UserError(f"{workdir} holds a {config.model.family} model; chat needs a "
                      "decoder (e.g. one fine-tuned with configs/alpaca_gpt.py)")
    model = train.build_model_and_loss(config)[0]  # checked before the checkpoint is read
    if not isinstance(model, models.Decoder):
      raise UserError(f"{workdir} holds a {config.task.name} {type(model).__name__}, which "
                      "scores text rather than writes it; chat needs a decoder language model "
                      "(e.g. one fine-tuned with configs/alpaca_gpt.py)")
    if max_new_tokens == 0:
      max_new_tokens = min(128, config.model.max_len // 2)
    if not 0 < max_new_tokens < config.model.max_len:  # checked before the checkpoint is read
      raise UserError(f"--max_new_tokens={max_new_tokens} must be in [1, model.max_len="
                      f"{config.model.max_len}) (the reply and its context share the window)")
    self.config, self.model, self.params = train.restore_params(workdir, config)
    if not self.config.task.name or kinds.kind_class(self.config) is not Instruction:
      print(f"note: {workdir} was not instruction-tuned, so it continues the chat text rather "
            "than follows instructions; fine-tune it with configs/alpaca_gpt.py "
            f"(--config.init_from={workdir}) for a chat model", file=sys.stderr)
    self.tokenizer = load_tokenizer(epath.Path(workdir) / "tokenizer")
    self.max_new_tokens = max_new_tokens
    self.sampling = sampling
    self.rng = jax.random.key(seed)
    self.history: list[tuple[str, str]] = []

  def _turn_ids(self, user: str, reply: str | None) -> np.ndarray:
    encode = lambda t: np.asarray(self.tokenizer.encode(t), np.int32)
    ids = [encode(tasks.USER_PREFIX + user + tasks.ASSISTANT_PREFIX)]
    if reply is not None:
      ids += [encode(reply), np.array([self.tokenizer.eos_id], np.int32),
              encode(tasks.TURN_SEPARATOR)]
    return np.concatenate(ids)

  def context_ids(self, message: str) -> np.ndarray:
    """The prompt: as many recent turns as fit, then the new message."""
    budget = self.config.model.max_len - self.max_new_tokens
    current = self._turn_ids(message, None)
    if len(current) > budget:  # keep the end of an over-long message (and the reply cue)
      current = current[-budget:]
    parts = [current]
    used = len(current)
    for user, reply in reversed(self.history):
      turn = self._turn_ids(user, reply)
      if used + len(turn) > budget:
        break
      parts.insert(0, turn)
      used += len(turn)
    return np.concatenate(parts)

  def reply(self, message: str) -> str:
    ids = self.context_ids(message)
    self.rng, rng = jax.random.split(self.rng)
    out = decode.generate(self.model, self.params, ids[None], self.max_new_tokens, rng,
                          self.sampling, eos_id=self.tokenizer.eos_id)[0, len(ids):]
    hits = np.flatnonzero(out == self.tokenizer.eos_id)
    text = self.tokenizer.decode(out[:hits[0]] if hits.size else out).strip()
    self.history.append((message, text))
    return text


def main(argv) -> None:
  train.quiet_logs()
  train.reject_positional_args(argv)
  f = flags.FLAGS

  def body():
    if not (math.isfinite(f.temperature) and f.temperature >= 0):
      raise UserError(f"--temperature={f.temperature} must be a number >= 0 (0: greedy)")
    if not 0 < f.top_p <= 1:
      raise UserError(f"--top_p={f.top_p} must be in (0, 1] (1: off)")
    if f.prompt is None and (sys.stdin is None or sys.stdin.closed):
      raise UserError("chat reads its messages from the terminal, and stdin is closed; pass "
                      "--prompt=TEXT to ask one question")
    chat = Chat(f.workdir, f.max_new_tokens,
                decode.SamplingConfig(temperature=f.temperature, top_p=f.top_p), f.seed)
    if f.prompt is not None:
      train.check_utf8(f.prompt)
      if not f.prompt.strip():
        raise UserError("--prompt is empty; ask something")
      print(chat.reply(f.prompt))
      return
    print("Chatting with the model in", f.workdir, "(/reset forgets, /quit leaves)",
          file=sys.stderr)
    while True:
      try:
        message = train.check_utf8(input("you> "), "the message").strip()
      except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        return
      except (UnicodeDecodeError, UserError) as e:  # one bad line: say so and read the next
        print(f"note: {e if isinstance(e, UserError) else 'the message is not UTF-8 text'}; "
              "type it again", file=sys.stderr)
        continue
      if message in ("/quit", "/exit"):
        return
      if message == "/reset":
        chat.history.clear()
        continue
      if message:
        print("assistant>", chat.reply(message), flush=True)

  train.run_cli(body)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=train.parse_flags)
