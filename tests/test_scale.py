"""Scale options: scanned layers, rematerialisation, FSDP memory, compile time, decoding."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import bench, decode, models, objectives, train
from research.config import ExperimentConfig, ModelConfig

OBJECTIVE = {"decoder": "causal_lm", "encoder": "masked_lm", "encoder_decoder": "span_corruption"}
FAMILY_OPTIONS = {  # each family with the positions and norms its configs use
    "decoder": dict(position="rope", norm="rmsnorm", mlp_activation="swiglu", use_bias=False),
    "encoder": dict(position="learned", norm_position="post", use_bias=True),
    "encoder_decoder": dict(position="relative", norm="rmsnorm", mlp_activation="relu",
                            use_bias=False),
}
B, T = 2, 12


def model_config(family: str, **overrides) -> ModelConfig:
  fields = dict(family=family, vocab_size=40, num_layers=2, num_heads=2, embed_dim=16,
                mlp_dim=32, max_len=16, **FAMILY_OPTIONS[family])
  return ModelConfig(**{**fields, **overrides})


def stack_blocks(tree):
  """Unscanned parameters (or caches) -> the scanned layout: each Stack's block_0..block_{L-1}
  stacked into one subtree on a leading layer axis."""
  if not isinstance(tree, dict):
    return tree
  blocks = sorted((k for k in tree if k.startswith("block_")), key=lambda k: int(k[6:]))
  out = {k: stack_blocks(v) for k, v in tree.items() if k not in blocks}
  if blocks:
    out[models.SCANNED_LAYERS] = jax.tree.map(lambda *xs: jnp.stack(xs), *[tree[b] for b in blocks])
  return out


def batch(family: str, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  ids = lambda: jnp.asarray(rng.integers(3, 40, (B, T)), jnp.int32)
  if family == "encoder_decoder":
    return {"encoder_inputs": ids(), "encoder_mask": jnp.ones((B, T), bool),
            "decoder_inputs": ids(), "targets": ids(), "weights": jnp.ones((B, T))}
  out = {"inputs": ids(), "targets": ids(), "weights": jnp.ones((B, T))}
  if family == "encoder":
    out["input_mask"] = jnp.ones((B, T), bool)
  return out


@functools.cache
def unscanned_params(family: str):
  """Random parameters of the unscanned model of each family, made once for all tests (numpy:
  an eager init would compile every initializer)."""
  cfg = model_config(family)
  shapes = nn.unbox(jax.eval_shape(lambda: models.build_model(cfg).init(
      jax.random.key(0), *models.dummy_inputs(cfg, T))["params"]))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), shapes)


def compiled_loss(cfg: ModelConfig, params, grads: bool = False):
  """The compiled training loss (or its value and gradient) and its value(s) on batch()."""
  model = models.build_model(cfg)
  loss_fn = objectives.LOSSES[cfg.family]
  data = batch(cfg.family)
  fn = lambda p, b: loss_fn(model, p, b)["loss_sum"]
  compiled = jax.jit(jax.value_and_grad(fn) if grads else fn).lower(params, data).compile()
  return compiled, compiled(params, data)


@pytest.mark.parametrize("family", sorted(FAMILY_OPTIONS))
def test_scanned_layers_compute_what_the_loop_computes(family):
  cfg = model_config(family, scan_layers=True)
  boxed = jax.eval_shape(lambda: models.build_model(cfg).init(
      jax.random.key(0), *models.dummy_inputs(cfg, T))["params"])
  # Same structure once restacked, and the layer axis named for the sharding rules.
  params = unscanned_params(family)
  restacked = stack_blocks(params)
  assert jax.tree.structure(restacked) == jax.tree.structure(nn.unbox(boxed))
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), restacked,
               nn.unbox(boxed))
  names = [x.names for p, x in jax.tree_util.tree_flatten_with_path(
      boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
           if models.SCANNED_LAYERS in jax.tree_util.keystr(p)]
  assert names and all(n[0] == "layers" for n in names)
  _, loss = compiled_loss(model_config(family), params)
  _, scanned_loss = compiled_loss(cfg, restacked)
  np.testing.assert_allclose(scanned_loss, loss, rtol=1e-5)


@functools.cache
def scanned_reference():
  """(compiled, (loss, gradients)) of the scanned decoder without remat."""
  return compiled_loss(model_config("decoder", scan_layers=True),
                       stack_blocks(unscanned_params("decoder")), grads=True)


@pytest.mark.parametrize("scan,remat", [(True, "full"), (False, "dots_saveable")])
def test_remat_gives_the_same_gradients(scan, remat):
  """Against the scanned model without remat (which the test above ties to the loop)."""
  reference, (loss, grads) = scanned_reference()
  params = unscanned_params("decoder")
  compiled, (remat_loss, remat_grads) = compiled_loss(
      model_config("decoder", scan_layers=scan, remat=remat),
      stack_blocks(params) if scan else params, grads=True)
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6),
               stack_blocks(remat_grads), grads)
  if scan and remat == "full":  # the blocks' forward pass runs again in the backward pass
    ratio = compiled.cost_analysis()["flops"] / reference.cost_analysis()["flops"]
    assert ratio > 1.1, ratio


def _lowered_gradient(num_layers: int, scan: bool, batch_size: int = 2):
  """The gradient of a decoder's loss, lowered (StableHLO; not compiled)."""
  cfg = model_config("decoder", num_layers=num_layers, scan_layers=scan)
  model = models.build_model(cfg)
  params = nn.unbox(jax.eval_shape(lambda: model.init(
      jax.random.key(0), *models.dummy_inputs(cfg, T))["params"]))
  data = {k: jax.ShapeDtypeStruct((batch_size, T), v.dtype) for k, v in batch("decoder").items()}
  return jax.jit(jax.grad(lambda p, b: objectives.decoder_loss(model, p, b)["loss_sum"])).lower(
      params, data)


