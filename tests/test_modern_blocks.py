"""The modern decoder choices of the one block (Gemma 2/3, Llama 3, Qwen 2.5/3): each changes
what a fixed model computes and trains; together (a Gemma-3-shaped model) they give the same
logits scanned or not, rematerialised or not, packed or alone, and decoded through the KV cache
or in one pass; a local layer's cache holds its window and no more; the splash kernel runs them
for a TPU slice. (Parity with transformers: tests/test_convert.py's fixtures.)
"""

import dataclasses
import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from research import aot, decode, hf, models
from research.config import ExperimentConfig, ModelConfig, load_config_file
from research.paths import REPO_ROOT
from xla_flags import cli_env

# Llama's block: the base every choice is switched on over.
BASE = ModelConfig(family="decoder", vocab_size=61, num_layers=3, num_heads=4, num_kv_heads=2,
                   head_dim=8, embed_dim=32, mlp_dim=64, max_len=48, position="rope",
                   norm="rmsnorm", mlp_activation="swiglu", use_bias=False)
# Gemma 3's choices at once; 5 layers of local/local/global: one scanned repeat + 2 more.
GEMMA = dataclasses.replace(
    BASE, num_layers=5, mlp_activation="geglu", qk_norm=True, post_norms=True,
    scale_embeddings=True, norm_scale_plus_one=True, query_pre_attn_scalar=12.0,
    layer_pattern="LLG", local_window=4, local_rope_base=100.0, rope_base=1e4,
    rope_scaling="linear", rope_scaling_factor=2.0, final_logit_softcap=8.0,
    attn_logit_softcap=6.0)
TOL = dict(atol=3e-5, rtol=1e-5)

CHOICES = {
    "qk_norm": dict(qk_norm=True),
    "post_norms": dict(post_norms=True),
    "local_global": dict(layer_pattern="LG", local_window=3, local_rope_base=100.0),
    "scale_embeddings": dict(scale_embeddings=True),
    "norm_scale_plus_one": dict(norm_scale_plus_one=True),
    "query_pre_attn_scalar": dict(query_pre_attn_scalar=2.0),
    "attn_logit_softcap": dict(attn_logit_softcap=1.0),
    "final_logit_softcap": dict(final_logit_softcap=3.0),
    "rope_scaling_llama3": dict(rope_scaling="llama3", rope_scaling_factor=8.0,
                                rope_original_max_len=16),
    "qkv_bias": dict(qkv_bias=True),
}


def _tokens(seed, shape):
  return jax.random.randint(jax.random.key(seed), shape, 1, BASE.vocab_size)


def _random_params(cfg: ModelConfig, seed: int = 0, like: dict | None = None) -> dict:
  """Random parameters (norm scales near 1, the rest around 0); the paths `like` holds keep its
  values, so two configs share every parameter they both have."""
  rng = np.random.default_rng(seed)
  flat = {}
  for path, x in hf.abstract_params(cfg).items():
    if like is not None and path in like:
      flat[path] = like[path]
    else:
      offset = 1.0 if path.endswith("scale") and not cfg.norm_scale_plus_one else 0.0
      flat[path] = (offset + 0.3 * rng.normal(size=x.shape)).astype(np.float32)
  return flat


def _logits(cfg, flat, tokens, **kw):
  params = traverse_util.unflatten_dict(flat, sep="/")
  return np.asarray(jax.jit(functools.partial(models.build_model(cfg).apply, **kw))(
      {"params": params}, tokens))


