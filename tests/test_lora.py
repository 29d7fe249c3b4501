"""LoRA (research/lora.py) and init_from's pretrained sources: adapters with a zero B leave the
model as it was; the merged kernel computes what the base plus an adapter path computes, and
training's low-rank path (no merged kernel, no kernel-sized product) the merged logits and
gradients; every family trains with adapters only (scanned, rematerialised, packed); a LoRA run
from a Hugging Face folder keeps its base frozen, checkpoints adapters alone, resumes
bit-identically, and exports a merged model that imports back with the same logits; init_from
takes a GGUF file."""

import dataclasses
import functools
import json
import re
import signal
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from research import convert, hf, layers, lora, models, objectives, sharding, train
from research.checkpoint import Checkpointer
from research.config import ConfigError, LoraConfig, ModelConfig, UserError
from research.paths import REPO_ROOT
from tests.test_train import CONFIG, SHRINK, shrunk_config

HF_GPT2 = REPO_ROOT / "tests" / "fixtures" / "hf" / "gpt2"
TINY_GGUF = REPO_ROOT / "tests" / "fixtures" / "gguf" / "tiny_llama.gguf"
LORA = LoraConfig(rank=4, alpha=8.0)
FAMILIES = ("decoder", "encoder", "encoder_decoder")


def tiny_model(family: str, **fields) -> ModelConfig:
  return ModelConfig(family=family, vocab_size=48, num_layers=2, num_heads=2, embed_dim=16,
                     mlp_dim=32, max_len=16, **fields)


def inputs_for(cfg: ModelConfig, seed: int = 0) -> tuple:
  tokens = jax.random.randint(jax.random.key(seed), (2, 12), 1, cfg.vocab_size)
  return (tokens, tokens[:, ::-1]) if cfg.family == "encoder_decoder" else (tokens,)


def model_and_trees(cfg: ModelConfig, lora_cfg: LoraConfig = LORA, b_scale: float = 0.0):
  """(model, base params, trainable tree); b_scale > 0 gives B random values (a trained
  adapter) instead of its zero birth."""
  model = models.build_model(cfg)
  boxed = model.init(jax.random.key(0), *inputs_for(cfg))["params"]
  trainable = nn.unbox(lora.init_trainable(lora_cfg, [], jax.random.key(1), boxed))
  if b_scale:
    flat = traverse_util.flatten_dict(trainable)
    flat = {p: (b_scale * jax.random.normal(jax.random.key(i), v.shape) if p[-1] == lora.B
                else v) for i, (p, v) in enumerate(flat.items())}
    trainable = traverse_util.unflatten_dict(flat)
  return model, nn.unbox(boxed), trainable


