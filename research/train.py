"""Training: the pure train step, the loop around it, and the CLI.

  python -m research.train --config=configs/gpt_shakespeare_char.py --workdir=runs/x \
      [--config.model.num_layers=6 ...]

Running the same command on a workdir that holds checkpoints resumes from the latest one.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Iterable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import struct

from research import checkpoint as ckpt_lib
from research import flops as flops_lib
from research import machine as machine_lib
from research import metrics as metrics_lib
from research import lora as lora_lib
from research import models, objectives, paths, sharding
from research import workdir as workdir_lib
from research.config import ConfigError, ExperimentConfig, UserError

Array = jax.Array


@struct.dataclass
class TrainState:
  step: Array
  params: Any
  opt_state: Any


# ---------------------------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------------------------


def learning_rate_schedule(config: ExperimentConfig) -> Callable[[Array], Array]:
  """Linear warmup to the peak, then cosine (or linear) decay to end_learning_rate."""
  opt = config.optimizer
  peak, end, warmup = opt.learning_rate, opt.end_learning_rate, opt.warmup_steps
  decay_steps = opt.decay_steps or config.train.steps

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * (step + 1) / (warmup + 1)
    progress = jnp.clip((step - warmup) / max(decay_steps - warmup, 1), 0.0, 1.0)
    if opt.schedule == "cosine":
      decayed = end + 0.5 * (1.0 + jnp.cos(jnp.pi * progress)) * (peak - end)
    elif opt.schedule == "linear":
      decayed = peak + progress * (end - peak)
    else:
      decayed = jnp.asarray(peak, jnp.float32)
    return jnp.where(step < warmup, warm, decayed)

  return schedule


def weight_decay_mask(rule: str, params: Any) -> Any:
  """True where weight decay applies.

  "matrices": every parameter with ndim >= 2 (nanoGPT: kernels and embedding tables);
  "matrices_no_embed": only the 'kernel' of linear layers (no biases, norms or embeddings).
  """

  def decays(path, leaf):
    if rule == "matrices":
      return leaf.ndim >= 2
    return getattr(path[-1], "key", None) == "kernel"

  return jax.tree_util.tree_map_with_path(decays, params)


def build_optimizer(config: ExperimentConfig) -> optax.GradientTransformation:
  opt = config.optimizer
  # identity() when clipping is off keeps the state's structure, so a run can resume with
  # clipping switched on or off.
  clip = optax.clip_by_global_norm(opt.clip_norm) if opt.clip_norm > 0 else optax.identity()
  # mu_dtype: Adam's first moment is float32 from the start. Left to optax, it is created in
  # the parameters' dtype but takes the gradients' after one update (float32: train_step divides
  # by a float32 count), so bfloat16 parameters saved a float32 moment that a resume, restoring
  # into the created dtype, rounded to bfloat16.
  return optax.chain(clip, optax.adamw(
      learning_rate_schedule(config), b1=opt.b1, b2=opt.b2, eps=opt.eps, mu_dtype=jnp.float32,
      weight_decay=opt.weight_decay, mask=functools.partial(weight_decay_mask, opt.decay_rule)))


# ---------------------------------------------------------------------------------------------
# State: born sharded
# ---------------------------------------------------------------------------------------------


def init_params(model: nn.Module, config: ExperimentConfig, rng: Array) -> Any:
  return model.init(rng, *models.dummy_inputs(config.model, config.data.seq_len))["params"]


def init_trainable(model: nn.Module, config: ExperimentConfig, rng: Array) -> Any:
  """What the optimizer trains, boxed with logical names: every parameter, or with LoRA
  (config.lora.rank > 0) the adapters and the task head (research/lora.py)."""
  boxed = init_params(model, config, rng)
  if not config.lora.rank:
    return boxed
  return lora_lib.init_trainable(config.lora, lora_head_paths(model, config),
                                 jax.random.fold_in(rng, 1), boxed)


def lora_head_paths(model: nn.Module, config: ExperimentConfig) -> list[tuple[str, ...]]:
  """The leaves of `model` that the family's language model (what init_from holds) lacks."""
  shapes = lambda m: jax.eval_shape(functools.partial(init_params, m, config), jax.random.key(0))
  return lora_lib.head_paths(shapes(model), shapes(models.build_model(config.model)))


def base_shardings(model: nn.Module, config: ExperimentConfig, mesh) -> Any:
  """Shardings of the model's whole parameter tree (with LoRA: the frozen base)."""
  boxed = jax.eval_shape(functools.partial(init_params, model, config), jax.random.key(0))
  return sharding.param_shardings(boxed, mesh, config.rules)


def state_shardings(model: nn.Module, tx: optax.GradientTransformation,
                    config: ExperimentConfig, mesh) -> tuple[TrainState, TrainState]:
  """(abstract state, shardings) from the logical names on every parameter."""
  boxed = jax.eval_shape(functools.partial(init_trainable, model, config), jax.random.key(0))
  param_shardings = sharding.param_shardings(boxed, mesh, config.rules)
  abstract_params = nn.unbox(boxed)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  replicated = sharding.replicated(mesh)
  opt_shardings = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_shardings,
                                        transform_non_params=lambda _: replicated)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                        opt_state=abstract_opt)
  shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings)
  return abstract, shardings


def create_state(model, tx, config: ExperimentConfig, shardings: TrainState, rng) -> TrainState:
  """Initialises parameters and optimizer state directly on their shards."""

  def init(rng):
    params = nn.unbox(init_trainable(model, config, rng))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  return jax.jit(init, out_shardings=shardings)(rng)


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------