@pytest.fixture(scope="module")
def base_logits():
  """The base model's parameters, a batch and its logits, computed once for every choice."""
  base, tokens = _random_params(BASE), _tokens(0, (2, 12))
  return base, tokens, _logits(BASE, base, tokens)


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_each_choice_changes_a_fixed_models_logits_and_trains(name, base_logits):
  cfg = dataclasses.replace(BASE, **CHOICES[name])
  base, tokens, logits = base_logits
  flat = _random_params(cfg, seed=1, like=base)  # the same weights, plus what the choice adds
  changed = np.abs(_logits(cfg, flat, tokens) - logits).max()
  assert changed > 1e-2, changed

  # Trains: a few Adam steps on one batch bring its next-token loss down.
  model = models.build_model(cfg)
  tx = optax.adam(1e-2)

  def loss_fn(params):
    logits = model.apply({"params": params}, tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  @jax.jit
  def train_step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  params = traverse_util.unflatten_dict(flat, sep="/")
  opt_state = tx.init(params)
  losses = []
  for _ in range(12):
    params, opt_state, loss = train_step(params, opt_state)
    losses.append(float(loss))
  assert np.isfinite(losses).all() and losses[-1] < 0.75 * losses[0], losses


def _scanned_params(cfg: ModelConfig, flat: dict) -> dict:
  """Unscanned parameters `flat` in the layout of cfg with scan_layers (the inverse of
  hf.unscan): layers/block_j stacks the blocks g * P + j of each repeat g."""
  period = len(cfg.layer_pattern)
  out = {}
  for path, x in hf.abstract_params(cfg).items():
    parts = path.split("/")
    if parts[1] == models.SCANNED_LAYERS:
      j, rest = int(parts[2].removeprefix("block_")), "/".join(parts[3:])
      out[path] = np.stack([flat[f"decoder/block_{g * period + j}/{rest}"]
                            for g in range(x.shape[0])])
    else:
      out[path] = flat[path]
  return out


def test_scanned_and_rematerialised_gemma_is_the_same_model():
  scanned = dataclasses.replace(GEMMA, scan_layers=True)
  flat = _random_params(GEMMA)
  stacked = _scanned_params(scanned, flat)
  assert stacked["decoder/layers/block_0/mlp/wi/kernel"].shape[0] == 1  # 1 repeat; 2 more
  assert "decoder/block_4/self_attention/query_norm/scale" in stacked
  assert hf.unscan(stacked, scanned).keys() == flat.keys()
  tokens = _tokens(1, (2, 16))
  plain = _logits(GEMMA, flat, tokens)
  np.testing.assert_allclose(_logits(scanned, stacked, tokens), plain, **TOL)
  remat = dataclasses.replace(scanned, remat="full")

  def grads(cfg, flat):
    model = models.build_model(cfg)
    loss = lambda p: jnp.sum(model.apply({"params": p}, tokens) ** 2) * 1e-3
    return traverse_util.flatten_dict(
        jax.jit(jax.grad(loss))(traverse_util.unflatten_dict(flat, sep="/")), sep="/")

  want, got = grads(scanned, stacked), grads(remat, stacked)
  for path in want:
    np.testing.assert_allclose(got[path], want[path], atol=1e-5, rtol=1e-4, err_msg=path)


def test_packed_rows_compute_each_sequence_alone():
  flat = _random_params(GEMMA)
  first, second = _tokens(2, (1, 9)), _tokens(3, (1, 6))
  packed = jnp.concatenate([first, second, jnp.zeros((1, 1), jnp.int32)], axis=1)  # + padding
  segments = jnp.array([[1] * 9 + [2] * 6 + [0]])
  positions = jnp.array([list(range(9)) + list(range(6)) + [0]])
  out = _logits(GEMMA, flat, packed, segment_ids=segments, positions=positions)
  np.testing.assert_allclose(out[:, :9], _logits(GEMMA, flat, first), **TOL)
  np.testing.assert_allclose(out[:, 9:15], _logits(GEMMA, flat, second), **TOL)


def _decoded(cfg, flat, prompt, mask, continuation):
  """decode.prefill, then decode.step fed `continuation`: logits (B, 1 + n, V), last cache."""
  model = models.build_model(cfg)
  params = traverse_util.unflatten_dict(flat, sep="/")
  logits, cache = jax.jit(functools.partial(decode.prefill, model))(params, prompt, mask)
  step = jax.jit(functools.partial(decode.step, model))
  out = [logits]
  for t in range(continuation.shape[1]):
    logits, cache = step(params, cache, continuation[:, t])
    out.append(logits)
  return np.stack(out, axis=1), cache


@pytest.mark.parametrize("scan", [False, True])
def test_cached_decoding_past_the_window_matches_the_full_pass(scan):
  cfg = dataclasses.replace(GEMMA, scan_layers=scan)
  flat = _random_params(GEMMA)
  if scan:
    flat = _scanned_params(cfg, flat)
  tokens = _tokens(4, (2, 20))  # 4x the local window
  lengths = np.array([7, 5])  # right-padded prompts of two lengths
  mask = np.arange(7)[None] < lengths[:, None]
  prompt = jnp.where(mask, tokens[:, :7], 0)
  full = _logits(cfg, flat, tokens)
  # Row r's prompt is its first lengths[r] tokens; the continuation follows it.
  continuation = jnp.stack([tokens[r, lengths[r]:lengths[r] + 12] for r in range(2)])
  got, cache = _decoded(cfg, flat, prompt, mask, continuation)
  for r in range(2):
    want = full[r, lengths[r] - 1:lengths[r] + 12]
    np.testing.assert_allclose(got[r], want, **TOL)
  slots = {"/".join(str(getattr(k, "key", k)) for k in path): x.shape
           for path, x in jax.tree_util.tree_leaves_with_path(cache)}
  local, global_ = "block_0", "block_2"  # (under layers/ when scanned)
  key_of = lambda block: next(s for p, s in slots.items()
                              if f"{block}/self_attention/cached_key" in p)
  assert key_of(local)[-3] == GEMMA.local_window  # (..., B, slots, K, H)
  assert key_of(global_)[-3] == GEMMA.max_len


def test_a_local_layers_cache_stays_flat_as_the_context_grows():
  """Memory of the local layers' caches is their window's, whatever max_len (the context)."""
  def cache_bytes(max_len):
    cfg = dataclasses.replace(GEMMA, max_len=max_len)
    model = models.build_model(cfg)
    shapes = jax.eval_shape(functools.partial(model.init, method=model.prefill),
                            jax.random.key(0), jnp.zeros((1, 4), jnp.int32),
                            jnp.ones((1, 4), bool))["cache"]
    flat = traverse_util.flatten_dict(shapes, sep="/")
    by_kind = {"L": 0, "G": 0}
    for path, x in flat.items():
      if "cached_" in path:
        block = int(path.split("/")[1].removeprefix("block_"))
        by_kind[cfg.layer_kind(block)] += int(np.prod(x.shape)) * x.dtype.itemsize
    return by_kind

  short, long = cache_bytes(48), cache_bytes(4096)
  assert short["L"] == long["L"] > 0  # 4 slots a local layer at any context length
  assert long["G"] == short["G"] * 4096 // 48


@pytest.mark.slow  # a CLI training run (~30 s); flags reach these fields as any other's
def test_a_config_line_switches_each_choice_on_in_a_training_run(tmp_path):
  """The decoder ablation's arms are one choice apart: the same flags train from the CLI."""
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "research.train", "--config=configs/gpt_shakespeare_char.py",
       f"--workdir={workdir}", "--config.train.steps=3", "--config.train.eval_every=0",
       "--config.train.eval_batches=1", "--config.model.num_layers=3",
       "--config.model.position=rope", "--config.model.qk_norm=True",
       "--config.model.post_norms=True", "--config.model.layer_pattern=LLG",
       "--config.model.local_window=8"],
      cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  saved = ExperimentConfig.from_config_dict(load_config_file(str(
      REPO_ROOT / "experiments/ablation/decoder_lm_local_global.py")))
  assert saved.model.layer_pattern == "LLLG"
  text = (workdir / "config.json").read_text()
  assert '"layer_pattern": "LLG"' in text and '"qk_norm": true' in text


