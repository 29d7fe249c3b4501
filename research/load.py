"""Reading a model from where it is stored, for every tool: a training workdir (its saved
config and the parameters of a checkpoint, a LoRA workdir's adapters merged into their base),
a Hugging Face folder, a GGUF file or a named model. research.generate, evaluate, chat and
convert load through here, never through the trainer."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from etils import epath

from research import checkpoint as ckpt_lib
from research import gguf_io, hf, models, paths, sharding
from research import lora as lora_lib
from research import workdir as workdir_lib
from research.config import ConfigError, ExperimentConfig, ModelConfig, UserError
from research.data.tokenizers import HFTokenizer
from research.train_state import (base_shardings, build_model_and_loss, build_optimizer,
                                  init_params, state_shardings)


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


def pretrained_kind(source: str) -> str:
  """What an init_from value names: "workdir", "hf" (a Hugging Face folder), "gguf" (a GGUF
  file) or "named" (a model an installed package ships, research/gguf_io.PRETRAINED)."""
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
  Hugging Face folder, the config of its import (experiment_config)."""
  kind = pretrained_kind(source)
  if kind == "workdir":
    return load_experiment_config(source)
  if kind == "hf":
    return experiment_config(hf.import_params(source).model_config)
  # Only the metadata: the tensors are read when the parameters are.
  return experiment_config(gguf_io.model_config(gguf_io.read_gguf(
      gguf_io.resolve(source))))


def pretrained_params(source: str) -> Any:
  """The parameters of init_from's model (host arrays), whatever its kind."""
  kind = pretrained_kind(source)
  if kind == "workdir":
    return jax.device_get(restore_params(source)[2])
  if kind == "hf":
    return hf.import_params(source).params
  return gguf_io.import_gguf(source, tokenizer=False).params


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


def load_lora_base(model: nn.Module, config: ExperimentConfig, shardings: Any) -> Any:
  """The frozen base of a LoRA run, on its shards: the model's initialisation (seed
  train.seed) with every parameter init_from holds put in (a task head keeps its init; its
  trained values are in the adapters' tree)."""
  fresh = jax.jit(lambda rng: nn.unbox(init_params(model, config, rng)),
                  out_shardings=shardings)(jax.random.key(config.train.seed))
  merged, _, _ = merge_pretrained(jax.device_get(fresh), pretrained_params(config.init_from),
                                  config.init_from)
  return jax.device_put(merged, shardings)


def _count_sentinels(tokenizer) -> int:
  """How many of <extra_id_0>, <extra_id_1>, ... the tokenizer holds (T5's span sentinels)."""
  count = 0
  while count < 10_000:
    try:
      tokenizer.token_to_id(f"<extra_id_{count}>")
    except UserError:
      break
    count += 1
  return count


def experiment_config(model_config: ModelConfig, tokenizer=None,
                      tokenizer_path: str = "") -> ExperimentConfig:
  """The workdir config of an imported model: the family's pretraining objective and the
  default data (Tiny Shakespeare) read with the checkpoint's own tokenizer."""
  family = models.family_of(model_config)
  objective: dict[str, Any] = {"name": family.objective}
  if family.seq2seq:
    sentinels = _count_sentinels(tokenizer) if tokenizer is not None else 0
    objective = {"name": "span_corruption", "num_sentinels": sentinels} if sentinels else {
        "name": "prefix_lm"}
  return ExperimentConfig.from_config_dict({
      "model": dataclasses.asdict(model_config),
      # batch 8: divisible by the data axis of 1, 2, 4 or 8 devices
      "data": {"tokenizer": "hf", "tokenizer_path": tokenizer_path,
               "seq_len": min(64, model_config.max_len), "batch_size": 8},
      "objective": objective})


def tokenizer_of(directory: epath.Path):
  """The tokenizer of a Hugging Face folder (its tokenizer.json), or None where it has none."""
  text = hf.read_tokenizer_json(directory)
  return HFTokenizer(text) if text is not None else None
