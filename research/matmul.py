"""Matrix products with the precision policy (ModelConfig.matmul_dtype: operands cast, float32
accumulation) and gradient rules whose products keep row-major operands, so that XLA's CPU
backend runs them with bfloat16 operands on its fast path: the linear layers' (research.layers)
and attention's (research.attention) products, and the policy's "auto" resolved for the
platform a program is traced for. Below both modules, which each build on it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype(name: str):
  return _DTYPES[resolve_matmul_dtype(name)]


@functools.cache
def _cpu_has_native_bf16() -> bool:
  """Whether this CPU multiplies bfloat16 natively: AMX tiles (Intel, amx_bf16) or AVX-512
  bf16 dot products (AMD Zen 4/5, Intel Cooper Lake+, avx512_bf16)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("flags"):
          flags = set(line.split(":", 1)[-1].split())
          return bool(flags & {"amx_bf16", "avx512_bf16"})
  except OSError:
    pass
  return False


def target_platform() -> str:
  """The platform the program being traced will run on: that of the mesh set with
  jax.set_mesh (a TPU slice's devices when research.aot compiles for one on a CPU host), else
  the host's default backend. Decisions that depend on the hardware (the precision policy
  "auto", CPU-only layouts, fused attention kernels) follow this, not jax.default_backend()."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  return device.platform if device is not None else jax.default_backend()


def resolve_matmul_dtype(name: str, platform: str | None = None) -> str:
  """The dtype a precision-policy entry names; "auto" is "bfloat16" where bf16 products run
  natively (GPUs, TPUs, CPUs with AMX or AVX-512 bf16), "float32" elsewhere (AVX2 only: bf16
  is emulated there, and slower). Measured figures: benchmarks/README.md.
  platform: the target's (default: target_platform())."""
  if name != "auto":
    return name
  platform = platform or target_platform()
  if platform in ("gpu", "cuda", "rocm", "tpu") or (platform == "cpu" and _cpu_has_native_bf16()):
    return "bfloat16"
  return "float32"



# ---------------------------------------------------------------------------------------------
# Matmul with a precision policy and a layout-friendly gradient
# ---------------------------------------------------------------------------------------------


def _mm(a: Array, b: Array, operand_dtype) -> Array:
  return jnp.matmul(a.astype(operand_dtype), b.astype(operand_dtype),
                    preferred_element_type=jnp.float32)


def materialized(a: Array, perm: tuple[int, ...], operand_dtype) -> Array:
  """a.transpose(perm) in the operand dtype, laid out row-major in memory.

  Left to itself, XLA turns a transpose into a non-default layout of the same bytes; XLA's CPU
  backend runs a bfloat16 product with such an operand in float32 (its operand upcaster) and
  off the fast matmul path. Through a 1-D barrier the transposed order has to be materialised.
  In float32 the plain transpose is as fast (measured), and GPUs and TPUs have no such upcast,
  so there the transpose is left to XLA.
  """
  t = a.astype(operand_dtype).transpose(perm)
  if operand_dtype == jnp.float32 or target_platform() != "cpu":
    return t
  return jax.lax.optimization_barrier(t.reshape(-1)).reshape(t.shape)


def _transposed(a: Array, operand_dtype) -> Array:
  return materialized(a, (1, 0), operand_dtype)


def _swap_last(a: Array, operand_dtype) -> Array:
  return materialized(a, tuple(range(a.ndim - 2)) + (a.ndim - 1, a.ndim - 2), operand_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def batched_matmul(a: Array, b: Array, operand_dtype=jnp.float32) -> Array:
  """a (..., M, K) @ b (..., K, N) -> (..., M, N) in float32, operands cast to `operand_dtype`:
  the linear layers' (through `dense`) and attention's products. Its gradient rule multiplies
  row-major transposed copies, so that the backward products keep bfloat16 operands on a CPU."""
  return _mm(a, b, operand_dtype)


def _batched_matmul_fwd(a, b, operand_dtype):
  return _mm(a, b, operand_dtype), (a, b)


def _batched_matmul_bwd(operand_dtype, residuals, grad):
  a, b = residuals
  grad_a = _mm(grad, _swap_last(b, operand_dtype), operand_dtype)  # (M, N) @ (N, K)
  grad_b = _mm(_swap_last(a, operand_dtype), grad, operand_dtype)  # (K, M) @ (M, N)
  return grad_a.astype(a.dtype), grad_b.astype(b.dtype)


batched_matmul.defvjp(_batched_matmul_fwd, _batched_matmul_bwd)


def dense(x: Array, kernel: Array, operand_dtype=jnp.float32) -> Array:
  """x (..., C) @ kernel (C, F) -> (..., F) in float32, operands cast to `operand_dtype`.

  One (M, C) @ (C, F) batched_matmul over the flattened leading axes, for its gradient rule:
  the weight gradient is a plain (C, M) @ (M, F) product on a row-major transposed copy of the
  activations (autodiff's default lets XLA's CPU backend pick a layout off its fast path).
  """
  out = batched_matmul(x.reshape(-1, x.shape[-1]), kernel, operand_dtype)
  return out.reshape(x.shape[:-1] + (kernel.shape[-1],))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense_transposed(x: Array, weight: Array, operand_dtype=jnp.float32) -> Array:
  """x (..., C) @ weight.T for a weight stored (F, C): a tied output layer's embedding table.
  Its own gradient rule, so that every product of the three is a plain row-major one (through
  `dense` on `weight.T`, XLA folds the transposes into an orientation its CPU backend cannot run
  with bfloat16 operands).

  A few rows (decoding: one token per sequence) go the other way round, weight @ x.T: then the
  stored table is the product's row-major left operand, and only the small (F, M) result is
  transposed, instead of a copy of the whole table (Gemma's: 262k x 640) at every step. A table
  stored in float32 is multiplied in float32 there: XLA's CPU matrix-vector products are several
  times faster in float32 than in bfloat16 (benchmarks/README.md, "The output layer"), and
  casting the table would cost more than the product. (x.T is left to XLA: a materialised copy
  of it makes XLA's CPU backend refuse the bfloat16 product.)"""
  x2 = x.reshape(-1, x.shape[-1])  # (M, C)
  if 2 * x2.shape[0] <= x2.shape[1]:
    few_rows_dtype = jnp.float32 if weight.dtype == jnp.float32 else operand_dtype
    out = _mm(weight, x2.T, few_rows_dtype).T  # (F, M) -> (M, F)
  else:
    out = _mm(x2, _transposed(weight, operand_dtype), operand_dtype)
  return out.reshape(x.shape[:-1] + (weight.shape[0],))


def _dense_transposed_fwd(x, weight, operand_dtype):
  return dense_transposed(x, weight, operand_dtype), (x, weight)


def _dense_transposed_bwd(operand_dtype, residuals, grad):
  x, weight = residuals
  x2 = x.reshape(-1, x.shape[-1])  # (M, C)
  g2 = grad.reshape(-1, grad.shape[-1])  # (M, F)
  grad_x = _mm(g2, weight, operand_dtype)  # (M, F) @ (F, C)
  grad_weight = _mm(_transposed(g2, operand_dtype), x2, operand_dtype)  # (F, M) @ (M, C)
  return grad_x.reshape(x.shape).astype(x.dtype), grad_weight.astype(weight.dtype)


dense_transposed.defvjp(_dense_transposed_fwd, _dense_transposed_bwd)
