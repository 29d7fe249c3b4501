"""Dropout's random bits on CPU in one pass, bit for bit the bits JAX draws.

Every `nn.Dropout` draws its mask from JAX's default generator, Threefry-2x32 (20 rounds of
add, rotate and xor over pairs of 32-bit words). On CPU, JAX lowers that hash as a loop of five
iterations of four rounds, to keep compile times short; XLA then runs each iteration as its own
pass over the whole array. Unrolled, the twenty rounds fuse into one elementwise kernel.

`register_cpu_lowering()` (run when research.layers is imported) makes JAX lower the hash
unrolled on CPU. It is the same function, so every key and mask is unchanged
(tests/test_threefry.py checks them against JAX's own lowering). Its output passes an
optimization barrier, as the loop's did, so that XLA fuses the masks' consumers as before:
without it, XLA fused the hash into the masks' consumers, and spa_eng_t5's validation loss
after 40 steps moved by 3e-4; with it, 20-step runs of all seven dropout configs (and 40 of
spa_eng_t5) logged the same losses to the bit. Other platforms keep JAX's lowerings (TPU and
GPU unroll already, or call a kernel).

`python benchmarks/dropout_bits.py` (AVX-512 Xeon, 2 cores): dropout of spa_eng_t5's
(64, 48, 1024) MLP hidden and its gradient, 50.8 -> 14.3 ms; of squad_bert's (32, 4, 256, 256)
attention probabilities, 207.5 -> 62.9 ms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p
from jax.interpreters import mlir

# Rotation distances of Threefry-2x32 (Salmon et al., "Parallel random numbers: as easy as
# 1, 2, 3", SC 2011, table 4), four rounds per group, the two groups alternating.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = np.uint32(0x1BD11BDA)  # Threefish's key-schedule constant


def _rotl(x, distance: int):
  return (x << np.uint32(distance)) | (x >> np.uint32(32 - distance))


def threefry2x32(key0, key1, count0, count1):
  """Threefry-2x32 with 20 rounds, written out: (key words, count words) -> two uint32 arrays
  of the counts' shape. The key schedule injects key words (k0, k1, k0 ^ k1 ^ parity) in turn,
  plus the injection's index, after every four rounds."""
  schedule = (key0, key1, key0 ^ key1 ^ _KEY_PARITY)
  x0, x1 = count0 + schedule[0], count1 + schedule[1]
  for injection in range(1, 6):
    for distance in _ROTATIONS[(injection - 1) % 2]:
      x0 = x0 + x1
      x1 = _rotl(x1, distance) ^ x0
    x0 = x0 + schedule[injection % 3]
    x1 = x1 + schedule[(injection + 1) % 3] + np.uint32(injection)
  return x0, x1


def _unrolled(key0, key1, count0, count1):
  shape = jnp.broadcast_shapes(key0.shape, key1.shape, count0.shape, count1.shape)
  bits = threefry2x32(*(jnp.broadcast_to(a, shape) for a in (key0, key1, count0, count1)))
  return jax.lax.optimization_barrier(bits)


def register_cpu_lowering() -> None:
  """Lower JAX's threefry2x32 primitive on CPU as the unrolled hash above (idempotent)."""
  mlir.register_lowering(threefry2x32_p, mlir.lower_fun(_unrolled, multiple_results=True),
                         platform="cpu")
