"""LoRA (Hu et al., 2021) as a transform of the parameter tree, not a flag in every layer.

A targeted kernel W (an attention or MLP projection, chosen by name in config.lora.targets) is
used as W + (alpha / r) * A @ B: A spans the kernel's input axes and the rank, B the rank and its
output axes; B is born zero, so adapters that have not trained leave the model exactly as it was.
The model code never sees an adapter: the loss merges the adapters into the base tree and the
trainer differentiates only the trainable tree, so the base gets no gradient, no optimizer state
and no place in the checkpoint. The merged tree is also what inference and export use.

The trainable tree:
  {"adapters": {<module path as nested dicts>: {"lora_a": A, "lora_b": B}},
   "full": {<nested dicts>: leaf}}  # trained in full: the leaves the pretrained model lacks
                                    # (a task's head), which a frozen random init would waste.

Kernels of scanned blocks carry leading "layers" axes (one kernel per layer, stacked); their
adapters carry the same leading axes, so each layer has its own. Adapters follow their base's
logical axes: A gets the kernel's input axes and None, B None and its output axes.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from research.config import LoraConfig

Array = jax.Array
ADAPTERS, FULL = "adapters", "full"
A, B = "lora_a", "lora_b"
_LAYERS = "layers"  # the logical name of a scanned stack's leading axis


def _targets(cfg: LoraConfig) -> list[str]:
  return [t.strip() for t in cfg.targets.split(",") if t.strip()]


def is_target(module_path: tuple[str, ...], cfg: LoraConfig) -> bool:
  """Whether the module at `module_path` (its kernel's path without "kernel") gets an adapter."""
  joined = "/".join(module_path)
  return any(fnmatch.fnmatchcase(joined if "/" in t else module_path[-1], t)
             for t in _targets(cfg))


def _split_axes(names: tuple) -> tuple[int, int]:
  """(leading layer axes, input axes) of a kernel from its logical names. A projection maps
  the model width to something (query, key, value, wi: ('embed', ...) -> one input axis) or
  something to the model width (out: (heads, head_dim, 'embed'), wo: ('mlp', 'embed') -> every
  axis but the last)."""
  lead = 0
  while lead < len(names) and names[lead] == _LAYERS:
    lead += 1
  rest = len(names) - lead
  return lead, 1 if names[lead] == "embed" or rest == 2 else rest - 1


def target_paths(boxed_params: Any, cfg: LoraConfig) -> dict[tuple[str, ...], tuple[int, int]]:
  """Module path -> (leading layer axes, input axes) of every kernel that gets an adapter.
  `boxed_params`: the model's (abstract) parameters with their logical names."""
  flat = traverse_util.flatten_dict(boxed_params)
  found = {}
  for path, leaf in flat.items():
    if path[-1] != "kernel" or not is_target(path[:-1], cfg):
      continue
    names = tuple(leaf.names) if isinstance(leaf, nn.LogicallyPartitioned) else ()
    if len(names) < 2:
      continue
    found[path[:-1]] = _split_axes(names)
  return found


def head_paths(model_params: Any, language_model_params: Any) -> list[tuple[str, ...]]:
  """Paths of the leaves a task model has and its family's language model lacks (a classifier,
  a span head): trained in full, since the pretrained model has no values for them."""
  known = set(traverse_util.flatten_dict(language_model_params))
  return sorted(p for p in traverse_util.flatten_dict(model_params) if p not in known)


def init_trainable(cfg: LoraConfig, full_paths: Iterable[tuple[str, ...]], rng: Array,
                   boxed_params: Any) -> Any:
  """The trainable tree, boxed with logical names (for shardings), from the model's boxed
  parameters: A ~ N(0, 1/fan_in) (the update's scale stays alpha / r whatever the width), B = 0,
  and the `full_paths` leaves as the model's initialisation made them."""
  flat = traverse_util.flatten_dict(boxed_params)
  adapters = {}
  for i, (module, (lead, in_dims)) in enumerate(sorted(target_paths(boxed_params, cfg).items())):
    kernel = flat[module + ("kernel",)]
    names, value = tuple(kernel.names), kernel.value
    lead_shape, in_shape = value.shape[:lead], value.shape[lead:lead + in_dims]
    out_shape = value.shape[lead + in_dims:]
    fan_in = int(np.prod(in_shape))
    a = jax.random.normal(jax.random.fold_in(rng, i), lead_shape + in_shape + (cfg.rank,),
                          value.dtype) * fan_in ** -0.5
    b = jnp.zeros(lead_shape + (cfg.rank,) + out_shape, value.dtype)
    in_names, out_names = names[:lead + in_dims], names[lead + in_dims:]
    adapters[module + (A,)] = nn.LogicallyPartitioned(a, in_names + (None,))
    adapters[module + (B,)] = nn.LogicallyPartitioned(b, names[:lead] + (None,) + out_names)
  trainable = {ADAPTERS: traverse_util.unflatten_dict(adapters)}
  if full_paths:  # (no empty subtree: a checkpoint need not hold one)
    trainable[FULL] = traverse_util.unflatten_dict({p: flat[p] for p in full_paths})
  return trainable


def kernel_update(a: Array, b: Array, kernel_shape: tuple[int, ...], scale: float,
                  keep: Array | None = None) -> Array:
  """scale * A @ B in the kernel's shape (float32), per leading layer: A (*L, *in, r),
  B (*L, r, *out). `keep` (*L, r): rank dropout's mask, already divided by the keep rate."""
  lead = a.ndim + b.ndim - 2 - len(kernel_shape)
  rank = a.shape[-1]
  a2 = a.astype(jnp.float32).reshape(kernel_shape[:lead] + (-1, rank))
  b2 = b.astype(jnp.float32).reshape(kernel_shape[:lead] + (rank, -1))
  if keep is not None:
    a2 = a2 * keep[..., None, :]
  return (scale * jnp.matmul(a2, b2)).reshape(kernel_shape)


def merge(base: Any, trainable: Any, cfg: LoraConfig, dropout_rng: Array | None = None) -> Any:
  """The model's parameter tree: `base` with each adapted kernel W + (alpha/r) A @ B and the
  trained-in-full leaves put in. dropout_rng: rank dropout (training only)."""
  flat = traverse_util.flatten_dict(base)
  adapters = traverse_util.flatten_dict(trainable.get(ADAPTERS, {}))
  scale = cfg.alpha / cfg.rank
  modules = sorted({p[:-1] for p in adapters})
  for i, module in enumerate(modules):
    a, b = adapters[module + (A,)], adapters[module + (B,)]
    kernel = flat[module + ("kernel",)]
    keep = None
    if dropout_rng is not None and cfg.dropout > 0:
      lead_shape = a.shape[:a.ndim + b.ndim - 2 - kernel.ndim]
      kept = jax.random.bernoulli(jax.random.fold_in(dropout_rng, i), 1.0 - cfg.dropout,
                                  lead_shape + (cfg.rank,))
      keep = kept.astype(jnp.float32) / (1.0 - cfg.dropout)
    update = kernel_update(a, b, kernel.shape, scale, keep)
    flat[module + ("kernel",)] = (kernel.astype(jnp.float32) + update).astype(kernel.dtype)
  for path, leaf in traverse_util.flatten_dict(trainable.get(FULL, {})).items():
    flat[path] = leaf
  return traverse_util.unflatten_dict(flat)


# A salt folded into the step's dropout key for rank dropout, so its draws are not the model's.
_DROPOUT_SALT = 0x10_4A


def loss_on_base(loss_fn, cfg: LoraConfig):
  """`loss_fn(model, params, batch, ...)` as a function of the trainable tree, the base given as
  `base=` (a jit argument, never a constant): what train_step differentiates."""

  def loss(model, trainable, batch, *, base, rngs=None, deterministic=True):
    rng = None
    if not deterministic and cfg.dropout > 0 and rngs and "dropout" in rngs:
      rng = jax.random.fold_in(rngs["dropout"], _DROPOUT_SALT)
    return loss_fn(model, merge(base, trainable, cfg, rng), batch, rngs=rngs,
                   deterministic=deterministic)

  return loss


def num_bytes(tree: Any) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
