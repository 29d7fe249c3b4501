"""Preference tuning by DPO (Rafailov et al., 2023, "Direct Preference Optimization"): a prompt
and two responses, the chosen one preferred to the rejected one.

  decoder  "User: <prompt>\\nAssistant: " -> chosen [eos], and the same prompt -> rejected [eos]
Records: JSON lines with prompt, chosen and rejected (research/data/tasks.py reads them). The
prompt is written in the instruction kind's chat template, which research.chat writes too: on a
vocabulary with Gemma's turn markers, Gemma's, each response ending in <end_of_turn>.

With log p(y) a response's log-probability under the model being tuned (summed over its tokens
and the token that ends it) and ref(y) the same under the reference model, a pair's loss is

  -log sigmoid(beta * ((log p(chosen) - ref(chosen)) - (log p(rejected) - ref(rejected))))

beta = task.dpo_beta. The reference is the model the run starts from (init_from's; with LoRA
the frozen base, which is the same model), run once before the first step over every pair of
every split of the task (Preference.prepare); its log-probabilities are kept in
WORKDIR/reference_logprobs.npz, keyed by the pair's tokens, so a resumed run and
research.evaluate read the same numbers back and never run the reference again. A batch holds
each pair's two sequences side by side, (B, 2, T), and their reference log-probabilities (B, 2).

Metrics (means over pairs): loss; reward_margin, beta times the bracket above; reward_accuracy,
the share of pairs whose margin is above 0; chosen_reward and rejected_reward, beta * (log p -
ref) of each response. An example's prediction is the response the model prefers by that
margin ("chosen" or "rejected"): the task's accuracy is the reward accuracy of the split.
"""

from __future__ import annotations

import hashlib
import io
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from research import objectives, paths
from research import workdir as workdir_lib
from research.config import DataError
from research.kinds import base, instruction

CHOSEN, REJECTED = "chosen", "rejected"


def pair_key(prompt: np.ndarray, chosen: np.ndarray, rejected: np.ndarray) -> str:
  """What identifies a pair in the reference table: its tokens, as the model reads them."""
  digest = hashlib.blake2b(digest_size=16)
  for ids in (prompt, chosen, rejected):
    ids = np.asarray(ids, np.int32)
    digest.update(len(ids).to_bytes(4, "little") + ids.tobytes())
  return digest.hexdigest()


def pair_logprobs(model, params, batch, *, rngs=None, deterministic=True) -> jax.Array:
  """Each pair's summed log-probabilities of its chosen and rejected responses (B, 2) float32;
  batch: inputs, targets and weights (B, 2, T)."""
  pairs = batch["inputs"].shape[0]
  rows = {k: batch[k].reshape((2 * pairs,) + batch[k].shape[2:])
          for k in ("inputs", "targets", "weights")}
  return objectives.decoder_row_logprobs(model, params, rows, rngs=rngs,
                                         deterministic=deterministic).reshape(pairs, 2)


def dpo_sums(logprobs: jax.Array, reference: jax.Array, pair_weights: jax.Array,
             beta: float) -> dict[str, jax.Array]:
  """The DPO loss and its rewards, summed over the pairs of weight 1. logprobs and reference
  (B, 2): (chosen, rejected); pair_weights (B,): 0 for a padding row."""
  rewards = beta * (logprobs - reference)  # (B, 2): the implicit rewards
  margin = rewards[:, 0] - rewards[:, 1]  # (B,)
  w = pair_weights
  return {"loss_sum": jnp.sum(-jax.nn.log_sigmoid(margin) * w),
          "reward_margin_sum": jnp.sum(margin * w),
          "reward_accuracy_sum": jnp.sum((margin > 0).astype(jnp.float32) * w),
          "chosen_reward_sum": jnp.sum(rewards[:, 0] * w),
          "rejected_reward_sum": jnp.sum(rewards[:, 1] * w),
          "weight_sum": jnp.sum(w)}