def train_step(state: TrainState, batch: dict[str, Array], *, model: nn.Module,
               tx: optax.GradientTransformation, loss_fn: Callable, base_rng: Array,
               accum_steps: int = 1,
               skip_nonfinite: bool = False) -> tuple[TrainState, dict[str, Array]]:
  """One optimizer update on `batch` (split into `accum_steps` microbatches). Pure.

  metrics['nonfinite'] is 1.0 when the loss or the gradient norm is NaN/Inf; with
  skip_nonfinite the state is then left as it was (only the step counter moves on).
  """
  step_rng = jax.random.fold_in(base_rng, state.step)

  def loss_and_grads(params, microbatch, rng):
    def summed_loss(p):
      sums = loss_fn(model, p, microbatch, rngs={"dropout": rng}, deterministic=False)
      return sums["loss_sum"], sums
    return jax.grad(summed_loss, has_aux=True)(params)

  if accum_steps == 1:
    grads, sums = loss_and_grads(state.params, batch, step_rng)
  else:
    micro = jax.tree.map(lambda x: x.reshape((accum_steps, -1) + x.shape[1:]), batch)

    def accumulate(carry, inputs):
      i, microbatch = inputs
      grads, sums = loss_and_grads(state.params, microbatch, jax.random.fold_in(step_rng, i))
      return jax.tree.map(jnp.add, carry, (grads, sums)), None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
        loss_and_grads, state.params, jax.tree.map(lambda x: x[0], micro), step_rng))
    (grads, sums), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(accum_steps), micro))

  # The loss is a sum over target tokens; dividing once gives the mean over the whole batch.
  grads = jax.tree.map(lambda g: g / jnp.maximum(sums["weight_sum"], 1.0), grads)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(sums["loss_sum"]) & jnp.isfinite(grad_norm)
  if skip_nonfinite:
    keep_old = lambda new, old: jnp.where(finite, new, old)
    params = jax.tree.map(keep_old, params, state.params)
    opt_state = jax.tree.map(keep_old, opt_state, state.opt_state)
    sums = jax.tree.map(lambda v: jnp.where(finite, v, 0.0), sums)  # logged means skip it
  metrics = dict(sums, grad_norm=grad_norm, nonfinite=1.0 - finite.astype(jnp.float32))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params: Any, batch: dict[str, Array], *, model: nn.Module,
              loss_fn: Callable) -> dict[str, Array]:
  return loss_fn(model, params, batch, deterministic=True)


# ---------------------------------------------------------------------------------------------
# The experiment: everything a run, an evaluation or a generation needs
# ---------------------------------------------------------------------------------------------


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
  # Imported here: TFDS is slow to import, and generation never needs it.
  from research.data import pipeline  # pylint: disable=import-outside-toplevel

  mesh = sharding.make_mesh(config, devices)  # a bad mesh fails before any data work
  data_ways = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.train.eval_batch_size % data_ways:  # said now, not at the first evaluation
    raise ConfigError(f"train.eval_batch_size={config.train.eval_batch_size} is not divisible by "
                      f"the data x fsdp mesh axes ({data_ways}); change it (0: data.batch_size)")

  def build_data():
    if config.task.name:
      from research import tasks  # pylint: disable=import-outside-toplevel
      return tasks.build_task_data(config, workdir, process_index=jax.process_index(),
                                   process_count=jax.process_count())
    return pipeline.build_lm_data(
        config.data, str(workdir), process_index=jax.process_index(),
        process_count=jax.process_count(),
        extra_special_tokens=objectives.required_special_tokens(config.objective))

  if jax.process_count() == 1:
    data = build_data()
  else:  # process 0 prepares the dataset, tokenizer and caches; the others then read them
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
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


def build_model_and_loss(config: ExperimentConfig, tokenizer=None):
  """(model, loss function, batch transform or None) of a pretraining objective or a task."""
  if config.task.name:
    from research import tasks  # pylint: disable=import-outside-toplevel
    return tasks.build_model(config), tasks.loss_fn(config), None
  transform = None
  if tokenizer is not None:
    transform = objectives.BatchTransform(config.objective, config.model.family, tokenizer)
  return models.build_model(config.model), objectives.LOSSES[config.model.family], transform


def check_resumable(workdir: epath.Path, config: ExperimentConfig,
                    sections: tuple[str, ...] = ("model", "data"),
                    ignore: tuple[str, ...] = ()) -> None:
  """Refuses to reuse a workdir that holds a run of another model (before anything is written)."""
  saved = saved_config(workdir)
  if saved is None:
    return
  want = config.to_dict()
  # The precision policy, the attention kernel, remat and dropout are how a run computes, not
  # what its parameters are: a run may resume with others (matmul_dtype="auto" resolves
  # differently on another machine), and record_start says which settings changed.
  precision = ("matmul_dtype", "activation_dtype", "attention", "remat", "dropout_rate",
               "logits_chunk")
  for section in sections:
    keys = (("tokenizer", "seq_len", "dataset") if section == "data" else
            [k for k in want[section] if k not in precision])
    # A key the saved config lacks was added to the code later: the run used its default.
    before = {**ExperimentConfig.from_config_dict({}).to_dict()[section], **saved.get(section, {})}
    diffs = [f"{section}.{k}: {before.get(k)!r} -> {want[section][k]!r}"
             for k in keys if before.get(k) != want[section][k] and k not in ignore]
    if diffs:
      raise UserError(f"workdir {workdir} holds a run of a different model ({'; '.join(diffs)}); "
                      "use a new --workdir, or the config it was trained with")


# With init_from a run starts from the pretrained workdir's parameters, so every ModelConfig
# field that decides what they are (their shapes, their paths, the tree's layout) or what their
# trained values mean (norms, positions, scales, activations, the layer pattern) is that
# workdir's. These fields only say how this run computes, so they stay this config's (its file or
# its flags). Listed this way round so that a field added to ModelConfig later is inherited
# until said otherwise, the safe side. scan_layers is not among them: it stacks the blocks'
# parameters on a layer axis, and merge_pretrained matches parameters by path.
RUN_FIELDS = frozenset({"dropout_rate", "init_std", "param_dtype", "activation_dtype",
                        "matmul_dtype", "remat", "attention", "attention_window",
                        "logits_chunk"})
# DataConfig fields that come from the pretrained workdir with its tokenizer.
TOKENIZER_FIELDS = ("tokenizer", "tokenizer_path", "vocab_size")