@pytest.mark.slow  # a TPU compile; tests/test_aot.py checks each layer kind's splash window
def test_local_and_global_layers_run_splash_for_a_tpu_slice():
  """Compiled for v5e:2x2: both layer kinds' attention (the local one with its window and the
  soft-cap) run in the Pallas kernel, forward, dq and dkv."""
  raw = load_config_file(str(REPO_ROOT / "configs/gpt_shakespeare_char.py")).to_dict()
  raw["model"].update(vocab_size=512, num_layers=2, embed_dim=256, num_heads=2, num_kv_heads=1,
                      mlp_dim=512, max_len=256, position="rope", norm="rmsnorm",
                      mlp_activation="geglu", use_bias=False, qk_norm=True, post_norms=True,
                      layer_pattern="LG", local_window=128, attn_logit_softcap=50.0,
                      attention="auto")
  raw["data"].update(seq_len=256, batch_size=8)
  raw["mesh"].update(data=2, fsdp=2, tensor=1)
  config = ExperimentConfig.from_config_dict(raw)
  train = aot.compile_report(config, aot.parse_topology("v5e:2x2"),
                             programs=("train",))["programs"]["train"]
  assert train["pallas_kernel_calls"] == 3 * 2
  assert train["memory"]["fits"]


@pytest.mark.parametrize("model, message", [
    (dict(layer_pattern="LLX"), "may hold only 'L' (local) and 'G' (global)"),
    (dict(layer_pattern="LG"), "has local layers but model.local_window=0"),
    (dict(layer_pattern="LG", local_window=4, position="relative"), "use position='rope'"),
    (dict(rope_scaling="yarn"), "model.rope_scaling='yarn' is not one of"),
    (dict(rope_scaling="llama3", rope_scaling_factor=0.5), "must be >= 1"),
    (dict(final_logit_softcap=-1.0), "model.final_logit_softcap=-1.0 must be >= 0"),
])
def test_a_choice_that_cannot_run_is_one_config_error(model, message):
  from research.config import ConfigError  # pylint: disable=import-outside-toplevel
  raw = load_config_file(str(REPO_ROOT / "configs/gpt_shakespeare_char.py")).to_dict()
  raw["model"].update(model)
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    ExperimentConfig.from_config_dict(raw)
