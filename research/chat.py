"""Chat with a decoder in the terminal: an instruction-tuned workdir (configs/alpaca_gpt.py, or a
LoRA workdir of Gemma) or a pretrained model.

  python -m research.chat --workdir=runs/alpaca_gpt                      # interactive
  python -m research.chat --workdir=runs/alpaca_gpt --prompt="Give three tips for staying healthy."
  python -m research.chat --pretrained=gemma3-270m --prompt="¿Qué es un volcán?"

The conversation is written in the model's chat template (research/kinds/instruction.py):
Gemma's turn markers (<start_of_turn>user ... <end_of_turn>) for a Gemma vocabulary, else the
project's plain one (User: <message>\\nAssistant: <reply><eos>\\n). The reply streams as it is
written and ends at the template's end-of-turn token or at EOS (a LoRA chat workdir of a base
Gemma ends its replies with EOS: research/kinds/instruction.py says why); earlier turns are
written closed by the end-of-turn token. Earlier turns are kept while they fit in
the context window (model.max_len minus the tokens to generate); the oldest go first, with a
note. Ctrl-C stops a reply (what was written is kept); /reset forgets the conversation, /quit
(or Ctrl-D) leaves.
"""

from __future__ import annotations

import math
import sys
from typing import Callable

import jax
import numpy as np
from absl import app, flags
from etils import epath

from research import cli, convert, decode, kinds, models
from research.config import UserError
from research.data.tokenizers import load_tokenizer
from research.decode import Streamer, begin_of_text, encode_with_specials, sized_for
from research.kinds.instruction import ChatTemplate, Instruction, chat_template
from research.load import load_experiment_config, restore_params
from research.train_state import build_model_and_loss


def define_flags() -> None:
  """The CLI's flags (defined only when run as a program, so importing Chat defines none)."""
  flags.DEFINE_string("workdir", None, "A decoder workdir (e.g. SFT on alpaca).")
  flags.DEFINE_string("pretrained", None, "Instead of --workdir: a named model (gemma3-270m), "
                      "a GGUF file or a Hugging Face folder.")
  flags.DEFINE_string("prompt", None, "Answer this once and exit (no interaction).")
  flags.DEFINE_integer("max_new_tokens", 0, "Longest reply, in tokens; 0: 128, or half the "
                       "model's context when that is shorter.")
  flags.DEFINE_float("temperature", 0.7, "Softmax temperature; 0 = greedy.")
  flags.DEFINE_float("top_p", 0.9, "Nucleus sampling mass (1.0 = off).")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")


