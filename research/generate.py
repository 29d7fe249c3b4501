"""Generate text from a trained workdir.

  python -m research.generate --workdir=runs/gpt_shakespeare_char --prompt="ROMEO:" \\
      --max_new_tokens=300 [--temperature=0.8 --top_k=0 --top_p=1.0 --num_samples=1 --seed=0]

--temperature=0 decodes greedily.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
from absl import app, flags

from research import decode
from research.config import UserError
from research.train import parse_flags, quiet_logs, restore_params, run_cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
_PROMPT = flags.DEFINE_string("prompt", "\n", "Text to continue.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 300, "Tokens to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0 = all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1.0 = off).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Independent samples to print.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def generate_text(workdir: str, prompt: str, max_new_tokens: int, sampling: decode.SamplingConfig,
                  num_samples: int = 1, seed: int = 0) -> list[str]:
  from research.data.tokenizers import load_tokenizer  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  if max_new_tokens < 0:
    raise UserError(f"--max_new_tokens={max_new_tokens} must be >= 0")
  if sampling.temperature < 0 or not 0 < sampling.top_p <= 1 or sampling.top_k < 0:
    raise UserError("--temperature must be >= 0, --top_p in (0, 1], --top_k >= 0")
  _, model, params = restore_params(workdir)
  tokenizer = load_tokenizer(pathlib.Path(workdir) / "tokenizer")
  ids = np.asarray(tokenizer.encode(prompt), np.int32)
  if ids.size == 0:
    raise UserError("the prompt encodes to no tokens; pass a non-empty --prompt")
  batch = np.tile(ids[None], (num_samples, 1))
  out = decode.generate(model, params, batch, max_new_tokens, jax.random.key(seed), sampling,
                        eos_id=tokenizer.eos_id)
  return [tokenizer.decode(row) for row in out]


def main(argv) -> None:
  quiet_logs()
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}; flags take the form --name=value",
          file=sys.stderr)
    sys.exit(2)
  sampling = decode.SamplingConfig(_TEMPERATURE.value, _TOP_K.value, _TOP_P.value)

  def body():
    texts = generate_text(_WORKDIR.value, _PROMPT.value, _MAX_NEW.value, sampling,
                          _NUM_SAMPLES.value, _SEED.value)
    for i, text in enumerate(texts):
      if len(texts) > 1:
        print(f"--- sample {i} ---")
      print(text)

  run_cli(body)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