def inherit_pretrained(config: ExperimentConfig,
                       overrides: Iterable[str] = ()) -> ExperimentConfig:
  """With init_from: the pretrained workdir's architecture (every model field but RUN_FIELDS)
  and tokenizer replace the config's; RUN_FIELDS stay the config's. `overrides` are the keys
  given as --config.KEY flags ("model.num_layers"): one that asks the architecture for another
  value is a one-line ConfigError naming it, never dropped silently; only model.max_len of
  positions that are not learned (no parameter's shape) may differ. A different family is an
  error too."""
  if not config.init_from:
    return config
  overrides = set(overrides)
  from research.config import validate  # pylint: disable=import-outside-toplevel
  pretrained = pretrained_config(config.init_from)
  if pretrained.model.family != config.model.family:
    raise ConfigError(f"init_from={config.init_from} holds a {pretrained.model.family} model but "
                      f"this config is model.family={config.model.family}; fine-tune it with a "
                      f"{pretrained.model.family} config, or start from another workdir")
  # max_len sizes the learned position table only; with other positions it bounds the context,
  # which a fine-tuning run may change.
  free = RUN_FIELDS | ({"max_len"} if pretrained.model.position != "learned" else set())
  for key in ([f"model.{f.name}" for f in dataclasses.fields(pretrained.model)
               if f.name not in free] + [f"data.{k}" for k in TOKENIZER_FIELDS]):
    section, name = key.split(".")
    ours = getattr(getattr(config, section), name)
    theirs = getattr(getattr(pretrained, section), name)
    if key in overrides and ours != theirs:
      raise ConfigError(
          f"init_from={config.init_from} holds a model with {key}={theirs!r}, but "
          f"--config.{key}={ours!r} asks for another; a run from init_from keeps the "
          f"architecture and tokenizer its parameters were trained with: drop --config.{key}, "
          "or train from scratch without init_from")
  kept = {k for k in free if k in RUN_FIELDS or f"model.{k}" in overrides}
  model = dataclasses.replace(pretrained.model, **{k: getattr(config.model, k) for k in kept})
  data = dataclasses.replace(config.data, **{k: getattr(pretrained.data, k)
                                             for k in TOKENIZER_FIELDS})
  # Recorded as a path that every tool finds from any folder (a LoRA workdir loads its base).
  source = (config.init_from if pretrained_kind(config.init_from) == "named"
            else str(paths.workdir_path(config.init_from)))
  config = dataclasses.replace(config, model=model, data=data, init_from=source)
  validate(config)
  return config


def pretrained_kind(source: str) -> str:
  """What an init_from value names: "workdir", "hf" (a Hugging Face folder), "gguf" (a GGUF
  file) or "named" (a model an installed package ships, research/gguf_io.PRETRAINED)."""
  from research import gguf_io  # pylint: disable=import-outside-toplevel
  if source in gguf_io.PRETRAINED:
    return "named"
  path = epath.Path(source)
  if path.is_dir():
    if ckpt_lib.checkpoint_dir(path).exists():
      return "workdir"
    config_file = path / "config.json"
    if config_file.is_file():
      try:
        saved = json.loads(config_file.read_text(encoding="utf-8"))
      except (UnicodeDecodeError, json.JSONDecodeError):
        saved = None
      # A workdir's config.json has its sections; a Hugging Face one has flat keys.
      return "workdir" if isinstance(saved, dict) and isinstance(saved.get("model"), dict) else "hf"
    raise UserError(f"init_from={source} is a folder with neither a config.json nor checkpoints; "
                    "pass a training workdir, a Hugging Face model folder, a GGUF file or a "
                    f"named model ({', '.join(gguf_io.PRETRAINED)})")
  if path.is_file():
    return "gguf"
  paths.check_bucket(source)  # a missing bucket is said as such
  raise UserError(f"init_from={source} does not exist; pass a training workdir, a Hugging Face "
                  f"model folder, a GGUF file or a named model ({', '.join(gguf_io.PRETRAINED)})")


def pretrained_config(source: str) -> ExperimentConfig:
  """The config of init_from's model: a workdir's own; for a GGUF file, a named model or a
  Hugging Face folder, the config of its import (research/convert.py)."""
  kind = pretrained_kind(source)
  if kind == "workdir":
    return load_experiment_config(source)
  from research import convert, gguf_io, hf  # pylint: disable=import-outside-toplevel
  if kind == "hf":
    return convert.experiment_config(hf.import_params(source).model_config)
  # Only the metadata: the tensors are read when the parameters are.
  return convert.experiment_config(gguf_io.model_config(gguf_io.read_gguf(
      gguf_io.resolve(source))))


def pretrained_params(source: str) -> Any:
  """The parameters of init_from's model (host arrays), whatever its kind."""
  kind = pretrained_kind(source)
  if kind == "workdir":
    return jax.device_get(restore_params(source)[2])
  from research import gguf_io, hf  # pylint: disable=import-outside-toplevel
  if kind == "hf":
    return hf.import_params(source).params
  return gguf_io.import_gguf(source, tokenizer=False).params


def copy_pretrained_tokenizer(source: str, workdir: epath.Path) -> None:
  """Gives `workdir` the tokenizer of init_from's model (unless it has one): a workdir's
  tokenizer folder, or the tokenizer of a Hugging Face folder or a GGUF file's vocabulary."""
  from research import tasks  # pylint: disable=import-outside-toplevel
  kind = pretrained_kind(source)
  if kind == "workdir":
    tasks.copy_tokenizer(source, workdir)
    return
  target = workdir / "tokenizer"
  if target.exists():
    return
  from research import convert, gguf_io  # pylint: disable=import-outside-toplevel
  if kind == "hf":
    tokenizer = convert._tokenizer_of(epath.Path(source))  # pylint: disable=protected-access
  else:
    metadata = gguf_io.read_gguf(gguf_io.resolve(source)).metadata
    tokenizer = (gguf_io.make_tokenizer(metadata) if "tokenizer.ggml.tokens" in metadata
                 else None)
  if tokenizer is None:
    raise UserError(f"init_from={source} holds no tokenizer (no tokenizer.json / no vocabulary "
                    "in the file), so no text can be read for it; add one to the model")
  # Written aside and renamed, so a run killed meanwhile never finds half a tokenizer.
  staging = workdir / ".tokenizer-import"
  tokenizer.save(staging)
  staging.rename(target)


