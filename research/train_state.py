"""The training state and what builds it: the model and loss of a config, the optimizer and
its schedule, parameters born sharded on the mesh (or with LoRA, the adapters beside a frozen
base). What a run trains and what a tool restores from a checkpoint are both this state."""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from research import lora as lora_lib
from research import models, objectives, sharding, tasks
from research.config import ExperimentConfig

Array = jax.Array


@struct.dataclass
class TrainState:
  step: Array
  params: Any
  opt_state: Any


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


def state_initializer(model, tx, config: ExperimentConfig,
                      shardings: TrainState) -> Callable[[Array], TrainState]:
  """init(rng) -> a fresh state, parameters and optimizer state initialised directly on their
  shards; compiled once for every key it is called with (research/multiseed.py's seeds)."""

  def init(rng):
    params = nn.unbox(init_trainable(model, config, rng))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  return jax.jit(init, out_shardings=shardings)


def create_state(model, tx, config: ExperimentConfig, shardings: TrainState, rng) -> TrainState:
  """Initialises parameters and optimizer state directly on their shards."""
  return state_initializer(model, tx, config, shardings)(rng)


def build_model_and_loss(config: ExperimentConfig, tokenizer=None):
  """(model, loss function, batch transform or None) of a pretraining objective or a task."""
  if config.task.name:
    return tasks.build_model(config), tasks.loss_fn(config), None
  transform = None
  if tokenizer is not None:
    transform = objectives.BatchTransform(config.objective, config.model.family, tokenizer)
  return models.build_model(config.model), objectives.LOSSES[config.model.family], transform
