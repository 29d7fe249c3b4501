"""Device mesh, logical-axis rules and the shardings of parameters, optimizer state and batches."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from research.config import ConfigError, ExperimentConfig, MeshConfig

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(mesh_cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
  """Resolves -1 entries and checks the product against the devices present."""
  sizes = [mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor]
  if sizes.count(-1) > 1:
    raise ConfigError(f"mesh {tuple(sizes)} has more than one -1; at most one axis may take "
                      "the remaining devices")
  if any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"mesh {tuple(sizes)} has an invalid axis size; use positive sizes or -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(f"mesh {tuple(sizes)} cannot use {num_devices} devices: {num_devices} is "
                        f"not divisible by {known}; change --config.mesh.*")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f"mesh (data, fsdp, tensor) = {tuple(sizes)} needs {math.prod(sizes)} "
                      f"devices but {num_devices} are available; set --config.mesh.data=-1 or "
                      "sizes whose product is the device count")
  return tuple(sizes)


def make_mesh(config: ExperimentConfig, devices=None) -> Mesh:
  """The ('data', 'fsdp', 'tensor') mesh over `devices` (default: all of them).

  Devices of several TPU slices (multislice; `slice_index` differs) are laid out so that only
  the data axis (or, if it is 1, fsdp) crosses the slower network between slices.
  """
  devices = devices if devices is not None else jax.devices()
  shape = mesh_shape(config.mesh, len(devices))
  data_ways = shape[0] * shape[1]
  if config.data.batch_size % data_ways:
    raise ConfigError(f"data.batch_size={config.data.batch_size} is not divisible by the "
                      f"data x fsdp mesh axes ({data_ways}); change the batch size or the mesh")
  axis_types = (AxisType.Auto,) * 3  # Linen's logical partitioning needs Auto axes
  # (Only TPU slices: CPU devices of several processes report each process as a slice.)
  num_slices = (len({getattr(d, "slice_index", 0) for d in devices})
                if devices[0].platform == "tpu" else 1)
  if num_slices == 1:
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  across = next((i for i in (0, 1) if shape[i] % num_slices == 0), None)
  if across is None:
    raise ConfigError(f"mesh (data, fsdp, tensor) = {shape} over {num_slices} slices: neither "
                      f"mesh.data nor mesh.fsdp is divisible by {num_slices}; make one of them so")
  per_slice = list(shape)
  per_slice[across] //= num_slices
  between = [1, 1, 1]
  between[across] = num_slices
  grid = mesh_utils.create_hybrid_device_mesh(per_slice, between, devices)
  return Mesh(grid, MESH_AXES, axis_types=axis_types)


def fit_spec(mesh_axes, shape, mesh_shape: dict) -> P:
  """Drops the mesh axes of a dimension they do not divide (e.g. 2 heads over tensor=4, a
  69-token vocabulary over tensor=2): that dimension is then replicated, not refused."""
  fitted = []
  for axes, size in zip(tuple(mesh_axes) + (None,) * (len(shape) - len(mesh_axes)), shape):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    ways = math.prod(mesh_shape[a] for a in names)
    fitted.append(axes if ways > 1 and size % ways == 0 else None)
  return P(*fitted)


def param_shardings(boxed_params: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for a tree of (abstract) parameters boxed with logical axis names."""

  def one(leaf):
    names = leaf.names if isinstance(leaf, nn.LogicallyPartitioned) else ()
    value = leaf.value if isinstance(leaf, nn.LogicallyPartitioned) else leaf
    mesh_axes = nn.logical_to_mesh_axes(names, rules) if names else ()
    return NamedSharding(mesh, fit_spec(mesh_axes, value.shape, dict(mesh.shape)))

  return jax.tree.map(one, boxed_params,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
  """Leading (batch) axis split over the data-parallel mesh axes, the rest replicated."""
  spec = nn.logical_to_mesh_axes(("batch",), rules)
  return NamedSharding(mesh, P(*spec))


def shard_batch(local_batch: dict[str, np.ndarray], mesh: Mesh, rules) -> dict[str, jax.Array]:
  """Assembles each process's share of the batch into global arrays sharded over the mesh."""
  sharding = batch_sharding(mesh, rules)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
