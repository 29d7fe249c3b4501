"""A run that starts from a pretrained model (config.init_from): the architecture and the
tokenizer it inherits, and its first state, the pretrained parameters put into a fresh one."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Iterable

import jax
import jax.numpy as jnp
from etils import epath

from research import gguf_io, paths, tasks
from research.config import ConfigError, ExperimentConfig, UserError, validate
from research.experiment import Experiment
from research.load import merge_pretrained, pretrained_config, pretrained_kind, tokenizer_of
from research.train_state import TrainState, create_state

Array = jax.Array


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


def copy_pretrained_tokenizer(source: str, workdir: epath.Path) -> None:
  """Gives `workdir` the tokenizer of init_from's model (unless it has one): a workdir's
  tokenizer folder, or the tokenizer of a Hugging Face folder or a GGUF file's vocabulary."""
  kind = pretrained_kind(source)
  if kind == "workdir":
    tasks.copy_tokenizer(source, workdir)
    return
  target = workdir / "tokenizer"
  if target.exists():
    return
  if kind == "hf":
    tokenizer = tokenizer_of(epath.Path(source))
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