def load_lora_base(model: nn.Module, config: ExperimentConfig, shardings: Any) -> Any:
  """The frozen base of a LoRA run, on its shards: the model's initialisation (seed
  train.seed) with every parameter init_from holds put in (a task head keeps its init; its
  trained values are in the adapters' tree)."""
  fresh = jax.jit(lambda rng: nn.unbox(init_params(model, config, rng)),
                  out_shardings=shardings)(jax.random.key(config.train.seed))
  merged, _, _ = merge_pretrained(jax.device_get(fresh), pretrained_params(config.init_from),
                                  config.init_from)
  return jax.device_put(merged, shardings)


def merge_pretrained(params: Any, pretrained: Any, source: str) -> tuple[Any, list, list]:
  """params with every leaf the pretrained tree has at the same path replaced by it.

  Returns (merged, new paths, unused pretrained paths). A leaf at the same path with another
  shape, or no shared leaf at all, is a ConfigError.
  """
  flat_pre = {jax.tree_util.keystr(k): v for k, v in
              jax.tree_util.tree_flatten_with_path(pretrained)[0]}
  used, new = set(), []

  def pick(path, leaf):
    key = jax.tree_util.keystr(path)
    if key not in flat_pre:
      new.append(key)
      return leaf
    value = flat_pre[key]
    if value.shape != leaf.shape:
      raise ConfigError(f"init_from={source}: parameter {key} has shape {value.shape} there but "
                        f"{leaf.shape} in this model; the architectures differ")
    used.add(key)
    return np.asarray(value, leaf.dtype)

  merged = jax.tree_util.tree_map_with_path(pick, params)
  if not used:
    raise ConfigError(f"init_from={source}: no parameter of that checkpoint fits this model "
                      "(different family or layout)")
  return merged, new, sorted(set(flat_pre) - used)


def init_from_pretrained(exp: Experiment, rng: Array, pretrained: Any) -> TrainState:
  """A fresh state (step 0, new optimizer) whose parameters come from `pretrained` (the params
  of config.init_from) where it has them; task heads it lacks keep their random initialisation."""
  source = exp.config.init_from
  fresh = create_state(exp.model, exp.tx, exp.config, exp.shardings, rng)
  merged, new, unused = merge_pretrained(jax.device_get(fresh.params),
                                         jax.device_get(pretrained), source)
  print(f"initialised from {source}: {len(jax.tree.leaves(merged)) - len(new)} tensors loaded"
        + (f"; new: {', '.join(new)}" if new else "")
        + (f"; unused: {', '.join(unused)}" if unused else ""), file=sys.stderr)

  def fresh_optimizer(params):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=exp.tx.init(params))

  return jax.jit(fresh_optimizer, out_shardings=exp.shardings)(merged)


def make_step_fns(exp: Experiment):
  """(step(state, batch), evaluate(params, batch)), jitted. With LoRA both take the state's
  trainable tree; the frozen base (loaded here) goes in as an argument of its own, never
  donated and never differentiated."""
  cfg = exp.config
  batch_sharding = sharding.batch_sharding(exp.mesh, cfg.rules)
  replicated = sharding.replicated(exp.mesh)
  step_kw = dict(model=exp.model, tx=exp.tx, base_rng=jax.random.key(cfg.train.seed + 1),
                 accum_steps=cfg.optimizer.grad_accum_steps,
                 skip_nonfinite=cfg.train.nonfinite == "skip")
  if not cfg.lora.rank:
    step = jax.jit(functools.partial(train_step, loss_fn=exp.loss_fn, **step_kw),
                   in_shardings=(exp.shardings, batch_sharding),
                   out_shardings=(exp.shardings, replicated), donate_argnums=(0,))
    evaluate = jax.jit(functools.partial(eval_step, model=exp.model, loss_fn=exp.loss_fn),
                       in_shardings=(exp.shardings.params, batch_sharding),
                       out_shardings=replicated)
    return step, evaluate
  base = exp.base_params()
  on_base = lora_lib.loss_on_base(exp.loss_fn, cfg.lora)

  def lora_step(state, batch, frozen):
    return train_step(state, batch, loss_fn=functools.partial(on_base, base=frozen), **step_kw)

  def lora_eval(params, batch, frozen):
    return eval_step(params, batch, model=exp.model,
                     loss_fn=functools.partial(on_base, base=frozen))

  step = jax.jit(lora_step, in_shardings=(exp.shardings, batch_sharding, exp.frozen_shardings),
                 out_shardings=(exp.shardings, replicated), donate_argnums=(0,))
  evaluate = jax.jit(lora_eval, in_shardings=(exp.shardings.params, batch_sharding,
                                              exp.frozen_shardings), out_shardings=replicated)
  return (lambda state, batch: step(state, batch, base),
          lambda params, batch: evaluate(params, batch, base))


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
    from research import tasks  # pylint: disable=import-outside-toplevel
    params = exp.model_params(params)  # with LoRA, the adapters merged into the base
    params = jax.device_get(params) if jax.process_count() == 1 else params
    metrics = tasks.task_metrics(exp, params, exp.config.data.eval_split, examples,
                                 predictions_file if jax.process_index() == 0 else None)
    result.update({f"eval/{k}": v for k, v in metrics.items()})
  return result


def _progress(total: int, initial: int):
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(total=total, initial=initial, disable=jax.process_index() != 0, unit="step",
              dynamic_ncols=True, mininterval=1.0)


