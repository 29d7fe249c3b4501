"""Prefix-LM GPT on Tiny Shakespeare: the default GPT, trained with the prefix-LM objective.

Each training window is split at a random point: attention is bidirectional over the prefix and
causal after it, and only the continuation carries loss (T5 paper, Section 3.2.1). Everything
else is configs/gpt_shakespeare_char.py.

  python -m research.train --config=configs/gpt_shakespeare_prefixlm.py --workdir=runs/gpt_prefixlm
  python -m research.generate --workdir=runs/gpt_prefixlm --prompt="ROMEO:"

Result (2 CPU cores with AMX, 0.80M parameters, bf16 matmul operands: what the default GPT's
matmul_dtype="auto" takes there): validation loss on the continuation tokens 1.774 (seed 0) and
1.783 (seed 1, --config.train.seed=1); 84-88 s wall with the machine to itself (float32
matmuls, what "auto" takes on an AVX2-only CPU: 1.775 and 1.777, 117 s).
"""

import importlib.util
import pathlib


def get_config():
  path = pathlib.Path(__file__).with_name("gpt_shakespeare_char.py")
  spec = importlib.util.spec_from_file_location("gpt_shakespeare_char", path)
  base = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(base)
  config = base.get_config()
  config.objective.name = "prefix_lm"
  return config
