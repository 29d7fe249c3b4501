"""Preference tuning by DPO: LoRA on Gemma 3 270M (the installed pretrained model) over the
bundled pairs of data/alpaca_preference/, the prompt in the chat template research.chat writes
(Gemma's turn markers) followed by the chosen and the rejected response, each ended by
<end_of_turn>.

The pairs are synthetic (data/alpaca_preference/SOURCE.md): the chosen response is Alpaca's own
output for the instruction, the rejected one the output of another, random, instruction, so
what DPO teaches here is to prefer an answer to the question asked. The architecture and
tokenizer are the pretrained model's (init_from); rank-8 adapters on every attention and MLP
projection train, the base stays frozen, and the frozen base is also DPO's reference model:
its log-probabilities of every pair are computed once before the first step and kept in
WORKDIR/reference_logprobs.npz (research/kinds/preference.py). Responses are cut to 96 tokens
(with their <end_of_turn>), prompts to 64; logits are computed only on response tokens, 32 at a
time.

  python -m research.train --config=configs/gemma3_270m_dpo_lora.py --workdir=runs/dpo_lora
  python -m research.evaluate --workdir=runs/dpo_lora --predictions=runs/dpo_lora/pairs.jsonl

evaluate reports, over the 50 validation pairs, the DPO loss, reward_margin (beta times how much
more the tuned model raised the chosen response's log-probability than the rejected one's,
relative to the base), reward_accuracy (the share of pairs with a positive margin; `accuracy`
is the same count, from the predictions) and the chosen and rejected rewards.

Not measured yet: the 100 steps have not been run, so there is no figure, and the learning rate
is a guess (LoRA's spa_eng run used 3e-4 for supervised tuning). Only a 3-step smoke run of this
config was, on 16 of the training pairs and 8 of the validation pairs (AMD EPYC Zen 5, 2 cores
shared with other jobs, load ~11; learning rate 5e-5 then):
  head -16 data/alpaca_preference/train.jsonl > /tmp/t.jsonl
  head -8 data/alpaca_preference/validation.jsonl > /tmp/v.jsonl
  python -m research.train --config=configs/gemma3_270m_dpo_lora.py --workdir=/tmp/dpo_smoke \
    --config.train.steps=3 --config.train.checkpoint_every=3 --config.train.eval_every=0 \
    --config.train.log_every=1 --config.optimizer.warmup_steps=1 \
    --config.task.train_files=/tmp/t.jsonl --config.task.eval_files=/tmp/v.jsonl
  python -m research.evaluate --workdir=/tmp/dpo_smoke --predictions=/tmp/dpo_smoke_pairs.jsonl
It ran end to end in 6 min 12 s (peak RSS 7.5 GB): the reference over the 24 pairs took 54 s,
step 1's loss was log 2 = 0.6931 (the adapters at zero are the reference model itself), steps of
4 pairs took 22-58 s, and evaluate read the reference back and gave the run's own final figures
(loss 0.6967, reward margin -0.006, reward accuracy 0.50 over 8 pairs: 3 steps learn nothing).
"""

from research.config import derive


def get_config():
  config = derive(__file__, "alpaca_gpt.py")
  config.init_from = "gemma3-270m"
  config.lora.update(rank=8, alpha=16.0, dropout=0.0)
  # How this run computes (kept from this file; the rest of the model is Gemma's).
  config.model.update(dropout_rate=0.0, logits_chunk=32, matmul_dtype="float32")
  config.task.update(kind="preference", train_files="data/alpaca_preference/train.jsonl",
                     eval_files="data/alpaca_preference/validation.jsonl", dpo_beta=0.1,
                     max_target_len=96, eval_examples=0, eval_batch_size=8)
  config.data.update(seq_len=160, batch_size=4)
  config.optimizer.update(learning_rate=1e-4, end_learning_rate=1e-5, warmup_steps=10,
                          weight_decay=0.0, clip_norm=1.0)
  config.train.update(steps=100, eval_every=50, checkpoint_every=50, log_every=10,
                      eval_batches=0, eval_batch_size=8)
  return config
