"""SciTLDR with a GPT-style decoder from scratch: "<abstract>\nTL;DR: " then the summary, loss on
the summary only. Otherwise as configs/scitldr_t5.py.

  python -m research.train --config=configs/scitldr_gpt.py --workdir=runs/scitldr_gpt
  python -m research.evaluate --workdir=runs/scitldr_gpt --split=test
"""

from research.config import derive


def get_config():
  config = derive(__file__, "scitldr_t5.py")
  config.model.update(family="decoder", num_layers=6, num_decoder_layers=0, position="rope",
                      max_len=320)
  config.data.seq_len = 304  # up to 256 prompt tokens + 48 summary tokens
  return config
