"""The experiment: everything a run, an evaluation or a generation needs from a config (mesh,
data, tokenizer, model, loss, optimizer, state shardings), and the evaluation over a split."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.experimental import multihost_utils

from research import lora as lora_lib
from research import metrics as metrics_lib
from research import objectives, sharding, tasks
from research.config import ConfigError, ExperimentConfig
from research.data import pipeline
from research.load import load_lora_base
from research.train_state import (TrainState, base_shardings, build_model_and_loss,
                                  build_optimizer, state_shardings)

Array = jax.Array


@dataclasses.dataclass
class Experiment:
  config: ExperimentConfig  # resolved: model.vocab_size filled in from the tokenizer
  mesh: Any
  model: nn.Module
  tx: optax.GradientTransformation
  abstract_state: TrainState
  shardings: TrainState
  data: Any  # research.data.pipeline.LMData, or research.tasks.TaskData for a task
  # LM batch -> the objective's batch (host side); None for a task, whose data is its batches.
  transform: objectives.BatchTransform | None
  loss_fn: Callable  # (model, params, batch, rngs=, deterministic=) -> sums
  # LoRA (config.lora.rank > 0): the state trains the adapters; the base's shardings, and the
  # base itself once base_params() has loaded it from config.init_from.
  frozen_shardings: Any = None
  frozen: Any = None

  @property
  def is_task(self) -> bool:
    return bool(self.config.task.name)

  def base_params(self) -> Any:
    """With LoRA, the frozen base on its shards (loaded once); None without."""
    if self.config.lora.rank and self.frozen is None:
      self.frozen = load_lora_base(self.model, self.config, self.frozen_shardings)
    return self.frozen

  def model_params(self, params: Any) -> Any:
    """The model's parameter tree from the state's `params`: with LoRA, the adapters merged
    into the base (what predictions and generation run on)."""
    if not self.config.lora.rank:
      return params
    return jax.jit(functools.partial(lora_lib.merge, cfg=self.config.lora))(
        self.base_params(), params)

  def train_batches(self) -> Any:
    """The training dataset, objective applied; iter() of it is checkpointable."""
    if self.transform is None:
      return self.data.train
    return self.data.train.random_map(self.transform, seed=self.config.data.shuffle_seed)

  def eval_batches(self, max_batches: int = 0, max_examples: int = 0) -> Iterator[dict]:
    """The whole evaluation split (or its first max_batches; a task's first max_examples), the
    objective applied with a fixed seed per batch so every evaluation sees the same corruption."""
    batch_size = self.config.train.eval_batch_size or self.config.data.batch_size
    if self.transform is None:
      yield from self.data.eval_batches(self.config.data.eval_split, batch_size, max_batches,
                                        max_examples)
      return
    for i, batch in enumerate(self.data.eval_batches(batch_size, max_batches=max_batches)):
      yield self.transform(batch, np.random.default_rng([self.config.train.seed, i]))


def resolve_vocab(config: ExperimentConfig, tokenizer) -> ExperimentConfig:
  size = config.model.vocab_size
  if size == 0:
    return dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                 vocab_size=tokenizer.vocab_size))
  if size < tokenizer.vocab_size:
    raise ConfigError(f"model.vocab_size={size} is smaller than the tokenizer's vocabulary "
                      f"({tokenizer.vocab_size}); set model.vocab_size=0 to take the tokenizer's")
  return config


def build_experiment(config: ExperimentConfig, workdir: str | os.PathLike,
                     devices=None) -> Experiment:
  """Mesh, data, tokenizer, model, optimizer and state shardings. Writes into the workdir only
  the tokenizer (when it has none yet) and token caches."""

  mesh = sharding.make_mesh(config, devices)  # a bad mesh fails before any data work
  data_ways = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.train.eval_batch_size % data_ways:  # said now, not at the first evaluation
    raise ConfigError(f"train.eval_batch_size={config.train.eval_batch_size} is not divisible by "
                      f"the data x fsdp mesh axes ({data_ways}); change it (0: data.batch_size)")

  def build_data():
    if config.task.name:
      return tasks.build_task_data(config, workdir, process_index=jax.process_index(),
                                   process_count=jax.process_count())
    return pipeline.build_lm_data(
        config.data, str(workdir), process_index=jax.process_index(),
        process_count=jax.process_count(),
        extra_special_tokens=objectives.required_special_tokens(config.objective))

  if jax.process_count() == 1:
    data = build_data()
  else:  # process 0 prepares the dataset, tokenizer and caches; the others then read them
    data = build_data() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("data prepared")
    data = data or build_data()
  config = resolve_vocab(config, data.tokenizer)
  model, loss_fn, transform = build_model_and_loss(config, data.tokenizer)
  tx = build_optimizer(config)
  abstract, shardings = state_shardings(model, tx, config, mesh)
  frozen = base_shardings(model, config, mesh) if config.lora.rank else None
  return Experiment(config, mesh, model, tx, abstract, shardings, data, transform, loss_fn,
                    frozen_shardings=frozen)


def eval_step(params: Any, batch: dict[str, Array], *, model: nn.Module,
              loss_fn: Callable) -> dict[str, Array]:
  return loss_fn(model, params, batch, deterministic=True)


def make_eval_fn(exp: Experiment) -> Callable:
  """evaluate(params, batch) -> sums, jitted. With LoRA `params` is the state's trainable tree
  and the frozen base (loaded here) goes in as an argument of its own."""
  batch_sharding = sharding.batch_sharding(exp.mesh, exp.config.rules)
  replicated = sharding.replicated(exp.mesh)
  if not exp.config.lora.rank:
    return jax.jit(functools.partial(eval_step, model=exp.model, loss_fn=exp.loss_fn),
                   in_shardings=(exp.shardings.params, batch_sharding), out_shardings=replicated)
  base = exp.base_params()
  on_base = lora_lib.loss_on_base(exp.loss_fn, exp.config.lora)

  def lora_eval(params, batch, frozen):
    return eval_step(params, batch, model=exp.model,
                     loss_fn=functools.partial(on_base, base=frozen))

  evaluate = jax.jit(lora_eval, in_shardings=(exp.shardings.params, batch_sharding,
                                              exp.frozen_shardings), out_shardings=replicated)
  return WithBase(evaluate, base)


class WithBase:
  """A LoRA program, jitted with the frozen base as its last argument, called and lowered
  without it: `program(*args)` is `jitted(*args, base)`. research.aot lowers it over an abstract
  base (ShapeDtypeStructs on their shardings), research.train calls it with the loaded one."""

  def __init__(self, jitted: Callable, base: Any):
    self.jitted, self.base = jitted, base

  def __call__(self, *args):
    return self.jitted(*args, self.base)

  def lower(self, *args):
    return self.jitted.lower(*args, self.base)


def evaluate_split(exp: Experiment, eval_fn, params, max_batches: int = 0,
                   task_examples: int | None = None,
                   predictions_file: str | None = None) -> dict[str, Any]:
  """Loss/perplexity/accuracy over the evaluation split (all of it unless max_batches), and for
  a task its metrics on the first task_examples examples (default task.eval_examples, 0: all),
  each example's prediction written to predictions_file when given."""
  examples = exp.config.task.eval_examples if task_examples is None else task_examples
  total = None
  for local_batch in exp.eval_batches(max_batches, examples):
    batch = sharding.shard_batch(local_batch, exp.mesh, exp.config.rules)
    total = metrics_lib.add_sums(total, eval_fn(params, batch))
  result: dict[str, Any] = metrics_lib.summarize(total or {}, prefix="eval/")
  if exp.is_task:
    params = exp.model_params(params)  # with LoRA, the adapters merged into the base
    params = jax.device_get(params) if jax.process_count() == 1 else params
    metrics = tasks.task_metrics(exp, params, exp.config.data.eval_split, examples,
                                 predictions_file if jax.process_index() == 0 else None)
    result.update({f"eval/{k}": v for k, v in metrics.items()})
  return result