class Chat:
  """A conversation with a decoder: history of (user, reply) turns and the model to extend it."""

  def __init__(self, workdir: str | None, max_new_tokens: int,
               sampling: decode.SamplingConfig, seed: int = 0, pretrained: str | None = None):
    if bool(workdir) == bool(pretrained):
      raise UserError("pass one of --workdir=RUN (an instruction-tuned decoder's workdir) and "
                      "--pretrained=MODEL (gemma3-270m, a GGUF file or a Hugging Face folder)")
    source = workdir or pretrained
    if pretrained:
      model, params, tokenizer, config = convert.load_pretrained(pretrained)
      if tokenizer is None:
        raise UserError(f"--pretrained={pretrained} has no tokenizer, so it cannot read text")
    else:
      config = load_experiment_config(workdir)
    if not models.family_of(config.model).decoder_only:
      raise UserError(f"{source} holds a {config.model.family} model; chat needs a decoder "
                      "(e.g. one fine-tuned with configs/alpaca_gpt.py)")
    if not pretrained:
      model = build_model_and_loss(config)[0]  # checked before the checkpoint is read
      if not isinstance(model, models.Decoder):
        raise UserError(f"{workdir} holds a {config.task.name} {type(model).__name__}, which "
                        "scores text rather than writes it; chat needs a decoder language "
                        "model (e.g. one fine-tuned with configs/alpaca_gpt.py)")
    max_len = config.model.max_len
    if max_new_tokens == 0:
      max_new_tokens = min(128, max_len // 2)
    elif max_new_tokens >= max_len:
      print(f"note: --max_new_tokens={max_new_tokens} leaves no room for the conversation in "
            f"the model's context of {max_len} tokens; replies stop at {max_len // 2}",
            file=sys.stderr)
      max_new_tokens = max_len // 2
    if max_new_tokens < 1:
      raise UserError(f"--max_new_tokens={max_new_tokens} must be >= 1 (0: the default)")
    if pretrained:
      print(f"note: {pretrained} is a base model (not instruction-tuned): it continues the "
            "conversation in Gemma's turn markers but was not trained to follow them; a LoRA "
            "chat workdir (README) answers better", file=sys.stderr)
    else:
      config, model, params = restore_params(workdir, config)
      tokenizer = load_tokenizer(epath.Path(workdir) / "tokenizer")
      tuned = ((config.task.name or kinds.is_user_task(config))  # DPO's kind is one too
               and issubclass(kinds.kind_class(config), Instruction))
      if not tuned:
        print(f"note: {workdir} was not instruction-tuned, so it continues the chat text "
              "rather than follows instructions; fine-tune it with configs/alpaca_gpt.py "
              f"(--config.init_from={workdir}) for a chat model", file=sys.stderr)
    self.config, self.model, self.params = config, model, params
    self.use_tokenizer(tokenizer)
    self.max_new_tokens = max_new_tokens
    self.sampling = sampling
    self.rng = jax.random.key(seed)
    self.history: list[tuple[str, str]] = []

  def use_tokenizer(self, tokenizer) -> None:
    """Reads and writes text with `tokenizer`, in the chat template of its vocabulary (the one
    research.kinds.instruction trains in)."""
    self.tokenizer = tokenizer
    self.template: ChatTemplate = chat_template(tokenizer)
    self.end_id = (tokenizer.token_to_id(self.template.end) if self.template.end
                   else tokenizer.eos_id)
    self.begin = np.asarray(begin_of_text(tokenizer), np.int32)

  def _encode(self, text: str) -> np.ndarray:
    return encode_with_specials(self.tokenizer, text, list(self.template.markers))

  def _turn_ids(self, user: str, reply: str | None) -> np.ndarray:
    t = self.template
    ids = [self._encode(t.user + user + t.assistant)]
    if reply is not None:
      ids += [self._encode(reply), np.array([self.end_id], np.int32), self._encode(t.after_end)]
    return np.concatenate(ids)

  def context_ids(self, message: str) -> np.ndarray:
    """The prompt: as many recent turns as fit, then the new message (a note says when older
    turns are left out)."""
    budget = self.config.model.max_len - self.max_new_tokens - self.begin.size
    current = self._turn_ids(message, None)
    if len(current) > budget:  # keep the end of an over-long message (and the reply cue)
      print(f"note: the message is {len(current)} tokens, more than the context window "
            f"leaves ({budget}); the model reads its end", file=sys.stderr)
      current = current[-budget:]
    parts = [current]
    used = len(current)
    for kept, (user, reply) in enumerate(reversed(self.history)):
      turn = self._turn_ids(user, reply)
      if used + len(turn) > budget:
        print(f"note: the conversation no longer fits the context window ({budget} tokens "
              f"with the reply): the oldest {len(self.history) - kept} turn(s) are left out",
              file=sys.stderr)
        break
      parts.insert(0, turn)
      used += len(turn)
    return np.concatenate([self.begin, *parts])

  def reply(self, message: str, on_text: Callable[[str], None] | None = None) -> str:
    """The model's reply, streamed to on_text as it is written. Ctrl-C stops it: the reply so
    far is kept in the history and raised as decode.Stopped."""
    ids = self.context_ids(message)
    self.rng, rng = jax.random.split(self.rng)
    model, _ = sized_for(self.model, self.config, ids.size + self.max_new_tokens + 1)
    stops = {self.end_id, self.tokenizer.eos_id}
    streamer = Streamer(self.tokenizer, [], on_text)
    new: list[int] = []
    interrupted = False
    try:
      for chunk in decode.stream(model, self.params, ids[None], self.max_new_tokens, rng,
                                 self.sampling):
        new.extend(int(i) for i in chunk[0])
        if stops & set(new):
          break
        streamer.update(new)
    except KeyboardInterrupt:
      interrupted = True
    cut = next((i for i, t in enumerate(new) if t in stops), len(new))
    text = self.tokenizer.decode(new[:cut]).strip()
    streamer.finish(text)
    self.history.append((message, text))
    if interrupted:
      raise decode.Stopped(text)
    return text


def main(argv) -> None:
  cli.quiet_logs()
  cli.reject_positional_args(argv)
  f = flags.FLAGS
  show = lambda piece: print(piece, end="", flush=True)

  def body():
    if not (math.isfinite(f.temperature) and f.temperature >= 0):
      raise UserError(f"--temperature={f.temperature} must be a number >= 0 (0: greedy)")
    if not 0 < f.top_p <= 1:
      raise UserError(f"--top_p={f.top_p} must be in (0, 1] (1: off)")
    if f.prompt is None and (sys.stdin is None or sys.stdin.closed):
      raise UserError("chat reads its messages from the terminal, and stdin is closed; pass "
                      "--prompt=TEXT to ask one question")
    if f.prompt is not None:
      cli.check_utf8(f.prompt)
      if not f.prompt.strip():
        raise UserError("--prompt is empty; ask something")
    chat = Chat(f.workdir, f.max_new_tokens,
                decode.SamplingConfig(temperature=f.temperature, top_p=f.top_p), f.seed,
                pretrained=f.pretrained)
    if f.prompt is not None:
      try:
        chat.reply(f.prompt, show)
      except decode.Stopped:
        print(file=sys.stdout)
        print("note: interrupted (Ctrl-C); the reply so far is above", file=sys.stderr)
        raise cli.Interrupted() from None
      print()
      return
    print("Chatting with", f.workdir or f.pretrained, "(/reset forgets, /quit leaves; Ctrl-C "
          "stops a reply)", file=sys.stderr)
    while True:
      try:
        message = cli.check_utf8(input("you> "), "the message").strip()
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
        print("assistant> ", end="", flush=True)
        try:
          chat.reply(message, show)
        except decode.Stopped:
          print(" [stopped]", end="")
        print(flush=True)

  cli.run_cli(body)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
