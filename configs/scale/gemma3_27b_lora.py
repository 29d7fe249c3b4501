"""LoRA on Gemma 3 27B (configs/scale/gemma3_27b.py's shape) for a TPU v5p slice of 8 chips
(v5p:2x2x2, Cloud type v5p-16): full fine-tuning of the same model at the same batch per chip
does not fit 8 chips (104.60 GiB per chip) and needs 16.

Rank-16 adapters (alpha 32) on every attention and MLP projection of the 62 layers (q, k, v, o,
wi, wi_gate, wo: 113.5M parameters, 0.42% of 27,009M) train; the base is frozen: no optimizer
state, an argument of the step that is never donated, sharded on its logical axes as full
fine-tuning shards the parameters (fsdp over the 8 chips). Sequence 4096, 2 sequences per chip
as in gemma3_27b.py (16 in all), layers scanned in groups of six, full rematerialisation, bf16
matmul operands, float32 base and adapters, AdamW state for the adapters only.

  python -m research.aot --config=configs/scale/gemma3_27b_lora.py --topology=v5p:2x2x2

Train step (the adapters a low-rank path beside the frozen kernels, research/lora.py): 56.02 of
95 GiB per chip (frozen base 12.58, adapters 0.30, optimizer state 0.60, temporaries 42.27),
roofline >= 2.97 s (compute-bound); 589 s to compile on an AMD EPYC Zen 5 (2 cores shared with
other jobs). On 4 chips (v5p:2x2x1, --config.data.batch_size=8) it fits too: 75.12 GiB. Those
and the full fine-tuning compiles: docs/tpu.md, "LoRA: Gemma 3 27B on half the chips".

init_from names the pretrained base: a GGUF file of google/gemma-3-27b-pt (llama.cpp's
convert_hf_to_gguf.py, --outtype bf16) on the slice's hosts; research.train takes the
architecture and tokenizer from it. research.aot compiles without it when it is not on the
machine (it needs the shapes, which this file gives). The data is gemma3_27b.py's (c4, causal
LM: continued pretraining with adapters); a task section replaces it for instruction or
translation tuning.
"""

from research.config import derive

TOPOLOGY = "v5p:2x2x2"
# XLA TPU options for this config, here and on the slice (research.aot sets them; set them
# for research.train): FSDP weight gathers as whole all-gathers, not windowed einsums (docs/tpu.md).
LIBTPU_INIT_ARGS = ("--xla_tpu_enable_windowed_einsum_for_all_gather=false "
                    "--xla_tpu_enable_windowed_einsum_for_reduce_scatter=false")


def get_config():
  config = derive(__file__, "gemma3_27b.py")
  config.init_from = "gemma-3-27b-pt-bf16.gguf"
  config.lora.update(rank=16, alpha=32.0, dropout=0.0)  # default targets: every projection
  config.optimizer.update(learning_rate=2e-4, end_learning_rate=2e-5, warmup_steps=100,
                          weight_decay=0.0)
  config.data.batch_size = 16
  config.train.update(steps=2000, eval_every=500, checkpoint_every=200)
  return config