def logits(model, params, cfg, seed=0):
  return model.apply({"params": params}, *inputs_for(cfg, seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_b_gives_the_base_logits_exactly(family):
  cfg = tiny_model(family)
  model, base, trainable = model_and_trees(cfg)
  adapted = {p[-2] for p in traverse_util.flatten_dict(trainable[lora.ADAPTERS])}
  expected = {"query", "key", "value", "out", "wi", "wo"}
  assert adapted == expected  # the default targets: every attention and MLP projection
  np.testing.assert_array_equal(logits(model, lora.merge(base, trainable, LORA), cfg),
                                logits(model, base, cfg))


def unmerged_logits(model, base, trainable, lora_cfg, cfg):
  """The LoRA paper's computation: each adapted projection returns x W + (alpha/r) (x A) B,
  the adapter as a path of its own beside the base kernel (flax method interception)."""
  adapters = traverse_util.flatten_dict(trainable[lora.ADAPTERS])
  scale = lora_cfg.alpha / lora_cfg.rank

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    out = next_fun(*args, **kwargs)
    if not isinstance(module, layers.Linear) or context.method_name != "__call__":
      return out
    path = tuple(module.path)
    if path + (lora.A,) not in adapters:
      return out
    a, b = adapters[path + (lora.A,)], adapters[path + (lora.B,)]
    xa = jnp.tensordot(args[0].astype(jnp.float32), a, axes=module.in_dims)
    return out + (scale * jnp.tensordot(xa, b, axes=1)).astype(out.dtype)

  with nn.intercept_methods(interceptor):
    return logits(model, base, cfg)


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_kernels_compute_what_base_plus_adapters_compute(family):
  cfg = tiny_model(family, mlp_activation="swiglu" if family == "decoder" else "gelu")
  model, base, trainable = model_and_trees(cfg, b_scale=0.3)
  merged = logits(model, lora.merge(base, trainable, LORA), cfg)
  assert not np.allclose(merged, logits(model, base, cfg), atol=1e-3)  # the adapters act
  np.testing.assert_allclose(merged, unmerged_logits(model, base, trainable, LORA, cfg),
                             rtol=1e-5, atol=1e-5)


# Unscanned; a layer pattern's scanned group with an unscanned layer after it (Gemma's shape);
# an encoder-decoder (cross-attention), in the slow suite for its time.
UNSCANNED, PATTERN, SEQ2SEQ = (
    ("decoder", dict(scan_layers=False)),
    ("decoder", dict(scan_layers=True, layer_pattern="LG", num_layers=3, local_window=4)),
    pytest.param("encoder_decoder", dict(scan_layers=True), marks=pytest.mark.slow))


def low_rank_model(family, fields):
  cfg = dataclasses.replace(tiny_model(family, mlp_activation="swiglu"), **fields)
  return (cfg, *model_and_trees(cfg, b_scale=0.3))


@pytest.mark.parametrize("family, fields", [UNSCANNED, PATTERN, SEQ2SEQ])
def test_the_low_rank_path_gives_the_merged_logits(family, fields):
  """Training's computation (lora.attach + lora.low_rank: x W + (alpha/r) (x A) B, each layer
  its own slice of the stacked adapters) gives the merged tree's logits. (~1 s unscanned, ~4 s
  with the pattern, alone on the 2 shared cores)"""
  cfg, model, base, trainable = low_rank_model(family, fields)
  merged = logits(model, lora.merge(base, trainable, LORA), cfg)
  with lora.low_rank(LORA):
    low_rank = logits(model, lora.attach(base, trainable, LORA), cfg)
  assert not np.allclose(merged, logits(model, base, cfg), atol=1e-3)  # the adapters act
  np.testing.assert_allclose(low_rank, merged, rtol=1e-5, atol=1e-6)


def merged_loss(loss_fn, lora_cfg):
  """loss_on_base's loss on the merged tree (the formulation the low-rank path replaced), with
  the same rank dropout draws."""

  def loss(model, trainable, batch, *, base, rngs=None, deterministic=True):
    salt = lora._DROPOUT_SALT  # pylint: disable=protected-access
    rng = None if deterministic else jax.random.fold_in(rngs["dropout"], salt)
    return loss_fn(model, lora.merge(base, trainable, lora_cfg, rng), batch, rngs=rngs,
                   deterministic=deterministic)

  return loss


def kernel_shapes(base, trainable) -> set[tuple[int, ...]]:
  """Every adapted kernel's shape, whole, stacked or one layer's, also with its axes flattened
  to (in, out) and (out, in) (size-1 axes dropped)."""
  flat_base = traverse_util.flatten_dict(base)
  adapters = traverse_util.flatten_dict(trainable[lora.ADAPTERS])
  shapes = set()
  for module in {p[:-1] for p in adapters}:
    kernel = flat_base[module + ("kernel",)].shape
    a, b = adapters[module + (lora.A,)].shape, adapters[module + (lora.B,)].shape
    lead = len(a) + len(b) - 2 - len(kernel)
    fan_in, fan_out = int(np.prod(a[lead:-1])), int(np.prod(b[lead + 1:]))
    for kept in range(lead + 1):
      layers_shape = kernel[lead - kept:lead]
      shapes |= {kernel[lead - kept:], layers_shape + (fan_in, fan_out),
                 layers_shape + (fan_out, fan_in)}
  return {tuple(d for d in s if d != 1) for s in shapes}


def product_shapes(hlo_text: str) -> set[tuple[int, ...]]:
  """The output shapes of a compiled program's dot instructions (size-1 axes dropped)."""
  found = re.findall(r"= \w+\[([\d,]*)\]\{[^}]*\} dot\(", hlo_text)
  return {tuple(int(d) for d in dims.split(",") if d and int(d) != 1) for dims in found}


@pytest.mark.parametrize("family, fields", [PATTERN, SEQ2SEQ])
def test_a_lora_step_has_the_merged_gradients_and_no_kernel_sized_product(family, fields):
  """The compiled gradient of loss_on_base (what train_step differentiates) gives the adapters
  the gradients of the merged formulation, rank dropout's masks included, and multiplies no
  matrix of an adapted kernel's shape: no merged A @ B and no full-size dL/dW, only rank-sized
  products beside the forward's x W. The merged formulation, compiled the same way, forms both
  (the check's own check). (~9 s alone on the 2 shared cores: two compiles)"""
  cfg, model, base, trainable = low_rank_model(family, fields)
  lora_cfg = dataclasses.replace(LORA, dropout=0.5)
  batch = {k: jnp.asarray(v) for k, v in batch_for(cfg, packed=False).items()}
  kernels = kernel_shapes(base, trainable)
  assert (4 * 12, cfg.embed_dim) not in kernels  # activations are told apart from kernels

  def compiled_grad(loss):
    grad = jax.jit(jax.grad(lambda t, b: loss(
        model, t, batch, base=b, rngs={"dropout": jax.random.key(3)},
        deterministic=False)["loss_sum"]))
    return grad.lower(trainable, base).compile()

  low_rank = compiled_grad(lora.loss_on_base(objectives.LOSSES[family], lora_cfg))
  merged = compiled_grad(merged_loss(objectives.LOSSES[family], lora_cfg))
  assert product_shapes(low_rank.as_text()) & kernels == set()
  assert product_shapes(merged.as_text()) & kernels
  flat, flat_expected = (traverse_util.flatten_dict(g(trainable, base))
                         for g in (low_rank, merged))
  assert flat.keys() == flat_expected.keys()
  # (A module whose ranks rank dropout all dropped gets zero gradients, in both.)
  assert sum(np.abs(v).max() > 0 for v in flat.values()) > len(flat) // 2
  for path, value in flat.items():
    scale = np.abs(flat_expected[path]).max()  # float32 sums in another order: ~3e-5 of it
    np.testing.assert_allclose(value, flat_expected[path], rtol=1e-4, atol=1e-4 * scale + 1e-7,
                               err_msg=path)


def test_scanned_blocks_get_an_adapter_per_layer():
  """Scanned kernels (leading layers axis) get stacked adapters; unstacked, they are the
  unscanned model's, with the same logits."""
  cfg = tiny_model("decoder", scan_layers=True)
  model, base, trainable = model_and_trees(cfg, b_scale=0.3)
  query_a = trainable[lora.ADAPTERS]["decoder"]["layers"]["self_attention"]["query"][lora.A]
  assert query_a.shape == (2, 16, 4)  # (layers, embed, rank)
  flat = lambda t: traverse_util.flatten_dict(t, sep="/")
  nested = lambda t: traverse_util.unflatten_dict(hf.unscan(flat(t), cfg), sep="/")
  plain = dataclasses.replace(cfg, scan_layers=False)
  np.testing.assert_allclose(
      logits(model, lora.merge(base, trainable, LORA), cfg),
      logits(models.build_model(plain), lora.merge(nested(base), nested(trainable), LORA), plain),
      rtol=1e-5, atol=1e-5)


def test_adapters_follow_their_kernels_logical_axes():
  cfg = tiny_model("decoder", scan_layers=True)
  model = models.build_model(cfg)
  boxed = jax.eval_shape(lambda: lora.init_trainable(
      LORA, [], jax.random.key(1), model.init(jax.random.key(0), *inputs_for(cfg))["params"]))
  attention = boxed[lora.ADAPTERS]["decoder"]["layers"]["self_attention"]
  assert attention["query"][lora.A].names == ("layers", "embed", None)
  assert attention["query"][lora.B].names == ("layers", None, "heads", "head_dim")
  assert attention["out"][lora.A].names == ("layers", "heads", "head_dim", None)
  assert attention["out"][lora.B].names == ("layers", None, "embed")
  mesh = jax.make_mesh((2, 2, 2), sharding.MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  rules = train.ExperimentConfig.from_config_dict({}).rules
  specs = sharding.param_shardings(boxed, mesh, rules)[lora.ADAPTERS]["decoder"]["layers"]
  assert specs["mlp"]["wi"][lora.A].spec == jax.sharding.PartitionSpec(None, "fsdp", None)
  assert specs["mlp"]["wi"][lora.B].spec == jax.sharding.PartitionSpec(None, None, "tensor")


def batch_for(cfg: ModelConfig, packed: bool) -> dict:
  """A fixed batch to memorise; packed: two examples per row (segment ids, positions)."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, cfg.vocab_size, (4, 12)).astype(np.int32)
  weights = np.ones((4, 12), np.float32)
  if cfg.family == "encoder_decoder":
    return {"encoder_inputs": tokens, "decoder_inputs": tokens, "targets": (tokens * 7 + 3) % 48,
            "encoder_mask": np.ones_like(tokens, bool), "weights": weights}
  batch = {"inputs": tokens, "targets": (tokens * 7 + 3) % cfg.vocab_size, "weights": weights}
  if cfg.family == "encoder":
    batch["input_mask"] = np.ones_like(tokens, bool)
  if packed:
    batch["segment_ids"] = np.repeat([[1] * 6 + [2] * 6], 4, axis=0).astype(np.int32)
    batch["positions"] = np.tile(np.r_[np.arange(6), np.arange(6)], (4, 1)).astype(np.int32)
  return batch


# One in the default suite (for its time); every family and option in the slow one.
@pytest.mark.parametrize("family, scan, remat, packed", [
    ("decoder", True, "full", True),
    pytest.param("encoder_decoder", False, "none", False, marks=pytest.mark.slow),
    pytest.param("encoder", True, "none", False, marks=pytest.mark.slow),
    pytest.param("decoder", False, "dots_saveable", False, marks=pytest.mark.slow),
    pytest.param("encoder_decoder", True, "full", False, marks=pytest.mark.slow)])
def test_every_family_trains_with_adapters_only(family, scan, remat, packed):
  """train.train_step on the adapters (the base an argument, never differentiated): the loss
  falls, the optimizer state holds the adapters' shapes only, and the base is untouched."""
  # A wide init: the frozen tied output layer of a 0.02 init could barely separate the tokens.
  cfg = tiny_model(family, scan_layers=scan, remat=remat, dropout_rate=0.1, init_std=0.5)
  lora_cfg = dataclasses.replace(LORA, dropout=0.1)
  model, base, trainable = model_and_trees(cfg, lora_cfg)
  tx = optax.adam(1e-1)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=trainable,
                           opt_state=tx.init(trainable))
  on_base = lora.loss_on_base(objectives.LOSSES[family], lora_cfg)

  @jax.jit
  def step(state, batch, base):
    return train.train_step(state, batch, model=model, tx=tx, base_rng=jax.random.key(2),
                            loss_fn=functools.partial(on_base, base=base))

  batch = batch_for(cfg, packed)
  before = jax.tree.map(np.array, base)
  losses = []
  for _ in range(50):  # an encoder's masked LM (new masks each step) falls slower
    state, metrics = step(state, batch, base)
    losses.append(float(metrics["loss_sum"] / metrics["weight_sum"]))
  assert losses[-1] < 0.8 * losses[0], losses
  shapes = {x.shape for x in jax.tree.leaves(trainable)}
  assert {x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim} == shapes
  jax.tree.map(np.testing.assert_array_equal, base, before)


def test_lora_config_errors_are_one_line():
  for raw, message in [({"lora": {"rank": 4}}, "init_from is empty"),
                       ({"lora": {"rank": -1}}, "lora.rank=-1 must be >= 0"),
                       ({"lora": {"rank": 4, "targets": " , "}, "init_from": "x"},
                        "lora.targets is empty"),
                       ({"lora": {"dropout": 1.0}}, "lora.dropout=1.0 must be in [0, 1)")]:
    with pytest.raises(ConfigError) as error:
      train.ExperimentConfig.from_config_dict(raw)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_init_from_names_every_kind_of_source(tmp_path):
  assert train.pretrained_kind("gemma3-270m") == "named"
  assert train.pretrained_kind(str(TINY_GGUF)) == "gguf"
  assert train.pretrained_kind(str(HF_GPT2)) == "hf"
  with pytest.raises(UserError, match="does not exist; pass a training workdir, a Hugging "
                     "Face model folder, a GGUF file or a named model"):
    train.pretrained_kind(str(tmp_path / "nowhere"))


def architecture(model_config: ModelConfig) -> dict:
  return {k: v for k, v in dataclasses.asdict(model_config).items()
          if k not in train.RUN_FIELDS}


def test_init_from_a_gguf_file_inherits_its_architecture(tmp_path):
  config = dataclasses.replace(shrunk_config(1), init_from=str(TINY_GGUF))
  with pytest.raises(ConfigError, match="holds a model with model.num_layers="):
    train.inherit_pretrained(config, overrides={"model.num_layers"})
  resolved = train.inherit_pretrained(config, overrides={"model.attention"})
  assert architecture(resolved.model) == architecture(convert.load_gguf(TINY_GGUF)[3].model)
  assert resolved.data.tokenizer == "hf" and resolved.init_from == str(TINY_GGUF)


@pytest.mark.slow  # ~12 s; the LoRA runs below start from a Hugging Face folder the same way
def test_a_run_from_a_gguf_file_trains_with_its_tokenizer(tmp_path, small_corpus):
  config = dataclasses.replace(shrunk_config(1, **{"data.dataset": "text_files",
                                                   "data.files": str(small_corpus)}),
                               init_from=str(TINY_GGUF))
  train.train_and_evaluate(config, tmp_path / "ft")
  saved = train.load_experiment_config(tmp_path / "ft")
  assert architecture(saved.model) == architecture(convert.load_gguf(TINY_GGUF)[3].model)
  assert (tmp_path / "ft" / "tokenizer" / "manifest.json").is_file()


# The first 40,000 characters of Tiny Shakespeare: tokenizing the whole corpus with a BPE
# tokenizer would be most of these tests' time.
SMALL_CORPUS = REPO_ROOT / "data" / "tiny_shakespeare" / "input.txt"


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "shakespeare.jsonl"
  speeches = SMALL_CORPUS.read_text(encoding="utf-8")[:40_000].split("\n\n")
  path.write_text("".join(json.dumps({"text": s}) + "\n" for s in speeches), encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, small_corpus):
  """A LoRA run of 6 steps from the GPT-2 fixture folder (and its config)."""
  workdir = tmp_path_factory.mktemp("lora") / "run"
  config = lora_config(6, small_corpus)
  train.train_and_evaluate(config, workdir)
  return workdir, config


def lora_config(steps: int, corpus):
  config = shrunk_config(steps, **{"optimizer.learning_rate": 3e-2, "data.files": str(corpus),
                                   "data.dataset": "text_files", "optimizer.warmup_steps": 0,
                                   "train.checkpoint_every": 3})
  return dataclasses.replace(config, init_from=str(HF_GPT2), lora=LORA)


def test_a_lora_run_keeps_its_base_and_checkpoints_adapters_alone(lora_run):
  workdir, _ = lora_run
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["init_from"] == str(HF_GPT2) and saved["lora"]["rank"] == 4
  # What the checkpoint holds, read from orbax's own record of its tree: the adapters and
  # their optimizer state, no base tensor.
  metadata = json.loads((workdir / "checkpoints" / "6" / "state" / "_METADATA").read_text())
  leaves = [eval(key) for key in metadata["tree_metadata"]]  # pylint: disable=eval-used
  params = [k for k in leaves if k[0] == "params"]
  optimizer = [k for k in leaves if k[0] == "opt_state" and len(k) > 4]
  assert params and all(k[1] == lora.ADAPTERS and k[-1] in (lora.A, lora.B) for k in params)
  assert optimizer and all(k[-1] in (lora.A, lora.B) for k in optimizer)
  assert len(optimizer) == 2 * len(params)  # adam's two moments, of the adapters alone
  base = hf.import_params(HF_GPT2).params
  # Every tool loads base + adapters from the workdir alone: the frozen leaves are the
  # fixture's to the bit, the adapted kernels moved.
  _, _, params = train.restore_params(workdir)
  flat, flat_base = (traverse_util.flatten_dict(jax.device_get(t)) for t in (params, base))
  for path, value in flat_base.items():
    if path[-1] == "kernel" and lora.is_target(path[:-1], LORA):
      assert not np.array_equal(flat[path], value), path
    else:
      np.testing.assert_array_equal(flat[path], value)
  losses = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = [r["train/loss"] for r in losses if "train/loss" in r]
  assert losses[-1] < losses[0]


@pytest.mark.slow  # ~25 s of two processes; the default suite resumes in process (below)
def test_a_killed_lora_run_resumes_bit_identically(lora_run, tmp_path, small_corpus):
  """The kill-and-rerun of tests/test_reliability.py on a LoRA run: SIGKILL after step 3's
  checkpoint, the same command again, the same losses and adapters as the straight run."""
  from tests import test_reliability as rel  # pylint: disable=import-outside-toplevel
  straight, _ = lora_run
  workdir = tmp_path / "killed"
  # The architecture is the fixture's: only the shrink's other flags (a model flag would ask
  # init_from's model for another shape, which is refused).
  command = [sys.executable, "-m", "research.train", f"--workdir={workdir}", f"--config={CONFIG}",
             *[f"--config.{k}={v}" for k, v in SHRINK.items() if not k.startswith("model.")],
             "--config.train.steps=6", f"--config.init_from={HF_GPT2}", "--config.lora.rank=4",
             "--config.data.dataset=text_files", f"--config.data.files={small_corpus}",
             "--config.lora.alpha=8.0", "--config.optimizer.learning_rate=0.03",
             "--config.optimizer.warmup_steps=0", "--config.train.checkpoint_every=3"]
  run = functools.partial(subprocess.Popen, command, cwd=REPO_ROOT, env=rel.env_for(8),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  proc = run()
  rel.wait_for_step(workdir, 4, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  rerun = run()
  assert rerun.wait(timeout=600) == 0, rerun.stderr.read()[-3000:]
  assert rel.logged_losses(workdir) == rel.logged_losses(straight)
  rel.assert_bit_identical(adapters_of(workdir), adapters_of(straight))


def adapters_of(workdir, step: int = 6):
  """The trainable tree of a LoRA workdir's checkpoint, as saved (restored on one device)."""
  config = train.load_experiment_config(workdir)
  model = train.build_model_and_loss(config)[0]
  mesh = sharding.make_mesh(dataclasses.replace(
      config, mesh=dataclasses.replace(config.mesh, data=1)), jax.devices()[:1])
  abstract, shardings = train.state_shardings(model, train.build_optimizer(config), config, mesh)
  state = Checkpointer(workdir, read_only=True).restore(
      step, jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         abstract, shardings))
  return jax.device_get(state.params)


def test_an_interrupted_lora_run_resumes_bit_identically(lora_run, tmp_path, small_corpus):
  """3 steps, then the same run to 6 (in this process): the straight run's adapters."""
  straight, _ = lora_run
  train.train_and_evaluate(lora_config(3, small_corpus), tmp_path / "run")
  train.train_and_evaluate(lora_config(6, small_corpus), tmp_path / "run")
  jax.tree.map(np.testing.assert_array_equal, adapters_of(tmp_path / "run"),
               adapters_of(straight))


def test_the_merged_export_imports_back_with_the_same_logits(lora_run, tmp_path):
  workdir, _ = lora_run
  config, model, params = train.restore_params(workdir)
  tokens = jnp.asarray([[5, 17, 3, 40, 22, 9]])
  # In float32, as the import computes ("auto" is bfloat16 on some CPUs).
  model = type(model)(dataclasses.replace(config.model, matmul_dtype="float32"))
  expected = model.apply({"params": params}, tokens)
  convert.export_hf(workdir, tmp_path / "hf")
  assert (tmp_path / "hf" / "tokenizer.json").is_file()
  reloaded, reparams, _, _ = convert.load_hf(tmp_path / "hf")
  np.testing.assert_allclose(reloaded.apply({"params": reparams}, tokens), expected,
                             rtol=1e-5, atol=1e-5)
  assert config.model.family == "decoder"


def test_logits_only_at_loss_positions_give_the_full_loss_and_gradients():
  """model.logits_chunk: the decoder loss with logits computed in chunks of 4 positions, only
  where a row carries loss (the last 5 of 12, one row none), equals the loss over all logits,
  and so do the gradients."""
  cfg = tiny_model("decoder", tie_embeddings=False, final_logit_softcap=30.0)
  model = models.build_model(cfg)
  params = nn.unbox(model.init(jax.random.key(0), *inputs_for(cfg))["params"])
  batch = {k: jnp.asarray(v) for k, v in batch_for(cfg, packed=True).items()}
  batch["weights"] = batch["weights"].at[:, :7].set(0.0).at[1].set(0.0)
  chunked = models.build_model(dataclasses.replace(cfg, logits_chunk=4))

  def loss(m, p):
    sums = objectives.decoder_loss(m, p, batch)
    return sums["loss_sum"], sums

  (full, full_sums), full_grads = jax.value_and_grad(loss, argnums=1, has_aux=True)(model, params)
  (part, part_sums), part_grads = jax.value_and_grad(loss, argnums=1, has_aux=True)(chunked,
                                                                                    params)
  np.testing.assert_allclose(part, full, rtol=1e-6)
  assert part_sums["correct_sum"] == full_sums["correct_sum"]
  assert part_sums["weight_sum"] == full_sums["weight_sum"] == 15.0
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6), part_grads,
               full_grads)
