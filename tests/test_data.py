"""Tests of the data layer: corpora, tokenizers and grain pipelines (CPU only, no TensorFlow)."""

import dataclasses
import itertools
import json
import os
import pathlib
import sys

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest
import tensorflow_datasets as tfds

from research import paths
from research.config import DataConfig
from research.data import corpora, pipeline, tokenizers

TEXT = (paths.DATA_ROOT / "tiny_shakespeare" / "input.txt").read_text(encoding="utf-8")
N_TRAIN, N_VAL = 1_003_854, 111_540
ALPHABET = sorted(set(TEXT[:N_TRAIN]))


def take(iterator, n):
  return list(itertools.islice(iterator, n))


def same_batches(a, b):
  return len(a) == len(b) and all(
      x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------
# Corpora
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shakespeare_cfg(tmp_path_factory):
  """A DataConfig whose Tiny Shakespeare is prepared (once) in a temporary data_dir."""
  cfg = DataConfig(data_dir=str(tmp_path_factory.mktemp("tfds")))
  corpora.prepared_builder(cfg)
  return cfg


def test_tiny_shakespeare_splits_reproduce_the_text(shakespeare_cfg):
  train = corpora.load_texts(shakespeare_cfg, "train")
  validation = corpora.load_texts(shakespeare_cfg, "validation")
  assert all(isinstance(t, str) for t in train)
  train_text, val_text = "".join(train), "".join(validation)
  assert (len(train_text), len(val_text)) == (N_TRAIN, N_VAL)
  assert train_text == TEXT[:N_TRAIN] and val_text == TEXT[N_TRAIN:]
  # The prepared files are a standard TFDS dataset: tfds.data_source reads them by name,
  # records come back in document order (index == position).
  source = tfds.data_source(corpora.TinyShakespeare.name, split="train",
                            data_dir=shakespeare_cfg.data_dir, download=False)
  records = [source[i] for i in range(len(source))]
  assert [r["index"] for r in records] == list(range(len(source)))
  assert b"".join(r["text"] for r in records).decode("utf-8") == TEXT[:N_TRAIN]
  assert "tensorflow" not in sys.modules


def test_tiny_shakespeare_is_cached(shakespeare_cfg):
  info = pathlib.Path(corpora.prepared_builder(shakespeare_cfg).data_path) / "dataset_info.json"
  mtime = info.stat().st_mtime_ns
  corpora.load_texts(shakespeare_cfg, "train")
  assert info.stat().st_mtime_ns == mtime


def test_tiny_shakespeare_missing_file(tmp_path):
  missing = tmp_path / "input.txt"
  builder = corpora.TinyShakespeare(input_file=missing, data_dir=str(tmp_path / "tfds"),
                                    file_format="array_record")
  with pytest.raises(FileNotFoundError, match=str(missing)):
    builder.download_and_prepare()


def write_corpus(folder):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "a.txt").write_text("first document\nwith two lines", encoding="utf-8")
  lines = [json.dumps({"text": f"jsonl doc {i}", "id": i}) for i in range(7)]
  (folder / "b.jsonl").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
  (folder / "c.txt").write_text("last document ünïcode", encoding="utf-8")
  (folder / "ignored.csv").write_text("not,a,document", encoding="utf-8")
  return ["first document\nwith two lines"] + [f"jsonl doc {i}" for i in range(7)] + [
      "last document ünïcode"]


def text_files_cfg(tmp_path, files, **kwargs):
  return DataConfig(dataset="text_files", files=str(files), data_dir=str(tmp_path / "tfds"),
                    **kwargs)


def test_text_files_splits_in_order(tmp_path):
  docs = write_corpus(tmp_path / "corpus")
  cfg = text_files_cfg(tmp_path, tmp_path / "corpus", validation_fraction=0.2)
  train, val = corpora.load_texts(cfg, "train"), corpora.load_texts(cfg, "validation")
  assert list(train) == docs[:7] and list(val) == docs[7:]  # round(9 * 0.2) = 2 held out
  # A glob selects files the same way.
  glob_cfg = text_files_cfg(tmp_path, tmp_path / "corpus" / "*.jsonl", validation_fraction=0.5)
  assert len(corpora.load_texts(glob_cfg, "validation")) == 4  # round(7 * 0.5) = 4


