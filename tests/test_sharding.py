"""The sharded train step: any mesh layout gives the single-device result."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding

from research import objectives, sharding, train
from research.config import ConfigError, ExperimentConfig, MeshConfig

# fp32 all-reduces sum in a different order than one device: losses agree to rounding level.
TOLERANCE = dict(rtol=2e-5, atol=2e-6)
# Adam divides by sqrt(v): where a gradient is near zero, rounding-level gradient differences
# become parameter differences of a few 1e-3 of one update (lr=1e-2 here; the largest seen was
# 2.9e-5, on an embedding row the masked-LM loss barely touches), hence atol=5e-5.
PARAM_TOLERANCE = dict(rtol=2e-5, atol=5e-5)


OBJECTIVE = {"decoder": "causal_lm", "encoder": "masked_lm", "encoder_decoder": "span_corruption"}


def small_config(mesh=(1, 1, 1), family="decoder", **train_overrides) -> ExperimentConfig:
  # No biases: the key projection's bias has an exactly-zero gradient (softmax ignores it), so
  # Adam turns its rounding noise into updates that differ between layouts by design.
  return ExperimentConfig.from_config_dict({
      "model": dict(family=family, vocab_size=64, num_layers=1, num_heads=4, embed_dim=32,
                    mlp_dim=64, max_len=16, dropout_rate=0.1, use_bias=False),
      "objective": dict(name=OBJECTIVE[family], num_sentinels=8),
      "data": dict(seq_len=16, batch_size=8),
      "optimizer": dict(learning_rate=1e-2, warmup_steps=0, **train_overrides),
      "train": dict(steps=10),
      "mesh": dict(zip(("data", "fsdp", "tensor"), mesh)),
  })


def run_steps(config: ExperimentConfig, batches, devices):
  mesh = sharding.make_mesh(config, devices)
  # The production model, loss, optimizer, shardings and step wiring (jit, shardings, donation,
  # dropout key) of research.train; only the data is made here.
  model, loss_fn, _ = train.build_model_and_loss(config)
  tx = train.build_optimizer(config)
  abstract, shardings = train.state_shardings(model, tx, config, mesh)
  exp = train.Experiment(config, mesh, model, tx, abstract, shardings, data=None,
                         transform=None, loss_fn=loss_fn)
  step, _ = train.make_step_fns(exp)
  losses = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(config.rules):
    state = train.create_state(model, tx, config, shardings, jax.random.key(0))
    for batch in batches:
      state, metrics = step(state, sharding.shard_batch(batch, mesh, config.rules))
      losses.append(float(metrics["loss_sum"] / metrics["weight_sum"]))
  return losses, jax.device_get(state.params), state


def make_batches(family="decoder", n=2, batch=8, seq=16, vocab=64):
  """LM batches of random tokens, transformed by the family's objective (vocab: 8 specials,
  then ordinary tokens; sentinels 56..63)."""
  rng = np.random.default_rng(0)
  info = objectives.TokenInfo(vocab_size=vocab, pad_id=0, eos_id=1, special_ids=tuple(range(8)),
                              mask_id=3, sentinel_ids=tuple(range(56, 64)))
  transform = objectives.TRANSFORMS[(OBJECTIVE[family], family)]
  out = []
  for _ in range(n):
    tokens = rng.integers(8, 56, (batch, seq + 1)).astype(np.int32)
    lm = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "weights": np.ones((batch, seq), np.float32)}
    out.append(transform(lm, rng, info, small_config(family=family).objective))
  return out


_single_device_runs = {}


def single_device_run(family):
  if family not in _single_device_runs:
    _single_device_runs[family] = run_steps(small_config(family=family), make_batches(family),
                                            jax.devices()[:1])
  return _single_device_runs[family]


# Every family on the mesh with all three axes in the default suite; the other meshes (slow:
# they keep the suite under 15 minutes) run with `pytest -m slow`.
@pytest.mark.parametrize("family, mesh", [
    ("decoder", (2, 2, 2)), pytest.param("decoder", (1, 2, 4), marks=pytest.mark.slow),
    pytest.param("decoder", (8, 1, 1), marks=pytest.mark.slow),
    ("encoder", (2, 2, 2)), pytest.param("encoder", (1, 2, 4), marks=pytest.mark.slow),
    ("encoder_decoder", (2, 2, 2)),
    pytest.param("encoder_decoder", (1, 2, 4), marks=pytest.mark.slow),
])
def test_sharded_steps_match_single_device(family, mesh):
  assert len(jax.devices()) == 8
  losses, params, state = run_steps(small_config(mesh, family), make_batches(family),
                                    jax.devices())
  ref_losses, ref_params, _ = single_device_run(family)
  np.testing.assert_allclose(losses, ref_losses, **TOLERANCE)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **PARAM_TOLERANCE), params,
               ref_params)
  # The parameters really are spread over the mesh as the rules say.
  kernel = next(x for path, x in jax.tree_util.tree_leaves_with_path(state.params)
                if "'wi'" in jax.tree_util.keystr(path))  # an MLP input kernel (embed, mlp)
  assert isinstance(kernel.sharding, NamedSharding)
  if mesh[1] * mesh[2] > 1:
    assert kernel.addressable_shards[0].data.size < kernel.size


def test_gradient_accumulation_matches_one_big_batch():
  # Dropout masks differ per microbatch, so compare without dropout on both sides.
  no_drop = lambda c: dataclasses.replace(c, model=dataclasses.replace(c.model, dropout_rate=0.0))
  base = no_drop(small_config())
  accum = no_drop(small_config(grad_accum_steps=4))
  l1, p1, _ = run_steps(base, make_batches(), jax.devices()[:1])
  l2, p2, _ = run_steps(accum, make_batches(), jax.devices()[:1])
  np.testing.assert_allclose(l1, l2, **TOLERANCE)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **PARAM_TOLERANCE), p1, p2)


def test_mesh_that_does_not_match_the_devices_is_refused():
  with pytest.raises(ConfigError, match="needs 27 devices but 8 are available"):
    sharding.mesh_shape(MeshConfig(data=3, fsdp=3, tensor=3), 8)
  with pytest.raises(ConfigError, match="not divisible by the data x fsdp"):
    config = small_config(mesh=(-1, 1, 1))
    sharding.make_mesh(dataclasses.replace(
        config, data=dataclasses.replace(config.data, batch_size=6)), jax.devices())
