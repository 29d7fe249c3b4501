"""The peers of benchmarks/pretrained_speed.py, run in their own interpreter (torch,
transformers, accelerate, gguf and llama-cpp-python installed; never the project's .venv):

  /tmp/torchenv/bin/python benchmarks/pretrained_peers.py --gguf=FILE --peer=transformers \
      --prompt_len=128 --new_tokens=64 --repeats=5 [--dtype=float32]

Prints one JSON line: the peer's median prefill and batch-1 decode times over --repeats runs.
  transformers  AutoModelForCausalLM from the GGUF (dequantized to --dtype), eager attention,
                greedy steps through its KV cache (DynamicCache)
  llama.cpp     llama_cpp.Llama on the same file, its own Q4_K / Q6_K kernels, one eval() per
                token after the prompt's (fed the prompt's tokens again: the bindings keep no
                scores to take an argmax from without logits_all)
Both use 2 threads, as many as the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import numpy as np


def prompt_ids(vocab_size: int, length: int, seed: int = 0) -> list[int]:
  """A fixed prompt of ordinary token ids (the timing does not depend on the text)."""
  rng = np.random.default_rng(seed)
  return [2] + [int(i) for i in rng.integers(1000, min(vocab_size, 200_000), length - 1)]


def time_transformers(gguf: pathlib.Path, args) -> dict:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(2)
  dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(gguf.parent), gguf_file=gguf.name, dtype=dtype, attn_implementation="eager").eval()
  ids = torch.tensor([prompt_ids(model.config.vocab_size, args.prompt_len)])
  prefill, decode = [], []
  with torch.inference_mode():
    for _ in range(args.repeats + 1):  # the first run warms up
      start = time.perf_counter()
      out = model(input_ids=ids, use_cache=True)
      prefill.append(time.perf_counter() - start)
      cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
      start = time.perf_counter()
      for _ in range(args.new_tokens):
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
      decode.append((time.perf_counter() - start) / args.new_tokens)
  return {"prefill_s": statistics.median(prefill[1:]),
          "decode_step_s": statistics.median(decode[1:]),
          "version": transformers.__version__, "torch": torch.__version__}


def time_llama_cpp(gguf: pathlib.Path, args) -> dict:
  import llama_cpp  # pylint: disable=import-outside-toplevel
  llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=args.prompt_len + args.new_tokens + 8,
                        n_threads=2, n_threads_batch=2, n_batch=args.prompt_len, verbose=False)
  ids = prompt_ids(llm.n_vocab(), args.prompt_len)
  prefill, decode = [], []
  for _ in range(args.repeats + 1):
    llm.reset()
    start = time.perf_counter()
    llm.eval(ids)
    prefill.append(time.perf_counter() - start)
    # Without logits_all the bindings keep no per-position scores to take an argmax from; a
    # step costs the same whatever token it is fed, so the steps feed the prompt's tokens.
    start = time.perf_counter()
    for k in range(args.new_tokens):
      llm.eval([ids[1 + k % (len(ids) - 1)]])
    decode.append((time.perf_counter() - start) / args.new_tokens)
  return {"prefill_s": statistics.median(prefill[1:]),
          "decode_step_s": statistics.median(decode[1:]), "version": llama_cpp.__version__}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--gguf", required=True)
  parser.add_argument("--peer", choices=("transformers", "llama.cpp"), required=True)
  parser.add_argument("--prompt_len", type=int, default=128)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  args = parser.parse_args()
  gguf = pathlib.Path(args.gguf)
  timer = time_transformers if args.peer == "transformers" else time_llama_cpp
  print(json.dumps({"peer": args.peer, **timer(gguf, args)}))


if __name__ == "__main__":
  main()