def train_and_evaluate(config: ExperimentConfig, workdir: str,
                       overrides: Iterable[str] = ()) -> dict[str, float]:
  """Trains (or resumes) the run in `workdir`; returns the final evaluation metrics.
  `overrides`: the keys the command line set ("model.attention"), which init_from keeps.

  One run per workdir (a second one stops at once, naming the holder); a start that fails
  before training begins leaves the workdir as it found it."""
  workdir = paths.workdir_path(workdir)  # a local path made absolute; gs://... as it is
  paths.check_bucket(workdir)  # a missing or refused bucket: one line, nothing written
  workdir_lib.check_writable(workdir)
  config = inherit_pretrained(config, overrides)  # checked before anything is written
  check_attention_runs(config)
  undo = workdir_lib.FailedStartUndo(workdir)  # notes what is there before anything is written
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lib.lock(workdir, "research.train"):
    try:
      return _start_and_train(config, workdir, undo)
    except BaseException:
      undo.undo()
      raise


def check_attention_runs(config: ExperimentConfig, platform: str | None = None) -> None:
  """model.attention=splash on devices that are not TPUs, where the kernel would really be asked
  to run (a variant it cannot express falls back to XLA with a note, and runs): ConfigError,
  before the workdir is made, rather than a Mosaic compile error at the first step."""
  m = config.model
  platform = platform or jax.devices()[0].platform
  if m.attention != "splash" or platform == "tpu":
    return
  from research import splash  # pylint: disable=import-outside-toplevel
  prefix = not config.task.name and config.objective.name in ("prefix_lm", "ul2")
  reason = splash.unsupported_reason(
      q_len=config.data.seq_len, kv_len=config.data.seq_len, num_heads=m.num_heads,
      num_kv_heads=m.resolved_kv_heads, head_dim=m.resolved_head_dim,
      causal=m.family == "decoder", window=m.attention_window, has_bias=m.position == "relative",
      has_prefix=prefix, dropout=m.dropout_rate > 0, decode=False)
  if reason is None:
    raise ConfigError(f"model.attention='splash' is a TPU kernel and these devices are "
                      f"{platform.upper()}s; use --config.model.attention=auto (the devices' "
                      "own: XLA on CPUs, cuDNN on GPUs) or xla")


def _start_and_train(config: ExperimentConfig, workdir: epath.Path,
                     undo: workdir_lib.FailedStartUndo) -> dict[str, float]:
  if config.init_from:
    copy_pretrained_tokenizer(config.init_from, workdir)
  # Another model is said as such, before the tokenizer is found not to fit it.
  # (model.vocab_size is checked against the tokenizer first, once it is loaded.)
  check_resumable(workdir, config, sections=("model", "lora"), ignore=("vocab_size",))
  # Other data than the run started with is refused before any of it is read or prepared.
  data_record = workdir_lib.check_data(workdir, config)
  exp = build_experiment(config, workdir)  # bad data is said here, with its own message
  cfg = exp.config
  check_resumable(workdir, cfg)
  warmup, steps = cfg.optimizer.warmup_steps, cfg.train.steps
  if warmup >= steps:
    last = cfg.optimizer.learning_rate * steps / (warmup + 1)
    print(f"note: optimizer.warmup_steps={warmup} is not shorter than the run's {steps} steps: "
          f"the learning rate only rises, to {last:.3g} at the last step, below the peak "
          f"optimizer.learning_rate={cfg.optimizer.learning_rate:g}; lower "
          "optimizer.warmup_steps to reach it", file=sys.stderr)
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=cfg.train.keep_checkpoints,
                                       async_save=cfg.train.async_checkpoints)
  train_iter = iter(exp.train_batches())
  step_fn, eval_fn = make_step_fns(exp)
  latest = checkpointer.latest_step()
  # Read before entering the run's mesh: restore_params builds a one-device mesh of its own.
  # (LoRA's base was loaded by make_step_fns; the state holds only what trains.)
  full_init = cfg.init_from and not cfg.lora.rank
  pretrained = pretrained_params(cfg.init_from) if full_init and latest is None else None
  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(cfg.rules):
    if latest is not None:
      state = checkpointer.restore(latest, ckpt_lib.abstract_like(exp.abstract_state,
                                                                  exp.shardings), train_iter)
      print(f"resumed from {checkpointer.directory / str(latest)}", file=sys.stderr)
    elif full_init:
      state = init_from_pretrained(exp, jax.random.key(cfg.train.seed), pretrained)
    else:
      state = create_state(exp.model, exp.tx, cfg, exp.shardings, jax.random.key(cfg.train.seed))
    if cfg.lora.rank and latest is None:
      print(f"LoRA rank {cfg.lora.rank} on {cfg.init_from}: "
            f"{lora_lib.num_bytes(state.params) / 2**20:.1f} MiB trained (adapters and any "
            f"head), {lora_lib.num_bytes(exp.frozen) / 2**20:.1f} MiB of base frozen",
            file=sys.stderr)
    if jax.process_index() == 0:  # only once the run has really started
      record_start(workdir, cfg, data_record, latest)
    undo.started()
    try:
      result = _train_loop(exp, state, train_iter, step_fn, eval_fn, checkpointer, workdir)
    finally:
      checkpointer.close()  # waits for an asynchronous save in flight, even on an error
  return result


def record_start(workdir: epath.Path, config: ExperimentConfig, data_record: dict | None,
                 latest: int | None) -> None:
  """What a run records in its workdir once it has really started: data.json, config.json
  (the previous one kept in the history when settings changed, and said) and precision.json
  ("auto" resolves per machine: said when a resume computes in another precision)."""
  if data_record is not None:
    paths.write_atomic(workdir / workdir_lib.DATA_FILE, json.dumps(data_record, indent=1))
  changes = workdir_lib.record_config(workdir, config.to_json())
  # (At or past train.steps the loop's own line says that nothing is trained.)
  if changes and latest is not None and latest < config.train.steps:
    print(f"resuming step {latest} with changed settings ({'; '.join(changes)}): the run "
          f"continues with the new values; the previous config is kept in "
          f"{workdir / workdir_lib.HISTORY_FILE}", file=sys.stderr)
  note = workdir_lib.record_precision(
      workdir, machine_lib.precision_policy(config.model.matmul_dtype,
                                            config.model.activation_dtype),
      machine_lib.summary(machine_lib.describe()), latest or 0)
  if note:
    print(note, file=sys.stderr)