class Preference(instruction.Instruction):
  """The instruction kind's prompt (its chat template) followed by two responses."""

  NAME = "preference"
  ROWS_PER_EXAMPLE = 2

  def __init__(self, task, config, tokenizer=None, labels=()):
    super().__init__(task, config, tokenizer, labels)
    self.beta = config.task.dpo_beta
    # pair_key -> (chosen, rejected) reference log-probabilities: set by prepare or restore.
    self.reference: dict[str, np.ndarray] | None = None
    self.reference_path: epath.Path | None = None
    if tokenizer is None:
      return
    gemma = instruction.GEMMA
    if instruction.chat_template(tokenizer) is gemma:
      # As the instruction kind sets its prompt format up on this vocabulary (its format is
      # 'prompt', this kind's its own): research.chat's turns, markers as their ids, each
      # response ended by EOS as instruction tuning ends it (research/kinds/instruction.py).
      self.template = gemma
      self.before = np.concatenate([base.begin_of_text(tokenizer),
                                    self._encode_turn(gemma.user)]).astype(np.int32)
      self.after = self._encode_turn(gemma.assistant)
    else:  # a pretrained decoder's prompt opens as it was trained to
      self.before = np.concatenate([base.begin_of_text(tokenizer), self.before]).astype(np.int32)

  # -- text -------------------------------------------------------------------------------------

  def source(self, record: base.Record) -> str:
    return record["prompt"]

  def target(self, record: base.Record) -> str:
    return record[CHOSEN]

  def references(self, record: base.Record) -> list[str]:
    return [CHOSEN]  # the prediction names the response preferred

  def input_text(self, record: base.Record):
    return {k: record[k] for k in ("prompt", CHOSEN, REJECTED)}

  def tokenizer_texts(self, records):
    for record in records:
      yield from (record["prompt"], record[CHOSEN], record[REJECTED])

  # -- features and batches ---------------------------------------------------------------------

  def _response(self, text: str) -> np.ndarray:
    ids = self._encode(text)[:self.target_len - 1]
    return np.append(ids, self.end_id).astype(np.int32)

  def features(self, records: Sequence[base.Record]) -> list[base.Feature]:
    out = []
    for index, record in enumerate(records):
      prompt = self.prompt_ids(record)
      chosen, rejected = self._response(record[CHOSEN]), self._response(record[REJECTED])
      out.append({"prompt": prompt, CHOSEN: chosen, REJECTED: rejected, "example": index,
                  "key": pair_key(prompt, chosen, rejected)})
    return out

  def collate_pairs(self, features: list[base.Feature | None]) -> base.Batch:
    """inputs, targets, weights (B, 2, T): each pair's chosen and rejected sequences, the
    weights on the response and its end token, as an SFT prompt batch has them; pair_weights
    (B,)."""
    rows = []
    for f in features:
      rows += ([None, None] if f is None else
               [{"prompt": f["prompt"], "target": f[response]} for response in (CHOSEN, REJECTED)])
    flat = self._collate_prompt(rows)
    batch = {k: v.reshape((len(features), 2) + v.shape[1:]) for k, v in flat.items()}
    batch["pair_weights"] = np.array([0.0 if f is None else 1.0 for f in features], np.float32)
    return batch

  def collate(self, features):
    batch = self.collate_pairs(features)
    batch["reference"] = self._reference_of(features)
    return batch

  def _reference_of(self, features: list[base.Feature | None]) -> np.ndarray:
    """(B, 2) reference log-probabilities of the pairs (0 for padding rows)."""
    where = self.reference_path or f"the workdir's {workdir_lib.REFERENCE_FILE}"
    if self.reference is None:
      raise DataError(f"no reference log-probabilities for this preference task: {where} is "
                      "missing; a run computes it before its first step (research.train), so "
                      "start the run again in a new --workdir")
    out = np.zeros((len(features), 2), np.float32)
    for i, f in enumerate(features):
      if f is None:
        continue
      if f["key"] not in self.reference:
        raise DataError(f"example {f['example']} of the task's files has no reference "
                        f"log-probabilities in {where} (the files or the tokenizer changed "
                        "since the run started); evaluate files the run was started on, or "
                        "train again in a new --workdir")
      out[i] = self.reference[f["key"]]
    return out

  # -- the reference, computed once -------------------------------------------------------------

  def reference_logprobs(self, model, params, features: list[base.Feature]) -> np.ndarray:
    """(N, 2) log-probabilities of each feature's chosen and rejected response under `params`,
    in batches of task.eval_batch_size (one compilation: the last batch padded)."""
    size = self.config.task.eval_batch_size
    out = []
    for start in range(0, len(features), size):
      chunk = features[start:start + size]
      batch = self.collate_pairs(chunk + [None] * (size - len(chunk)))
      out.append(np.asarray(self.batched(pair_logprobs, model, params, batch))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)

  def prepare(self, exp, params, workdir) -> None:
    """The reference log-probabilities of every pair of every split, under the model the run
    starts from (params: the first state's), written to the workdir (process 0) and kept."""
    data, started = exp.data, time.perf_counter()
    splits = {self.config.data.train_split, self.config.data.eval_split,
              *(split for split, _ in self.task.files)}
    unique = {}
    for split in sorted(splits):
      for f in data.eval_features(split):
        unique.setdefault(f["key"], f)
    model_params = exp.model_params(params)  # with LoRA: the base, the adapters at zero
    if jax.process_count() == 1:
      model_params = jax.device_get(model_params)
    features = list(unique.values())
    values = self.reference_logprobs(exp.model, model_params, features)
    path = epath.Path(workdir) / workdir_lib.REFERENCE_FILE
    if jax.process_index() == 0:
      keys = np.array(list(unique), dtype="U32")
      buffer = io.BytesIO()
      np.savez(buffer, keys=keys, logprobs=values.astype(np.float32))
      paths.write_atomic(path, buffer.getvalue())
    self.reference = dict(zip(unique, values.astype(np.float32)))
    self.reference_path = path
    print(f"DPO reference: log-probabilities of {len(features)} pairs under the starting model "
          f"({time.perf_counter() - started:.1f} s), kept in {path}", file=sys.stderr)

  def restore(self, workdir) -> None:
    path = epath.Path(workdir) / workdir_lib.REFERENCE_FILE
    self.reference_path = path
    if not path.exists():
      return
    try:
      with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as saved:
        keys, values = saved["keys"], saved["logprobs"]
    except (OSError, ValueError, KeyError) as e:
      raise DataError(f"{path} cannot be read ({e}); it is written before a run's first step: "
                      "train again in a new --workdir") from None
    self.reference = dict(zip(keys.tolist(), values))

  # -- loss and predictions ---------------------------------------------------------------------

  def loss(self, model, params, batch, *, rngs=None, deterministic=True):
    logprobs = pair_logprobs(model, params, batch, rngs=rngs, deterministic=deterministic)
    return dpo_sums(logprobs, batch["reference"], batch["pair_weights"], self.beta)

  def _margins(self, model, params, batch):
    rewards = self.beta * (pair_logprobs(model, params, batch) - batch["reference"])
    return rewards[:, 0] - rewards[:, 1]

  def predict(self, model, params, data, split, max_examples=0):
    """'chosen' where the model's reward margin prefers the chosen response, else 'rejected'."""
    predictions = []
    for batch in data.eval_batches(split, self.config.task.eval_batch_size,
                                   max_examples=max_examples):
      margins = np.asarray(self.batched(self._margins, model, params, batch))
      predictions.extend(CHOSEN if m > 0 else REJECTED for m in margins)
    return predictions[:len(data.eval_features(split, max_examples))]