def test_text_files_rebuilt_only_when_changed(tmp_path):
  write_corpus(tmp_path / "corpus")
  cfg = text_files_cfg(tmp_path, tmp_path / "corpus")
  info = pathlib.Path(corpora.prepared_builder(cfg).data_path) / "dataset_info.json"
  mtime = info.stat().st_mtime_ns
  assert pathlib.Path(corpora.prepared_builder(cfg).data_path) / "dataset_info.json" == info
  assert info.stat().st_mtime_ns == mtime  # Reused, not rebuilt.
  (tmp_path / "corpus" / "d.txt").write_text("a new document", encoding="utf-8")
  rebuilt = corpora.prepared_builder(cfg)
  assert pathlib.Path(rebuilt.data_path) != info.parent
  assert list(corpora.load_texts(cfg, "validation"))[-1] == "a new document"


def test_text_files_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="matched no"):
    corpora.load_texts(text_files_cfg(tmp_path, tmp_path / "nothing" / "*.txt"), "train")

  bad_json = tmp_path / "bad_json"
  bad_json.mkdir()
  (bad_json / "x.jsonl").write_text('{"text": "ok"}\n{"text": broken\n', encoding="utf-8")
  with pytest.raises(ValueError, match=r"x\.jsonl:2: malformed JSON"):
    corpora.load_texts(text_files_cfg(tmp_path, bad_json), "train")

  no_field = tmp_path / "no_field"
  no_field.mkdir()
  (no_field / "y.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n', encoding="utf-8")
  with pytest.raises(ValueError, match=r"y\.jsonl:2: line has no string field 'text'"):
    corpora.load_texts(text_files_cfg(tmp_path, no_field), "train")

  latin1 = tmp_path / "latin1"
  latin1.mkdir()
  (latin1 / "ok.txt").write_text("fine", encoding="utf-8")
  (latin1 / "z.txt").write_bytes("café".encode("latin-1"))
  with pytest.raises(ValueError, match=r"z\.txt is not UTF-8"):
    corpora.load_texts(text_files_cfg(tmp_path, latin1), "train")

  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "e.jsonl").write_text("\n\n", encoding="utf-8")
  with pytest.raises(ValueError, match="is empty"):
    corpora.load_texts(text_files_cfg(tmp_path, empty), "train")


def test_catalog_dataset_through_data_source(tmp_path):
  cfg = DataConfig(dataset="lm1b", data_dir=str(tmp_path))
  with tfds.testing.mock_data(num_examples=5):
    texts = corpora.load_texts(cfg, "train")
    assert len(texts) == 5
    assert all(isinstance(t, str) and t for t in texts)


def test_catalog_dataset_needing_import(tmp_path):
  # glue lives in a legacy module that tfds does not import by name.
  cfg = DataConfig(dataset="glue/sst2", text_key="sentence", data_dir=str(tmp_path))
  with tfds.testing.mock_data(num_examples=3):
    assert all(isinstance(t, str) for t in corpora.load_texts(cfg, "train"))


def test_unknown_catalog_dataset(tmp_path):
  with pytest.raises(ValueError, match="neither a project corpus"):
    corpora.load_texts(DataConfig(dataset="no_such_dataset_xyz", data_dir=str(tmp_path)), "train")


# ------------------------------------------------------------------------------------------
# Tokenizers
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def char_tokenizer():
  return tokenizers.CharTokenizer.train([TEXT[:N_TRAIN]])


def test_char_tokenizer_vocabulary(char_tokenizer):
  assert char_tokenizer.vocab_size == 68
  assert [char_tokenizer.token_to_id(t) for t in tokenizers.SPECIAL_TOKENS] == [0, 1, 2]
  assert (char_tokenizer.pad_id, char_tokenizer.eos_id, char_tokenizer.unk_id) == (0, 1, 2)
  assert char_tokenizer.token_to_id("\n") == 3  # Characters follow in sorted order.
  ids = char_tokenizer.encode(TEXT[:1000])
  assert ids.dtype == np.int32 and char_tokenizer.decode(ids) == TEXT[:1000]
  assert list(char_tokenizer.encode("a€b")) == [char_tokenizer.token_to_id("a"), 2,
                                                char_tokenizer.token_to_id("b")]
  assert char_tokenizer.decode([0, 0] + list(char_tokenizer.encode("hi")) + [0]) == "hi"
  extra = tokenizers.CharTokenizer("ab", extra_special_tokens=("<mask>",))
  assert extra.token_to_id("<mask>") == 3 and list(extra.encode("ba")) == [5, 4]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=200), st.text(max_size=20))