class Interrupted(Exception):
  """Ctrl-C stopped a run after saving a checkpoint (exit status 130, no traceback)."""


class PreemptionWatcher:
  """Turns SIGTERM and SIGINT (Ctrl-C) into a request to checkpoint and stop after the current
  step; a second Ctrl-C stops at once.

  With several processes, JAX's preemption sync point (through orbax) makes every process stop
  at the same step; alone, the signal handler is enough.
  """

  def __init__(self):
    self.requested = False
    self.signal = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = True
    self.signal = self.signal or signum

  def should_stop(self, step: int, checkpointer: ckpt_lib.Checkpointer) -> bool:
    return self.requested or checkpointer.reached_preemption(step)

  def close(self) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}


class MetricsWindow:
  """Per-step metrics kept on device and fetched once per log interval (the only host sync)."""

  def __init__(self):
    self.pending: list[tuple[int, dict]] = []
    self.started = time.perf_counter()
    self.skipped_total = 0

  def add(self, step: int, metrics: dict) -> None:
    self.pending.append((step, metrics))

  def flush(self, checkpointer: ckpt_lib.Checkpointer, stop_on_nonfinite: bool):
    """(summed metrics, steps, seconds) of the window; raises on a non-finite step if asked."""
    fetched = jax.device_get([m for _, m in self.pending])
    steps = [s for s, _ in self.pending]
    elapsed = time.perf_counter() - self.started
    self.pending, self.started = [], time.perf_counter()
    for step, m in zip(steps, fetched):
      if m["nonfinite"] and stop_on_nonfinite:
        latest = checkpointer.latest_step()
        kept = (f"the latest checkpoint (step {latest}) is intact" if latest is not None
                else "no checkpoint had been written")
        raise FloatingPointError(
            f"non-finite loss or gradient at step {step}; stopped, {kept}. Lower the learning "
            "rate, or set --config.train.nonfinite=skip to skip such steps")
    self.skipped_total += int(sum(m["nonfinite"] for m in fetched))
    sums = None
    for m in fetched:
      sums = metrics_lib.add_sums(sums, {k: v for k, v in m.items() if k.endswith("_sum")})
    return sums, fetched, len(steps), elapsed


