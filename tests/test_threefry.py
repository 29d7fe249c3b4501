"""research/threefry.py: the unrolled CPU lowering of JAX's Threefry-2x32 gives the very bits
JAX's own lowering gives, so dropout masks, and every result trained with them, are unchanged."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32
from xla_flags import cli_env

from research import layers, threefry
from research.config import ModelConfig

# Known-answer vectors of Threefry-2x32-20 (Random123's kat_vectors): key, counter -> output.
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6b200159, 0x99ba4efe)),
    ((0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff), (0x1cb996fc, 0xbb002be7)),
    ((0x13198a2e, 0x03707344), (0x243f6a88, 0x85a308d3), (0xc4923a9c, 0x483df7a0)),
]

# The draws compared: run in this process (the lowering registered), and by a Python that never
# imports research (JAX's stock lowering).
DRAWS = """
import flax.linen as nn, jax, jax.numpy as jnp, numpy as np

def draws():
  key = jax.random.key(7)
  bits = jax.jit(lambda k: jax.random.bits(k, (3, 1001), jnp.uint32))(key)
  mask = jax.jit(lambda k: nn.Dropout(0.1, deterministic=False).apply(
      {}, jnp.ones((2, 4, 24, 24)), rngs={"dropout": k}))(key) > 0
  keys = jax.random.key_data(jax.jit(lambda k: jax.random.split(k, 5))(key))
  return {"bits": np.asarray(bits), "mask": np.asarray(mask), "keys": np.asarray(keys)}
"""


@pytest.mark.parametrize("key,count,expected", KNOWN_ANSWERS)
def test_the_hash_gives_the_known_answers(key, count, expected):
  as_words = lambda pair: [jnp.uint32(w) for w in pair]
  assert [int(w) for w in threefry.threefry2x32(*as_words(key), *as_words(count))] == [
      *expected]
  # The same through JAX's primitive, which this CPU now lowers with the function above.
  out = jax.jit(threefry_2x32)(jnp.array(key, jnp.uint32), jnp.array(count, jnp.uint32))
  assert [int(w) for w in out] == [*expected]


def test_a_blocks_dropout_lowers_without_jaxs_loop():
  """Importing research.layers registers the lowering, so every model's dropout uses it."""
  cfg = ModelConfig(vocab_size=50, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32,
                    max_len=8, dropout_rate=0.1)
  mlp, x = layers.Mlp(cfg), jnp.ones((2, 3, 16))
  params = mlp.init(jax.random.key(0), x)
  train_forward = jax.jit(
      lambda p, key: mlp.apply(p, x, deterministic=False, rngs={"dropout": key}))
  text = train_forward.lower(params, jax.random.key(1)).as_text()
  assert "stablehlo.while" not in text  # JAX's own CPU lowering loops five times
  assert text.count("stablehlo.optimization_barrier") >= 1  # the unrolled hash's output


def test_bits_masks_and_keys_equal_jax_stock_lowering(tmp_path):
  path = tmp_path / "stock.npz"
  save = DRAWS + "import sys\nnp.savez(sys.argv[1], **draws())\n"
  subprocess.run([sys.executable, "-c", save, str(path)], env=cli_env(), check=True,
                 timeout=300)
  stock = np.load(path)
  namespace = {}
  exec(DRAWS, namespace)  # pylint: disable=exec-used
  ours = namespace["draws"]()
  for name in ("bits", "mask", "keys"):
    np.testing.assert_array_equal(ours[name], stock[name], err_msg=name)
  assert 0.85 < ours["mask"].mean() < 0.95  # the draws are not degenerate