def test_char_tokenizer_round_trip(char_tokenizer, text, other):
  assert char_tokenizer.decode(char_tokenizer.encode(text)) == text
  unknown = [c for c in other if c not in ALPHABET]
  ids = char_tokenizer.encode("".join(unknown))
  assert list(ids) == [char_tokenizer.unk_id] * len(unknown)


SP_TEXT = TEXT[:60_000]


@pytest.fixture(scope="module")
def sp_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("sp_workdir")
  cfg = DataConfig(tokenizer="sentencepiece", vocab_size=400)
  tokenizers.build_tokenizer(cfg, workdir, [SP_TEXT], extra_special_tokens=("<mask>",))
  return workdir


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=60))
def test_sentencepiece_round_trips_any_unicode(sp_workdir, text):
  tok = tokenizers.load_tokenizer(sp_workdir / "tokenizer")
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and tok.decode(ids) == text


def test_sentencepiece_specials_and_cache(sp_workdir):
  model = sp_workdir / "tokenizer" / "sentencepiece.model"
  mtime = model.stat().st_mtime_ns
  cfg = DataConfig(tokenizer="sentencepiece", vocab_size=400)

  def never_read():
    raise AssertionError("the cached tokenizer should not retrain")
    yield  # pylint: disable=unreachable

  tok = tokenizers.build_tokenizer(cfg, sp_workdir, never_read())
  assert model.stat().st_mtime_ns == mtime
  assert tok.vocab_size == 400
  assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
  assert tok.token_to_id("<mask>") == 3
  assert tok.decode(tok.encode(SP_TEXT[:500])) == SP_TEXT[:500]
  assert tok.decode([0] + list(tok.encode("First")) + [0, 0]) == "First"
  with pytest.raises(ValueError, match="holds a 'sentencepiece' tokenizer"):
    tokenizers.build_tokenizer(dataclasses.replace(cfg, tokenizer="char"), sp_workdir, [])


def make_hf_json(path):
  import tokenizers as hf  # pylint: disable=g-import-not-at-top

  tok = hf.Tokenizer(hf.models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = hf.decoders.ByteLevel()
  trainer = hf.trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"],
                                   initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([TEXT[:20_000]], trainer)
  tok.save(str(path))
  return path


def test_hf_tokenizer(tmp_path):
  tok = tokenizers.HFTokenizer.from_file(make_hf_json(tmp_path / "tokenizer.json"))
  assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
  text = "First Citizen:\nBefore we proceed, ünïcode!"
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and tok.decode(ids) == text
  assert tok.decode([tok.pad_id] + list(ids)) == text
  with pytest.raises(FileNotFoundError, match="missing.json"):
    tokenizers.HFTokenizer.from_file(tmp_path / "missing.json")


def test_save_load_round_trip_each_kind(tmp_path, char_tokenizer, sp_workdir):
  hf_tok = tokenizers.HFTokenizer.from_file(make_hf_json(tmp_path / "tokenizer.json"))
  sp_tok = tokenizers.load_tokenizer(sp_workdir / "tokenizer")
  for tok in (char_tokenizer, sp_tok, hf_tok):
    tok.save(tmp_path / tok.kind)
    loaded = tokenizers.load_tokenizer(tmp_path / tok.kind)
    assert type(loaded) is type(tok) and loaded.vocab_size == tok.vocab_size
    assert (loaded.pad_id, loaded.eos_id, loaded.unk_id) == (tok.pad_id, tok.eos_id, tok.unk_id)
    assert np.array_equal(loaded.encode(TEXT[:300]), tok.encode(TEXT[:300]))
  # build_tokenizer with kind 'hf' copies the file into the workdir.
  cfg = DataConfig(tokenizer="hf", tokenizer_path=str(tmp_path / "tokenizer.json"))
  built = tokenizers.build_tokenizer(cfg, tmp_path / "run", [])
  assert (tmp_path / "run" / "tokenizer" / "hf_tokenizer.json").is_file()
  assert tokenizers.load_tokenizer(tmp_path / "run" / "tokenizer").vocab_size == built.vocab_size


def test_tokenizer_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="manifest.json"):
    tokenizers.load_tokenizer(tmp_path)
  (tmp_path / "manifest.json").write_text('{"kind": "wordpiece"}')
  with pytest.raises(ValueError, match="unknown tokenizer kind 'wordpiece'"):
    tokenizers.load_tokenizer(tmp_path)
  (tmp_path / "manifest.json").write_text('{"kind": "sentencepiece", "model_file": "m.model"}')
  with pytest.raises(FileNotFoundError, match="m.model"):
    tokenizers.load_tokenizer(tmp_path)


