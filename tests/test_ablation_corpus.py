"""The ablation's pretraining corpus (no held-out text in it, one shared vocabulary) and its
yardsticks (linear probe, bits per character) on fixtures whose answers are known."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import ablation_corpus as corpus_lib
from experiments import ablation_yardsticks as yardsticks
from research import models, objectives, train
from research.config import DataConfig, ExperimentConfig, ModelConfig, load_config_file
from research.data import corpora, tokenizers
from research.paths import DATA_ROOT, REPO_ROOT

ARMS = sorted(p for p in (REPO_ROOT / "experiments" / "ablation").glob("*.py"))


@pytest.fixture(scope="module")
def corpus():
  return corpus_lib.build_corpus(DATA_ROOT)


_BASE = np.uint64(1_000_003)
_INVERSE = np.uint64(pow(1_000_003, -1, 2**64))


def _powers(base: np.uint64, n: int) -> np.ndarray:
  """base**0, ..., base**(n-1) (mod 2**64)."""
  return np.concatenate([[np.uint64(1)], np.cumprod(np.full(n - 1, base, np.uint64))])


def _window_hashes(text: str, width: int) -> np.ndarray:
  """sum_j text[i+j] * BASE**j (mod 2**64) of every `width`-character substring of text, from
  prefix sums: (P[i+width] - P[i]) * BASE**-i."""
  points = np.frombuffer(text.encode("utf-32-le"), np.uint32).astype(np.uint64)
  n = len(points) - width + 1
  if n <= 0:
    return np.zeros(0, np.uint64)
  powers = _powers(_BASE, len(points))
  prefix = np.concatenate([[np.uint64(0)], np.cumsum(points * powers, dtype=np.uint64)])
  return (prefix[width:width + n] - prefix[:n]) * _powers(_INVERSE, n)


def leaked(documents: list[str], heldout: list[str]) -> list[str]:
  """The held-out texts found in the documents, by another method than the corpus builder's: a
  long text (>= MIN_SUBSTRING_CHARS) anywhere (its first and last windows looked up among the
  hashes of every window of the documents, then `in`), a short one as a whole line."""
  width = corpus_lib.MIN_SUBSTRING_CHARS
  text = "\x00".join(documents)
  known = np.sort(_window_hashes(text, width))
  lines = {line.strip() for doc in documents for line in doc.split("\n")}
  heldout = sorted({h.strip() for h in heldout})
  short = [h for h in heldout if len(h) < width and h in lines]
  long = [h for h in heldout if len(h) >= width]
  ends = np.array([_window_hashes(w, width)[0] for h in long for w in (h[:width], h[-width:])],
                  np.uint64).reshape(-1, 2)
  where = np.minimum(np.searchsorted(known, ends), len(known) - 1)
  candidates = (known[where] == ends).all(axis=1)
  return short + [h for h, c in zip(long, candidates) if c and h in text]


def test_corpus_holds_no_validation_or_test_text(corpus):
  heldout = corpus_lib.heldout_texts(DATA_ROOT)
  assert {s: len(v) > 0 for s, v in heldout.items()} == dict.fromkeys(corpus_lib.SOURCES, True)
  everything = [t for texts in heldout.values() for t in texts]
  # The pretraining validation documents are held out too (Shakespeare's grouped speeches).
  everything += corpus_lib._flat(corpus.validation)  # pylint: disable=protected-access
  train_docs = corpus_lib._flat(corpus.train)  # pylint: disable=protected-access
  assert leaked(train_docs, everything) == []
  # The check can fail: the raw training splits do share text with the held-out ones.
  raw = corpus_lib.source_texts("spa_eng", "train", DATA_ROOT)
  assert len(leaked(raw, heldout["spa_eng"])) >= 198
  assert corpus.leaks["spa_eng"] >= 198 and corpus.leaks["scitldr"] >= 3
  assert 5_000 < sum(map(len, corpus.train.values())) < 8_000  # ~2,000-character documents


def test_corpus_is_the_training_splits_only(corpus):
  sst2_train = {r["sentence"] for r in corpus_lib.records("sst2", "train", DATA_ROOT)}
  sentences = [line for doc in corpus.train["sst2"] for line in doc.split("\n")]
  assert set(sentences) <= sst2_train
  assert len(sentences) == len(set(sentences)) == len(sst2_train) - corpus.leaks["sst2"]
  text = (DATA_ROOT / "tiny_shakespeare" / "input.txt").read_text()
  boundary = int(len(text) * corpora.TRAIN_FRACTION)
  first_validation = text[boundary:boundary + 200]
  assert all(first_validation not in d for d in corpus.train["tiny_shakespeare"])
  assert any(first_validation in d for d in corpus.validation["tiny_shakespeare"])


def test_vocabulary_is_deterministic_and_fits_every_arm():
  texts = corpus_lib.source_texts("tiny_shakespeare", "train", DATA_ROOT)[:1000]
  first = corpus_lib.train_vocabulary(texts, vocab_size=600)
  second = corpus_lib.train_vocabulary(texts, vocab_size=600)
  assert first._proto == second._proto  # pylint: disable=protected-access
  for arm in ARMS:
    config = ExperimentConfig.from_config_dict(load_config_file(str(arm)))
    for token in objectives.required_special_tokens(config.objective):
      first.token_to_id(token)  # raises when the shared vocabulary lacks it


def test_overrides_read_the_written_split(tmp_path):
  train_docs = [f"training document {i}\nwith two lines" for i in range(7)]
  validation_docs = ["held out one", "held out two", "held out three"]
  corpus_lib.write_corpus(train_docs, validation_docs, tmp_path)
  (tmp_path / corpus_lib.STATS_FILE).write_text(json.dumps(
      {"train": {"documents": 7}, "validation": {"documents": 3}}))
  overrides = corpus_lib.pretrain_overrides(tmp_path)
  data = DataConfig(**{k.split(".")[1]: v for k, v in overrides.items()},
                    data_dir=str(tmp_path / "tfds"))
  assert list(corpora.load_texts(data, "train")) == train_docs
  assert list(corpora.load_texts(data, "validation")) == validation_docs


# ---------------------------------------------------------------------------------------------
# Yardsticks
# ---------------------------------------------------------------------------------------------


def test_probe_separates_separable_features():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 2, 300)
  x = rng.normal(size=(300, 16)) + 4.0 * y[:, None] * rng.normal(size=16)  # two far clusters
  result = yardsticks.probe_accuracy(x[:200], y[:200], x[200:], y[200:])
  assert result == {"accuracy": 1.0, "train_accuracy": 1.0}
  shuffled = yardsticks.probe_accuracy(x[:200], rng.permutation(y[:200]), x[200:], y[200:])
  assert shuffled["accuracy"] < 0.75  # labels unrelated to the features: near chance


def _model(family: str, vocab_size: int):
  config = ModelConfig(family=family, vocab_size=vocab_size, num_layers=1, num_heads=2,
                       embed_dim=16, mlp_dim=32, max_len=64, position="rope", norm="rmsnorm",
                       use_bias=False)
  model = models.build_model(config)
  params = model.init(jax.random.key(0), *models.dummy_inputs(config, 8))["params"]
  return model, jax.tree.map(lambda p: p + 0.0, params)  # unboxed copy


def test_bits_per_char_is_the_hand_computed_likelihood():
  texts = ["to be or", "not to be"]
  tokenizer = tokenizers.CharTokenizer.train(texts)
  model, params = _model("decoder", tokenizer.vocab_size)
  stream = np.concatenate([[tokenizer.eos_id]] + [
      np.append(tokenizer.encode(t), tokenizer.eos_id) for t in texts])
  logits = jax.jit(model.apply)({"params": params}, jnp.asarray(stream[None, :-1]))[0]
  log_probs = jax.nn.log_softmax(logits)[np.arange(len(stream) - 1), stream[1:]]
  expected = -float(log_probs.sum()) / math.log(2) / (8 + 9 + 2)  # each EOS is one character
  got = yardsticks.text_bits(model, params, tokenizer, texts, seq_len=32, prefix_lm=False)
  assert got["characters"] == 19 and got["tokens"] == len(stream) - 1
  assert got["bits_per_char"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("num_tokens,seq_len", [(2, 4), (5, 4), (6, 4), (40, 4), (41, 7)])
def test_scoring_windows_score_each_token_once(num_tokens, seq_len):
  scored = []
  for start, prefix in yardsticks.scoring_windows(num_tokens, seq_len):
    scored += [t for t in range(start + prefix, start + seq_len + 1) if t < num_tokens]
  assert scored == list(range(1, num_tokens))


@pytest.mark.parametrize("family,prefix_lm", [("decoder", False), ("decoder", True),
                                              ("encoder_decoder", False)])
def test_a_uniform_model_has_log2_vocab_bits_per_token(family, prefix_lm):
  texts = ["the quick brown fox", "jumps over", "the lazy dog"]
  tokenizer = tokenizers.CharTokenizer.train(texts)
  model, params = _model(family, tokenizer.vocab_size)
  zeros = jax.tree.map(jnp.zeros_like, params)  # tied embeddings of zero: every logit is 0
  got = yardsticks.text_bits(model, zeros, tokenizer, texts, seq_len=6, prefix_lm=prefix_lm,
                             batch_size=4)  # several windows and batches
  tokens = sum(len(t) + 1 for t in texts)
  assert got["tokens"] == tokens
  assert got["bits"] == pytest.approx(tokens * math.log2(tokenizer.vocab_size), rel=1e-5)


@pytest.mark.parametrize("family", ["decoder", "encoder", "encoder_decoder"])
def test_features_ignore_padding(family):
  texts = ["short one", "a much longer sentence than that"]
  tokenizer = tokenizers.CharTokenizer.train(texts)
  model, params = _model(family, tokenizer.vocab_size)
  together = yardsticks.sentence_features(model, params, tokenizer, texts, 64, batch_size=2)
  alone = yardsticks.sentence_features(model, params, tokenizer, texts[:1], 64, batch_size=1)
  assert together.shape == (2, 16)
  np.testing.assert_allclose(together[0], alone[0], atol=1e-5)


@pytest.mark.slow  # ~24 s: trains a workdir; the yardsticks' arithmetic is tested above
def test_yardsticks_of_a_briefly_trained_workdir(tmp_path):
  texts = corpus_lib.source_texts("tiny_shakespeare", "train", DATA_ROOT)[:400]
  out = tmp_path / "corpus"
  corpus_lib.write_corpus(texts[:360], texts[360:], out)
  (out / corpus_lib.STATS_FILE).write_text(json.dumps(
      {"train": {"documents": 360}, "validation": {"documents": 40}}))
  corpus_lib.train_vocabulary(texts, vocab_size=600).save(out / corpus_lib.TOKENIZER_DIR)
  config = load_config_file(str(REPO_ROOT / "experiments/ablation/decoder_lm.py"))
  overrides = {**corpus_lib.pretrain_overrides(out), "data.vocab_size": 600,
               "data.data_dir": str(tmp_path / "tfds"), "model.num_layers": 1,
               "model.embed_dim": 32, "model.num_heads": 2, "model.mlp_dim": 64,
               "model.max_len": 32, "data.seq_len": 32, "data.batch_size": 8, "train.steps": 2,
               "train.eval_every": 0, "train.eval_batches": 1, "train.checkpoint_every": 2,
               "optimizer.warmup_steps": 1}
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  workdir = tmp_path / "pretrain"
  corpus_lib.install_tokenizer(out, workdir)
  train.train_and_evaluate(ExperimentConfig.from_config_dict(config), str(workdir))
  assert (workdir / "tokenizer" / "sentencepiece.model").read_bytes() == (
      out / corpus_lib.TOKENIZER_DIR / "sentencepiece.model").read_bytes()  # the shared one
  probe = yardsticks.linear_probe(str(workdir), train_examples=128)
  assert 0.0 <= probe["accuracy"] <= 1.0 and probe["eval_examples"] == 872
  bits = yardsticks.bits_per_char(str(workdir))
  assert 0.5 < bits["bits_per_char"] < 20 and bits["characters"] > 1000
