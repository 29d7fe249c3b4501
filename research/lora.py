"""LoRA (Hu et al., 2021) as a transform of the model's computation, not a flag in every layer.

A targeted kernel W (an attention or MLP projection, chosen by name in config.lora.targets) is
used as W + (alpha / r) * A @ B: A spans the kernel's input axes and the rank, B the rank and its
output axes; B is born zero, so adapters that have not trained leave the model exactly as it was.
The trainer differentiates only the trainable tree, so the base gets no gradient, no optimizer
state and no place in the checkpoint.

In training (loss_on_base) the adapters are a path of their own beside the frozen kernel:
y = x W + (alpha / r) (x A) B. `attach` puts each module's A and B next to its kernel in the
parameter tree, and a Flax method interceptor (`low_rank`) adds the low-rank term to the output
of every module that holds them; the model code never sees an adapter. So no merged kernel and
no full-size kernel gradient exists in a step: the backward pass forms dA and dB from x, x A and
dL/dy, at a few rank-sized products per projection. Inside nn.scan the adapters, stacked on the
kernels' leading "layers" axes, are sliced per layer with the rest of the "params" collection.
`merge` (W + (alpha/r) A @ B, once) gives the tree that inference and export use.

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

from research import matmul
from research.config import LoraConfig

Array = jax.Array
ADAPTERS, FULL = "adapters", "full"
A, B = "lora_a", "lora_b"
KEEP = "lora_keep"  # rank dropout's mask (*L, r), beside a module's adapters in training
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


def _rank_masks(flat_base: dict, adapters: dict, cfg: LoraConfig,
                dropout_rng: Array | None) -> dict:
  """Module path -> rank dropout's mask (*L, r) (kept ranks 1 / keep rate, dropped 0), one draw
  per layer and rank of each adapted module; {} without dropout. `flat_base`, `adapters`: the
  flat base and adapter trees. The same masks whether the adapters are merged or a path."""
  if dropout_rng is None or cfg.dropout <= 0:
    return {}
  masks = {}
  for i, module in enumerate(sorted({p[:-1] for p in adapters})):
    a, b = adapters[module + (A,)], adapters[module + (B,)]
    lead_shape = a.shape[:a.ndim + b.ndim - 2 - flat_base[module + ("kernel",)].ndim]
    kept = jax.random.bernoulli(jax.random.fold_in(dropout_rng, i), 1.0 - cfg.dropout,
                                lead_shape + (cfg.rank,))
    masks[module] = kept.astype(jnp.float32) / (1.0 - cfg.dropout)
  return masks


def merge(base: Any, trainable: Any, cfg: LoraConfig, dropout_rng: Array | None = None) -> Any:
  """The model's parameter tree: `base` with each adapted kernel W + (alpha/r) A @ B and the
  trained-in-full leaves put in (what inference and export use). dropout_rng: rank dropout."""
  flat = traverse_util.flatten_dict(base)
  adapters = traverse_util.flatten_dict(trainable.get(ADAPTERS, {}))
  masks = _rank_masks(flat, adapters, cfg, dropout_rng)
  for module in sorted({p[:-1] for p in adapters}):
    kernel = flat[module + ("kernel",)]
    update = kernel_update(adapters[module + (A,)], adapters[module + (B,)], kernel.shape,
                           cfg.alpha / cfg.rank, masks.get(module))
    flat[module + ("kernel",)] = (kernel.astype(jnp.float32) + update).astype(kernel.dtype)
  for path, leaf in traverse_util.flatten_dict(trainable.get(FULL, {})).items():
    flat[path] = leaf
  return traverse_util.unflatten_dict(flat)


def attach(base: Any, trainable: Any, cfg: LoraConfig, dropout_rng: Array | None = None) -> Any:
  """The tree a training step runs the model on (inside `low_rank`): `base` as it is, each
  adapted module's A and B (and rank dropout's mask, with dropout_rng) beside its kernel, and
  the trained-in-full leaves put in. The modules never ask for the extra leaves; nn.scan slices
  them per layer along with the kernels, so the interceptor sees one layer's adapters."""
  flat = traverse_util.flatten_dict(base)
  adapters = traverse_util.flatten_dict(trainable.get(ADAPTERS, {}))
  for path, leaf in adapters.items():
    flat[path] = leaf
  for module, mask in _rank_masks(flat, adapters, cfg, dropout_rng).items():
    flat[module + (KEEP,)] = mask
  for path, leaf in traverse_util.flatten_dict(trainable.get(FULL, {})).items():
    flat[path] = leaf
  return traverse_util.unflatten_dict(flat)


def low_rank(cfg: LoraConfig):
  """A context in which every module whose parameters hold adapters (`attach`) returns its own
  output plus (alpha/r) (x A) B: x (..., *in), A (*in, r), B (r, *out), one layer's. The two
  products take the module's precision policy (model.matmul_dtype operands, float32
  accumulation, as its own product); the sum is formed in float32 and cast to the output's
  dtype."""
  scale = cfg.alpha / cfg.rank

  def add_low_rank(next_fun, args, kwargs, context):
    module = context.module
    y = next_fun(*args, **kwargs)
    if (context.method_name != "__call__" or module.scope is None
        or not module.has_variable("params", A)):
      return y
    a, b = module.get_variable("params", A), module.get_variable("params", B)
    kernel = module.get_variable("params", "kernel")
    if a.ndim + b.ndim - 2 != kernel.ndim:
      raise ValueError(f"the adapters of {'/'.join(module.path)} ({a.shape}, {b.shape}) do not "
                       f"fit its kernel {kernel.shape}: leading layer axes left unsliced?")
    x, in_ndim, rank = args[0], a.ndim - 1, a.shape[-1]
    operand = matmul.dtype(module.config.matmul_dtype)
    x2 = x.reshape(x.shape[:x.ndim - in_ndim] + (-1,))  # (..., C)
    xa = matmul.dense(x2, a.reshape(-1, rank), operand) * scale  # (..., r) float32
    if module.has_variable("params", KEEP):
      xa = xa * module.get_variable("params", KEEP)
    update = matmul.dense(xa, b.reshape(rank, -1), operand)  # (..., F)
    return (y.astype(jnp.float32) + update.reshape(y.shape)).astype(y.dtype)

  return nn.intercept_methods(add_low_rank)


# A salt folded into the step's dropout key for rank dropout, so its draws are not the model's.
_DROPOUT_SALT = 0x10_4A


def loss_on_base(loss_fn, cfg: LoraConfig):
  """`loss_fn(model, params, batch, ...)` as a function of the trainable tree, the base given as
  `base=` (a jit argument, never a constant): what train_step differentiates. The adapters run
  as a low-rank path beside the frozen kernels (`attach`, `low_rank`), never merged."""

  def loss(model, trainable, batch, *, base, rngs=None, deterministic=True):
    rng = None
    if not deterministic and cfg.dropout > 0 and rngs and "dropout" in rngs:
      rng = jax.random.fold_in(rngs["dropout"], _DROPOUT_SALT)
    with low_rank(cfg):
      return loss_fn(model, attach(base, trainable, cfg, rng), batch, rngs=rngs,
                     deterministic=deterministic)

  return loss


def num_bytes(tree: Any) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