# ------------------------------------------------------------------------------------------
# Pipelines
# ------------------------------------------------------------------------------------------

T = 8
CFG = DataConfig(seq_len=T, batch_size=8, shuffle_seed=3)
TOKENS = np.arange(72, dtype=np.int32)  # 64 start offsets; token value = its position


def offsets_of(batches):
  return [int(o) for b in batches for o in b["inputs"][:, 0]]


def test_windows_are_next_token_slices():
  batches = take(iter(pipeline.train_dataset(TOKENS, CFG)), 3)
  for b in batches:
    assert b["inputs"].shape == b["targets"].shape == b["weights"].shape == (8, T)
    assert b["inputs"].dtype == b["targets"].dtype == np.int32
    assert b["weights"].dtype == np.float32 and (b["weights"] == 1).all()
    for row, target in zip(b["inputs"], b["targets"]):
      o = row[0]
      assert np.array_equal(row, TOKENS[o:o + T])
      assert np.array_equal(target, TOKENS[o + 1:o + T + 1])


def test_windows_epochs_and_seeds():
  first = take(iter(pipeline.train_dataset(TOKENS, CFG)), 16)  # Two epochs of 8 batches.
  again = take(iter(pipeline.train_dataset(TOKENS, CFG)), 16)
  other = take(iter(pipeline.train_dataset(TOKENS, dataclasses.replace(CFG, shuffle_seed=4))), 16)
  assert same_batches(first, again) and not same_batches(first, other)
  epoch1, epoch2 = offsets_of(first[:8]), offsets_of(first[8:])
  assert sorted(epoch1) == sorted(epoch2) == list(range(64))  # Each offset once per epoch.
  assert epoch1 != epoch2 and epoch1 != list(range(64))


def test_windows_iterator_state_round_trip():
  iterator = iter(pipeline.train_dataset(TOKENS, CFG))
  take(iterator, 5)
  state = iterator.get_state()
  expected = take(iterator, 6)  # Crosses the epoch boundary.
  fresh = iter(pipeline.train_dataset(TOKENS, CFG))
  fresh.set_state(state)
  assert same_batches(take(fresh, 6), expected)


def test_windows_processes_are_disjoint():
  shards = [take(iter(pipeline.train_dataset(TOKENS, CFG, process_index=p, process_count=2)), 8)
            for p in range(2)]
  assert all(b["inputs"].shape == (4, T) for s in shards for b in s)
  epoch = [offsets_of(s[:8]) for s in shards]  # 32 offsets per process per epoch.
  assert not set(epoch[0]) & set(epoch[1])
  assert sorted(epoch[0] + epoch[1]) == list(range(64))
  with pytest.raises(ValueError, match="not divisible"):
    pipeline.train_dataset(TOKENS, CFG, process_index=0, process_count=3)


@pytest.mark.parametrize("num_tokens", [103, 97])  # A partial last window; exact windows.
def test_eval_batches_cover_every_target_once(num_tokens):
  tokens = np.arange(1, num_tokens + 1, dtype=np.int32)  # Never equal to pad_id 0.
  seen = []
  per_process = []
  for p in range(2):
    batches = list(pipeline.eval_batches(tokens, CFG, 6, process_index=p, process_count=2))
    per_process.append(len(batches))
    for b in batches:
      assert b["inputs"].shape == b["targets"].shape == b["weights"].shape == (3, T)
      real = b["weights"] > 0
      assert np.array_equal(b["targets"][real], b["inputs"][real] + 1)
      assert (b["targets"][~real] == 0).all()
      seen += list(b["targets"][real])
  assert per_process[0] == per_process[1]
  assert sorted(seen) == list(tokens[1:])  # Each target exactly once.
  assert len(seen) == num_tokens - 1
  truncated = list(pipeline.eval_batches(tokens, CFG, 6, max_batches=1))
  assert len(truncated) == 1 and truncated[0]["weights"].sum() == 6 * T