def _train_loop(exp: Experiment, state: TrainState, train_iter: Iterator, step_fn, eval_fn,
                checkpointer: ckpt_lib.Checkpointer, workdir: epath.Path) -> dict[str, float]:
  cfg = exp.config
  total_steps = cfg.train.steps
  start = int(jax.device_get(state.step))
  writer = metrics_lib.MetricWriter(workdir, start_step=start)  # drops records after `start`
  tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
  # Model FLOPs utilisation: analytic FLOPs of a step over the peak (measured once on CPUs).
  flops_per_step = flops_lib.training_flops_per_step(cfg, getattr(exp.data, "row_lengths", None))
  peak_flops, _ = flops_lib.peak_flops(cfg)
  schedule = learning_rate_schedule(cfg)
  stop_on_nonfinite = cfg.train.nonfinite == "stop"
  bar = _progress(total_steps, start)
  window = MetricsWindow()
  preemption = PreemptionWatcher()
  final: dict[str, float] = {}
  if start >= total_steps:
    print(f"the run is at step {start}, train.steps={total_steps}: nothing to train; "
          "evaluating the checkpoint (raise train.steps to train on)", file=sys.stderr)
    final = evaluate_split(exp, eval_fn, state.params, cfg.train.eval_batches)
  done = start
  try:
    for step in range(start, total_steps):
      batch = sharding.shard_batch(next(train_iter), exp.mesh, cfg.rules)
      state, step_metrics = step_fn(state, batch)
      done = step + 1
      window.add(done, step_metrics)
      preempted = preemption.should_stop(done, checkpointer)
      save = done % cfg.train.checkpoint_every == 0 or done == total_steps or preempted
      if done % cfg.train.log_every == 0 or save:  # a checkpoint follows only checked steps
        sums, fetched, n, elapsed = window.flush(checkpointer, stop_on_nonfinite)
        scalars = metrics_lib.summarize(sums, prefix="train/")
        scalars.update({"train/grad_norm": float(fetched[-1]["grad_norm"]),
                        "train/learning_rate": float(schedule(step)),
                        "train/skipped_steps": window.skipped_total,
                        "train/tokens_per_second": n * tokens_per_step / elapsed,
                        "train/steps_per_second": n / elapsed,
                        "train/model_flops_per_second": n * flops_per_step / elapsed,
                        "train/mfu": n * flops_per_step / elapsed / peak_flops})
        writer.write(done, scalars)
        bar.set_postfix(loss=f"{scalars.get('train/loss', float('nan')):.4f}",
                        tok_s=f"{scalars['train/tokens_per_second']:,.0f}", refresh=False)
      bar.update(1)
      if save:  # before the evaluation: a failing evaluation never costs the step's checkpoint
        checkpointer.save(done, state, train_iter, cfg.to_dict(), force=True)
      if (cfg.train.eval_every and done % cfg.train.eval_every == 0) or done == total_steps:
        final = evaluate_split(exp, eval_fn, state.params, cfg.train.eval_batches)
        writer.write(done, {k: v for k, v in final.items() if isinstance(v, (int, float))})
        bar.write(f"step {done}: " + ", ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in final.items()))
        window.started = time.perf_counter()  # evaluation time is not training throughput
      if preempted:
        checkpointer.wait()
        bar.write(f"{'interrupted' if preemption.signal == signal.SIGINT else 'preempted'}: "
                  f"checkpoint of step {done} written; rerun the same command to continue")
        if preemption.signal == signal.SIGINT:
          raise Interrupted
        break
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
    # A log write found the disk full (often filled by a checkpoint saving in the background):
    # one line naming the save that failed, or the step, and the last complete checkpoint.
    raise checkpointer.disk_full(e, done) from None
  finally:
    failing = sys.exc_info()[1]
    preemption.close()
    bar.close()
    try:
      writer.close()
    except OSError:
      if failing is None:
        raise
      # The loop's own error says what went wrong (a full disk fails the last flush too).
  return final


def saved_config(workdir: str | os.PathLike) -> dict | None:
  """The config dict a run saved in its workdir (config.json, or when that is missing the one
  in the latest checkpoint); None for a workdir that holds no run."""
  workdir = epath.Path(workdir)
  path = workdir / "config.json"
  if path.exists():
    return workdir_lib.read_json(path, "delete it and rerun: it is read back from the latest "
                                       "checkpoint, which holds the config too")
  # Only with a step folder: in a run of several processes, process 0 may already have made an
  # empty checkpoints/ while the others check, and a manager opened by some processes only
  # would wait at orbax's sync points for the others.
  folder = ckpt_lib.checkpoint_dir(workdir)
  if not folder.exists() or not any(p.name.isdigit() for p in folder.iterdir()):
    return None
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  latest = checkpointer.latest_step()
  if latest is None:
    return None
  saved = checkpointer.restore_config(latest)
  saved.pop("format_version", None)
  saved.pop(ckpt_lib.CHECKSUMS_KEY, None)
  print(f"{path} is missing; using the config saved in checkpoint step {latest}",
        file=sys.stderr)
  return saved


def load_experiment_config(workdir: str | os.PathLike) -> ExperimentConfig:
  """The resolved config a training run saved in its workdir."""
  saved = saved_config(workdir)
  if saved is None:
    paths.check_bucket(workdir)  # a missing bucket is said as such
    raise UserError(f"{epath.Path(workdir) / 'config.json'} not found: {workdir} is not a "
                    "training workdir; pass the --workdir of a run started with research.train")
  return ExperimentConfig.from_config_dict(saved)


def restore_params(workdir: str | os.PathLike, config: ExperimentConfig | None = None,
                   step: int | None = None, mesh=None) -> tuple[ExperimentConfig, nn.Module, Any]:
  """(config, model, params) of the latest (or given) checkpoint of a workdir, for inference."""
  config = config or load_experiment_config(workdir)
  mesh = mesh or sharding.make_mesh(dataclasses.replace(
      config, mesh=dataclasses.replace(config.mesh, data=1, fsdp=1, tensor=1)), jax.devices()[:1])
  model, _, _ = build_model_and_loss(config)
  tx = build_optimizer(config)
  abstract, shardings = state_shardings(model, tx, config, mesh)
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  step = step if step is not None else checkpointer.latest_step()
  if step is None:
    raise UserError(f"no checkpoint in {checkpointer.directory}; train first, or wait for the "
                    "first checkpoint to be written")
  state = checkpointer.restore(step, ckpt_lib.abstract_like(abstract, shardings))
  if not config.lora.rank:
    return config, model, state.params
  # A LoRA workdir holds its adapters; the base comes from the init_from it recorded.
  base = load_lora_base(model, config, base_shardings(model, config, mesh))
  return config, model, jax.jit(functools.partial(lora_lib.merge, cfg=config.lora))(
      base, state.params)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


_ERROR_REPORTED = threading.Event()  # the CLI printed its one 'error:' line


def _quiet_closed_loop_errors() -> None:
  """When orbax abandons a failed read or write, tensorstore's callbacks print 'RuntimeError:
  Event loop is closed' tracebacks (through sys.excepthook and sys.unraisablehook), and the
  array reads still pending are dropped with 'Exception ignored in: <coroutine ...>'
  tracebacks; the error itself is reported as one line, so these are noise. Every other
  exception is printed as before, until the CLI has reported its error and is exiting."""
  previous, previous_unraisable = sys.excepthook, sys.unraisablehook
  closed = lambda value: isinstance(value, RuntimeError) and str(value) == "Event loop is closed"

  def hook(kind, value, tb):
    if not closed(value):
      previous(kind, value, tb)

  def unraisable(info):  # tensorstore and abandoned coroutines report here
    if closed(info.exc_value) or _ERROR_REPORTED.is_set():
      return
    code = getattr(info.object, "cr_code", None)  # a coroutine dropped with its error
    if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
      return  # orbax's reads or writes of a restore or save that failed, reported as such
    previous_unraisable(info)

  sys.excepthook = hook
  sys.unraisablehook = unraisable


def run_cli(main_fn: Callable[[], Any]) -> None:
  """Runs a CLI body; bad input becomes one 'error: ...' line and exit status 2."""
  if not os.environ.get("RESEARCH_TRACEBACK"):
    _quiet_closed_loop_errors()
  try:
    main_fn()
  except (Interrupted, KeyboardInterrupt) as e:
    if os.environ.get("RESEARCH_TRACEBACK"):
      raise
    if isinstance(e, KeyboardInterrupt):
      print("interrupted", file=sys.stderr)
    sys.exit(130)
  except (UserError, FileNotFoundError, UnicodeDecodeError, FloatingPointError) as e:
    if os.environ.get("RESEARCH_TRACEBACK"):
      raise
    _ERROR_REPORTED.set()
    print(f"error: {e}", file=sys.stderr)
    if isinstance(e, ckpt_lib.DiskFullError):
      _exit_now(2)
    sys.exit(2)
  except OSError as e:
    if e.errno != errno.ENOSPC or os.environ.get("RESEARCH_TRACEBACK"):
      raise
    _ERROR_REPORTED.set()
    print(f"error: no space left on device ({e.filename or e}); free space and rerun",
          file=sys.stderr)
    _exit_now(2)


def _exit_now(status: int) -> None:
  """Exits without the interpreter's exit handlers: with the disk full, TensorBoard's and
  orbax's would only fail again, each with its traceback. The checkpointer is closed already."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access


def quiet_logs() -> None:
  """orbax and TFDS log every checkpoint step at INFO; keep the terminal for the progress bar."""
  import logging as pylogging  # pylint: disable=import-outside-toplevel
  from absl import logging  # pylint: disable=import-outside-toplevel
  if not os.environ.get("RESEARCH_VERBOSE"):
    logging.set_verbosity(logging.ERROR)
    for logger in (logging.get_absl_logger(), pylogging.getLogger("asyncio")):
      logger.addFilter(_drop_reported_records)


def _drop_reported_records(record) -> bool:
  """orbax logs a save that ran out of space from each of its threads, and asyncio each read
  of a failed restore ('exception was never retrieved'), tracebacks included; the run reports
  the failure as one 'error:' line (research/checkpoint.py), so those records go."""
  text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
  if "No space left" in text or "RESOURCE_EXHAUSTED" in text:
    return False
  if record.exc_info and "exception was never retrieved" in record.getMessage():
    frames = traceback.extract_tb(record.exc_info[2])
    return not any(f"{os.sep}orbax{os.sep}" in frame.filename for frame in frames)
  return True


def check_utf8(text: str, what: str = "--prompt") -> str:
  """`text` when it is UTF-8; else UserError naming the first bad byte (a command line's
  undecodable bytes arrive as surrogates, which no tokenizer or terminal can take)."""
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as e:
    byte = ord(text[e.start]) - 0xDC00 if 0xDC80 <= ord(text[e.start]) <= 0xDCFF else None
    shown = f"byte 0x{byte:02x}" if byte is not None else f"{text[e.start]!r}"
    raise UserError(f"{what} holds {shown} at character {e.start}, which is not UTF-8 text; "
                    "pass UTF-8 (e.g. convert with iconv -t UTF-8)") from None
  return text


def reject_positional_args(argv: list[str]) -> None:
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}; flags take the form --name=value",
          file=sys.stderr)
    sys.exit(2)


def initialize_distributed(coordinator_address: str, num_processes: int, process_id: int,
                           auto: bool = False) -> None:
  """Joins this process to a multi-process JAX runtime (one process per host).

  With --coordinator_address the processes are named explicitly (CPU tests, bare clusters);
  with --distributed JAX finds them itself (TPU pod slices, SLURM). CPUs talk through gloo.
  """
  if not coordinator_address and not auto:
    return
  # Must precede any backend use; affects only the CPU backend.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()


def main(argv) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  quiet_logs()
  reject_positional_args(argv)
  flags_ = flags.FLAGS

  def body():
    config = ExperimentConfig.from_config_dict(flags_.config)  # checked before any device work
    initialize_distributed(flags_.coordinator_address, flags_.num_processes, flags_.process_id,
                           flags_.distributed)
    train_and_evaluate(config, flags_.workdir,
                       overrides=config_flags.get_override_values(flags_["config"]))

  run_cli(body)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag or config override reported as one line (exit 2)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  check_config_flag(argv)
  try:
    rest = flags.FLAGS(argv)
    if "config" in flags.FLAGS and flags.FLAGS.config is not None:
      flags.FLAGS.config.to_dict()  # the config file loads lazily: surface its errors here
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    print(f"error: bad command-line flag: {_flag_error_text(e)} (flags: --config=FILE "
          "--workdir=DIR --config.SECTION.KEY=VALUE, where KEY is a field of research/config.py)",
          file=sys.stderr)
    sys.exit(2)
  for name in PATH_FLAGS:  # an empty path would be the current folder: never meant
    flag = flags.FLAGS[name] if name in flags.FLAGS else None
    if flag is not None and flag.default is None and flag.present and not str(
        flag.value or "").strip():
      print(f"error: --{name} is empty; pass a path", file=sys.stderr)
      sys.exit(2)
  return rest


# Flags naming a folder that a CLI reads or writes; where their default is None (no default),
# an empty value is refused (where it is "", the CLI gives "" its own meaning).
PATH_FLAGS = ("workdir", "out")


def _flag_error_text(error: BaseException) -> str:
  """absl's or ml_collections' message about a bad flag, on one line: a KeyError's quotes
  taken off (those inside kept as they are), a traceback embedded in it (a config file whose
  get_config fails on its argument) cut to its last line."""
  while len(error.args) == 1 and isinstance(error.args[0], BaseException):
    error = error.args[0]  # ml_collections wraps a KeyError in an AttributeError
  if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
    # str(KeyError) is the repr of its argument, escapes and all
    text = f"unknown config field {error.args[0]}"
  else:  # absl quotes some values with repr: their newlines and quotes come escaped
    text = str(error).replace("\\n", "\n").replace("\\'", "'")
  if "Traceback (most recent call last)" in text:
    head = text.split("Traceback (most recent call last)", 1)[0].rstrip(" :\n")
    last = [line.strip() for line in text.strip().splitlines() if line.strip()][-1]
    text = f"{head}: {last}"
  return " ".join(text.split())


def check_config_flag(argv: list[str]) -> None:
  """A --config file that does not load (syntax error, failing import, no get_config, a
  get_config that returns no ConfigDict) is one 'error:' line, exit 2, before absl reads it."""
  from research.config import load_config_file  # pylint: disable=import-outside-toplevel
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
    else:
      continue
    if not os.path.isfile(path) and ":" in path:
      path = path.split(":", 1)[0]  # --config=file.py:argument
    if not os.path.isfile(path):
      return  # absl names the missing file
    try:
      load_config_file(path)
    except ConfigError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)


def define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config()).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the tokenizer.")
  flags.DEFINE_string("coordinator_address", "", "host:port of process 0, to run as one of "
                      "--num_processes processes (jax.distributed).")
  flags.DEFINE_integer("num_processes", 1, "Processes in the run (with --coordinator_address).")
  flags.DEFINE_integer("process_id", 0, "This process's index (with --coordinator_address).")
  flags.DEFINE_bool("distributed", False, "Join a multi-process run found by JAX itself (TPU "
                    "pod slices, SLURM).")
  flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main, flags_parser=parse_flags)
