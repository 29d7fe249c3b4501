"""Instruction following and chat: LoRA on Gemma 3 270M (the installed base model) on the
bundled Alpaca subset, in Gemma's turn markers, the loss on the responses only.

  <bos><start_of_turn>user\\n<instruction>[\\n\\n<input>]<end_of_turn>\\n<start_of_turn>model\\n
  <response><eos>

The markers are read as their ids (research/kinds/instruction.py), as research.chat writes a
conversation for this vocabulary, so the tuned model chats in the template it was trained in.
Responses end with EOS: the base model cannot learn to write <end_of_turn> through adapters (a
first run that ended them with it: p(<end_of_turn>) 0.002 where a response ends, greedy replies
running on in "slotBox"; the kind's docstring). Rank-8 adapters (alpha 16) on every attention
and MLP projection train; the base stays frozen. A 256-token row holds 98% of the examples whole
(Gemma's tokens: median 71, 95th percentile 190), and 3-4 of them packed; responses are cut at
191 tokens (97% fit).

  python -m research.train --config=configs/gemma3_270m_chat_lora.py --workdir=runs/chat_lora
  python -m research.evaluate --workdir=runs/chat_lora
  python -m research.chat --workdir=runs/chat_lora --prompt="¿Cuál es la capital de España?" \\
      --temperature=0
  python -m research.chat --workdir=runs/chat_lora          # interactive, multi-turn

Measured (AMD EPYC Zen 5, family 26 model 2, avx512_bf16, no AMX; 2 cores shared with other
jobs, load 6-11; float32 matmuls): 64 steps in 12.1 min (8-29 s a step; ~350 response tokens a
step), response loss 1.92 (steps 1-8) -> 1.79 (57-64); 7.2 MiB trained, 1022.7 MiB of base
frozen. research.evaluate on all 100 validation instructions (895 s, greedy, 192 new tokens at
most): response loss 1.921 (perplexity 6.83), ROUGE-1/2/L **29.16 / 11.33 / 24.51**; 92 of the
100 replies end by themselves. From scratch (configs/alpaca_gpt.py, README): loss 5.47,
ROUGE-L 6.41. Full fine-tuning (every parameter trained; the training command with
--config.lora.rank=0 --config.optimizer.learning_rate=3e-5
--config.optimizer.end_learning_rate=3e-6; the same machine, idle, 2026-12-07): 64 steps in
5.8 min, response loss 1.945, ROUGE-1/2/L 27.54 / 10.59 / 23.33 on the same 100, below LoRA.
This LoRA config again, idle, the same day: 64 steps in 3.6 min (3.4 s a step), the evaluation
in 3.9 min, ROUGE-L 24.51 again (loss 1.921).

research.chat --temperature=0, verbatim (each --prompt run ~1 min, most of it loading):
  ¿Cuál es la capital de España?                     -> España es la capital de España.
  What is the boiling point of water at sea level?   -> The boiling point of water at sea level
                                                        is 100°C.
  ¿Qué es un volcán?  -> Volcanes are the most common type of volcano in the world. They are
      formed when molten rock cools and hardens, and then condenses into a solid rock. [...]
  Dame tres consejos para dormir mejor.  -> 1. <strong>No se tome demasiado alcohol.</strong>
      Alcohol puede causar problemas de sueño [...] (five items, cut at 128 tokens)
  Three turns, one conversation (stdin):
      ¿Cuál es la capital de Francia?          -> La capital de Francia es 10.000 millones de
                                                  dólares.
      ¿Y cuál es su monumento más famoso?      -> La Catedral de Notre-Dame de Paris es la más
                                                  famosa de Francia.
      Translate your last answer into English. -> The capital of France is 10,000 million
                                                  dollars.
The replies stop by themselves and follow the conversation, in the language asked (Alpaca is
English; Spanish answers come from the base), but a 270M model after 64 steps gets facts wrong.
The untuned base (python -m research.chat --pretrained=gemma3-270m --prompt=... --temperature=0
--max_new_tokens=60) repeats the question and an odd word ("¿Cuál es la capital de España?
szpital", "... sea level? mendatang") line after line, never ending.
"""

from research.config import derive


def get_config():
  config = derive(__file__, "alpaca_gpt.py")
  config.init_from = "gemma3-270m"
  config.lora.update(rank=8, alpha=16.0, dropout=0.0)
  # How this run computes (kept from this file; the rest of the model is Gemma's).
  config.model.update(dropout_rate=0.0, logits_chunk=32, matmul_dtype="float32")
  # Packed: several examples to a row (their attention kept apart): a row of one example is
  # mostly padding (median 71 of 256 tokens) that the layers compute anyway. Measured on 3
  # steps of 4 rows: 240 response tokens in ~23 s unpacked, ~650 in ~33 s packed.
  config.task.update(max_target_len=192, decoding="greedy", packing=True, eval_examples=8,
                     eval_batch_size=8)
  config.data.update(seq_len=256, batch_size=2)
  config.optimizer.update(learning_rate=5e-4, end_learning_rate=5e-5, warmup_steps=4,
                          weight_decay=0.0, clip_norm=1.0)
  # The in-training evaluation: 4 batches' loss and 8 replies (research.evaluate scores all).
  config.train.update(steps=64, eval_every=0, checkpoint_every=32, log_every=8,
                      eval_batches=4, eval_batch_size=4)
  return config