def test_tokenize_stream_and_cache(tmp_path, char_tokenizer):
  docs = ["ab", "", "cd"]
  tok = tokenizers.CharTokenizer("abcd")
  joined = pipeline.tokenize_stream(docs, tok)
  assert tok.decode(joined) == "abcd"
  separated = pipeline.tokenize_stream(docs, tok, separator_id=tok.eos_id)
  assert list(separated) == [3, 4, 1, 1, 5, 6, 1]
  cache = tmp_path / "cache.npy"
  first = pipeline.tokenize_stream(docs, tok, tok.eos_id, cache_path=cache)
  again = pipeline.tokenize_stream(["ignored"], tok, tok.eos_id, cache_path=cache)
  assert np.array_equal(first, separated) and np.array_equal(again, separated)


DOCS = [f"document {i} " + "xyz" * (i % 7) for i in range(40)]


def stream(cfg, **kwargs):
  return pipeline.stream_dataset(DOCS, tokenizers.CharTokenizer.train(DOCS), cfg, **kwargs)


def test_stream_packing():
  tok = tokenizers.CharTokenizer.train(DOCS)
  batches = take(iter(stream(CFG)), 4)
  for b in batches:
    assert b["inputs"].shape == b["targets"].shape == b["weights"].shape == (8, T)
    assert b["inputs"].dtype == np.int32 and (b["weights"] == 1).all()
    assert np.array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
  # Windows are consecutive pieces of EOS-separated documents.
  stream_ids = np.concatenate([np.append(row, target[-1]) for b in batches
                               for row, target in zip(b["inputs"], b["targets"])])
  for piece in tok.decode(stream_ids).split("<eos>")[1:-1]:
    assert piece in DOCS
  assert same_batches(batches, take(iter(stream(CFG)), 4))
  assert not same_batches(batches, take(iter(stream(dataclasses.replace(CFG, shuffle_seed=9))), 4))
  shards = [take(iter(stream(CFG, process_index=p, process_count=2)), 2) for p in range(2)]
  assert all(b["inputs"].shape == (4, T) for s in shards for b in s)


def test_stream_iterator_state_round_trip():
  iterator = iter(stream(CFG))
  take(iterator, 3)
  state = iterator.get_state()
  expected = take(iterator, 12)  # Past the first epoch of 40 documents.
  fresh = iter(stream(CFG))
  fresh.set_state(state)
  assert same_batches(take(fresh, 12), expected)


def test_build_lm_data_tiny_shakespeare(shakespeare_cfg, tmp_path):
  cfg = dataclasses.replace(shakespeare_cfg, seq_len=16, batch_size=4)
  data = pipeline.build_lm_data(cfg, tmp_path)
  assert data.tokenizer.vocab_size == 68
  assert data.tokenizer.decode(data.eval_tokens) == TEXT[N_TRAIN:]
  batch = next(iter(data.train))
  assert batch["inputs"].shape == (4, 16)
  assert sum(b["weights"].sum() for b in data.eval_batches()) == N_VAL - 1
  assert len(list(data.eval_batches(batch_size=8, max_batches=2))) == 2
  caches = sorted((tmp_path / "data_cache").iterdir())
  assert len(caches) == 2
  mtimes = [c.stat().st_mtime_ns for c in caches]
  again = pipeline.build_lm_data(cfg, tmp_path)  # Tokenizer and tokens come from the workdir.
  assert [c.stat().st_mtime_ns for c in caches] == mtimes
  assert np.array_equal(again.eval_tokens, data.eval_tokens)
  with pytest.raises(ValueError, match="not divisible"):
    pipeline.build_lm_data(cfg, tmp_path, process_count=3)


def test_build_lm_data_catalog_stream(tmp_path):
  cfg = DataConfig(dataset="lm1b", packing="stream", seq_len=T, batch_size=4,
                   data_dir=str(tmp_path / "tfds"))
  with tfds.testing.mock_data(num_examples=12):
    data = pipeline.build_lm_data(cfg, tmp_path / "run", process_index=1, process_count=2)
    batch = next(iter(data.train))
    assert batch["inputs"].shape == (2, T) and (batch["weights"] == 1).all()
    eval_batch = next(data.eval_batches())
    assert eval_batch["inputs"].shape == (2, T)
  assert os.path.isdir(tmp_path / "run" / "tokenizer")