def test_scanned_layers_make_one_program_whatever_the_depth():
  # What keeps compile time flat in depth: the scanned blocks are one loop body, so the program
  # XLA compiles is the same size at 4 and 24 layers; unscanned, it grows with them. (The
  # compile times themselves: benchmarks/scan_compile_time.py.)
  lines = {(scan, n): _lowered_gradient(n, scan).as_text().count("\n")
           for scan in (True, False) for n in (4, 24)}
  assert lines[True, 24] <= 1.01 * lines[True, 4], lines
  assert lines[False, 24] > 3 * lines[False, 4], lines


# The encoder's parameters are of the kinds the other two families have (its check is slow).
@pytest.mark.parametrize("family", ["decoder", "encoder_decoder",
                                    pytest.param("encoder", marks=pytest.mark.slow)])
def test_fsdp_shards_parameters_and_optimizer_state(family):
  """On fsdp=8, each device holds about 1/8 of the parameters and Adam moments: only the
  vectors without an 'embed' axis (norm scales, biases) are replicated."""
  cfg = ExperimentConfig.from_config_dict({
      "model": dict(family=family, vocab_size=64, num_layers=1, num_heads=4, embed_dim=64,
                    mlp_dim=256, max_len=32, **FAMILY_OPTIONS[family]),
      "objective": dict(name=OBJECTIVE[family], num_sentinels=8),
      "data": dict(seq_len=16, batch_size=8), "mesh": dict(data=1, fsdp=8, tensor=1)})
  exp = bench.synthetic_experiment(cfg, jax.devices()[:8])
  step, _ = train.make_step_fns(exp)
  data = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                      bench.synthetic_batch(cfg))
  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(cfg.rules):
    compiled = step.lower(exp.abstract_state, data).compile()
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  state_bytes = nbytes(exp.abstract_state)
  per_device = compiled.memory_analysis().argument_size_in_bytes - nbytes(data) / 8
  assert per_device <= 1.15 * state_bytes / 8, (per_device, state_bytes / 8)


@pytest.mark.parametrize("family", ["decoder", "encoder_decoder"])
def test_scanned_models_decode_with_a_kv_cache(family):
  """A scanned model (its cache scanned too) decodes what the unscanned model's full forward
  pass predicts: greedy tokens are the argmax of the logits over the generated sequence."""
  cfg = model_config(family)
  params = unscanned_params(family)
  scanned = models.build_model(dataclasses.replace(cfg, scan_layers=True))
  full = models.build_model(cfg)
  greedy = decode.SamplingConfig(temperature=0.0)
  if family == "decoder":
    prompt = np.asarray(batch(family)["inputs"])[:, :6]
    tokens = decode.generate(scanned, stack_blocks(params), prompt, 8, jax.random.key(0), greedy)
    logits = full.apply({"params": params}, jnp.asarray(tokens[:, :-1]))[:, 5:]
    # Beam search reorders the cache rows, which come second in a scanned cache (B * beams = 6
    # rows, 2 layers: reordering the wrong axis would fail).
    beams, scores, _ = decode.beam_search(scanned, stack_blocks(params), prompt, 3, 4, eos_id=1)
    assert beams.shape == (B, 3, 4) and np.isfinite(scores).all()
    new = tokens[:, 6:]
  else:
    inputs = np.asarray(batch(family)["encoder_inputs"])
    new = decode.generate_seq2seq(scanned, stack_blocks(params), inputs,
                                  np.ones(inputs.shape, bool), 8, jax.random.key(0), greedy)
    decoder_inputs = np.concatenate([np.zeros((B, 1), np.int32), new[:, :-1]], axis=1)
    logits = full.apply({"params": params}, jnp.asarray(inputs), jnp.asarray(decoder_inputs))
  np.testing.assert_array_equal(np.argmax(logits, axis=-1), new)
