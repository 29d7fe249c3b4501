"""Packing with segment ids: the packer on hand-made documents, exact resume, and, per family,
the loss of each packed example equal to its loss alone in a row (tiny random models)."""

import dataclasses
import itertools

import flax.linen as nn
import grain
import jax
import numpy as np
import optax
import pytest

from research import flops, models, objectives, paths, tasks
from research.config import (ConfigError, DataConfig, ExperimentConfig, ModelConfig,
                             ObjectiveConfig, load_config_file)
from research.data import packing, pipeline, tokenizers

EOS = 1


def take(iterator, n):
  return list(itertools.islice(iterator, n))


def same_batches(a, b):
  return len(a) == len(b) and all(
      x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------
# The packer
# ------------------------------------------------------------------------------------------


def test_a_long_document_is_cut_into_pieces_that_keep_every_target():
  doc = np.arange(10, 30)
  pieces = packing.split_document(doc, 6)
  assert [len(p) for p in pieces] == [6, 6, 6, 5]
  assert [t for p in pieces for t in p[1:]] == list(doc[1:])  # each target exactly once
  assert packing.split_document(np.array([EOS]), 6) == []  # an empty document: no target


def test_first_fit_rows_of_hand_made_documents():
  docs = [[10, 11, EOS], [20, 21, 22, 23, 24, 25, 26, EOS], [30, EOS], [EOS]]
  ds = grain.MapDataset.source([{"tokens": np.array(d, np.int32)} for d in docs])
  pieces = grain.experimental.FlatMapIterDataset(ds.to_iter_dataset(),
                                                 packing.SplitDocuments(6))
  rows = sorted(packing.first_fit(pieces, {"tokens": 6}, seed=0, padding={"tokens": 9}),
                key=lambda r: r["tokens"][0])
  # The 8-token document becomes [20..25] and [25, 26, EOS]; the latter fills row 0's room.
  assert [list(r["tokens"]) for r in rows] == [[10, 11, EOS, 25, 26, EOS],
                                               [20, 21, 22, 23, 24, 25], [30, EOS, 9, 9, 9, 9]]
  assert [list(r["tokens_segment_ids"]) for r in rows] == [[1, 1, 1, 2, 2, 2], [1] * 6,
                                                           [1, 1, 0, 0, 0, 0]]
  assert [list(r["tokens_positions"]) for r in rows] == [[0, 1, 2, 0, 1, 2], list(range(6)),
                                                         [0, 1, 0, 0, 0, 0]]
  batch = packing.next_token_batch(*(np.stack([r[k] for r in rows]) for k in (
      "tokens", "tokens_segment_ids", "tokens_positions")))
  assert batch["inputs"][0].tolist() == [10, 11, EOS, 25, 26]
  assert batch["targets"][0].tolist() == [11, EOS, 25, 26, EOS]
  # EOS -> 25 crosses from one document into the next: no loss there.
  assert batch["weights"].tolist() == [[1, 1, 0, 1, 1], [1] * 5, [1, 0, 0, 0, 0]]
  assert batch["positions"][0].tolist() == [0, 1, 2, 0, 1]
  assert batch["segment_ids"][2].tolist() == [1, 1, 0, 0, 0]


def translation_like_sizes(n: int, seed: int = 0) -> np.ndarray:
  """(n, 2) (input, target) lengths shaped like spa_eng's: inputs 10-24, targets ~0.6 of them."""
  rng = np.random.default_rng(seed)
  inputs = np.clip(np.round(rng.normal(16.5, 3.0, n)), 10, 24).astype(int)
  targets = np.clip(np.round(0.6 * inputs + rng.normal(0, 2.5, n)), 3, 24).astype(int)
  return np.stack([inputs, targets], axis=1)


def test_balanced_rows_place_every_example_once_and_fill_both_sides():
  sizes = translation_like_sizes(3000)
  capacity = (96, 56)
  rows = packing.balanced_rows(sizes, capacity)
  assert sorted(i for row in rows for i in row) == list(range(len(sizes)))
  used = np.array([sizes[row].sum(axis=0) for row in rows])
  assert (used <= capacity).all()
  fill = used.sum() / (len(rows) * sum(capacity))
  # First fit over 64 open rows (grain's, what fine-tuning packed with before) on these sizes.
  examples = [{"source": np.ones(a, np.int32), "target": np.ones(b, np.int32)} for a, b in sizes]
  first = list(packing.first_fit(grain.MapDataset.source(examples).to_iter_dataset(),
                                 dict(zip(("source", "target"), capacity)), seed=0))
  first_fill = used.sum() / (len(first) * sum(capacity))
  assert fill > 0.96 and fill > first_fill + 0.02, (fill, first_fill)


def test_balanced_rows_close_a_row_with_the_pair_that_fills_it():
  # The largest example opens the row and leaves room (4, 4): 2 + 2 fills it exactly, where
  # 3 alone (the most that one example fills) would leave room.
  sizes = np.array([[6, 6], [3, 3], [2, 2], [2, 2], [5, 5]])
  rows = packing.balanced_rows(sizes, (10, 10))
  assert sorted(sorted(r) for r in rows) == [[0, 2, 3], [1, 4]]
  with pytest.raises(ValueError, match="example 1 has 11 tokens on side 0, more than a row's 10"):
    packing.balanced_rows(np.array([[1, 1], [11, 1]]), (10, 10))


def window_examples(n: int) -> list[dict[str, np.ndarray]]:
  sizes = translation_like_sizes(n, seed=1)
  return [{"source": np.arange(100 * i, 100 * i + a, dtype=np.int32),
           "target": np.arange(100 * i + 50, 100 * i + 50 + b, dtype=np.int32)}
          for i, (a, b) in enumerate(sizes)]


def test_pack_windows_rows_hold_each_example_whole_with_segments_and_positions():
  examples = window_examples(200)
  ds = grain.MapDataset.source(examples).to_iter_dataset()
  rows = list(packing.pack_windows(ds, {"source": 48, "target": 32}, seed=3,
                                   padding={"source": -1, "target": -2}, window=64))
  seen = []
  for row in rows:
    for side, pad in (("source", -1), ("target", -2)):
      ids, positions = row[f"{side}_segment_ids"], row[f"{side}_positions"]
      assert (row[side][ids == 0] == pad).all() and (positions[ids == 0] == 0).all()
      assert (np.diff(ids[ids > 0]) >= 0).all()  # examples one after another
      for s in range(1, ids.max() + 1):
        assert positions[ids == s].tolist() == list(range((ids == s).sum()))
    for s in range(1, row["source_segment_ids"].max() + 1):
      source = row["source"][row["source_segment_ids"] == s]
      target = row["target"][row["target_segment_ids"] == s]
      assert target[0] == source[0] + 50  # the same example's target beside its input
      seen.append(int(source[0]) // 100)
  assert sorted(seen) == list(range(200))


def test_pack_windows_iterator_state_round_trip():
  ds = grain.MapDataset.source(window_examples(100)).repeat(3).to_iter_dataset()
  lengths = {"source": 48, "target": 32}
  iterator = iter(packing.pack_windows(ds, lengths, seed=0, window=30))
  take(iterator, 7)  # within the first window (30 examples, ~10 rows)
  state = iterator.get_state()
  expected = take(iterator, 60)  # crosses several windows and an epoch
  for resumed_at in (state, iterator.get_state()):
    fresh = iter(packing.pack_windows(ds, lengths, seed=0, window=30))
    fresh.set_state(resumed_at)
    got = take(fresh, 60 if resumed_at is state else 5)
    assert same_batches(got, expected if resumed_at is state else take(iterator, 5))


# Every character occurs in one document only, so a pair of tokens names its document.
DOCS = ["ab", "cdefghijklmnopqrstu", "v", "", "wxyz", "ABCDEFGH", "IJ KLM", "NOPQRSTUVWXYZ01"]
CFG = DataConfig(seq_len=8, batch_size=4, shuffle_seed=1, packing="documents")


@pytest.fixture(scope="module")
def char_tokenizer():
  return tokenizers.CharTokenizer.train(DOCS)


def test_documents_rows_hold_pieces_of_documents_and_every_target_once(char_tokenizer):
  tok = char_tokenizer
  docs = [list(tok.encode(d)) + [tok.eos_id] for d in DOCS]
  pairs = {(a, b) for d in docs for a, b in zip(d[:-1], d[1:])}
  seen = set()
  for b in take(iter(pipeline.documents_dataset(DOCS, tok, CFG)), 16):
    assert all(b[k].shape == (4, 8) and b[k].dtype == np.int32
               for k in ("inputs", "targets", "positions", "segment_ids"))
    for tokens, seg, pos, weights, targets in zip(b["inputs"], b["segment_ids"], b["positions"],
                                                  b["weights"], b["targets"]):
      real = seg > 0
      assert real[:real.sum()].all()  # padding only at the end
      assert (tokens[~real] == tok.pad_id).all() and (weights[~real] == 0).all()
      ids = seg[real]
      assert ids[0] == 1 and set(np.diff(ids)) <= {0, 1}  # 1, 2, 3, ... in order
      for s in set(ids):
        piece = list(tokens[seg == s])
        assert list(pos[seg == s]) == list(range(len(piece)))
        assert any(piece == d[i:i + len(piece)] for d in docs for i in range(len(d)))
      for a, t in zip(tokens[weights > 0], targets[weights > 0]):
        assert (a, t) in pairs  # never a target in another document
        seen.add((a, t))
  assert seen == pairs  # every target of every document, each document's EOS included


def test_documents_iterator_state_round_trip(char_tokenizer):
  iterator = iter(pipeline.documents_dataset(DOCS, char_tokenizer, CFG))
  take(iterator, 5)
  state = iterator.get_state()
  expected = take(iterator, 40)  # 16 batches per packing round: crosses two rounds
  fresh = iter(pipeline.documents_dataset(DOCS, char_tokenizer, CFG))
  fresh.set_state(state)
  assert same_batches(take(fresh, 40), expected)


def test_build_lm_data_dispatches_documents(tmp_path):
  (tmp_path / "docs").mkdir()
  (tmp_path / "docs" / "a.jsonl").write_text(
      "\n".join(f'{{"text": "{d or "z"}"}}' for d in DOCS * 3) + "\n")
  cfg = dataclasses.replace(CFG, dataset="text_files", files=str(tmp_path / "docs"),
                            tokenizer="char", data_dir=str(tmp_path / "tfds"))
  batch = next(iter(pipeline.build_lm_data(cfg, tmp_path / "run").train))
  assert batch["segment_ids"].shape == batch["positions"].shape == (4, 8)
  assert batch["segment_ids"].max() > 1


def test_prefix_lm_on_packed_documents_is_refused(char_tokenizer):
  batch = next(iter(pipeline.documents_dataset(DOCS, char_tokenizer, CFG)))
  transform = objectives.BatchTransform(ObjectiveConfig(name="prefix_lm"), "decoder",
                                        char_tokenizer)
  with pytest.raises(ConfigError, match="prefix_lm.*data.packing='documents'"):
    transform(batch, np.random.default_rng(0))


@pytest.mark.parametrize("name", ["prefix_lm", "ul2"])
def test_encoder_decoder_pairs_are_made_per_document(name):
  tok = tokenizers.CharTokenizer.train(DOCS, objectives.required_special_tokens(
      ObjectiveConfig(name=name)))
  lm = next(iter(pipeline.documents_dataset(DOCS, tok, CFG)))
  batch = objectives.BatchTransform(ObjectiveConfig(name=name), "encoder_decoder", tok)(
      lm, np.random.default_rng(0))
  enc, dec = batch["encoder_segment_ids"], batch["decoder_segment_ids"]
  documents = [p for row in packing.segments(lm["inputs"], lm["segment_ids"]) for p in row
               if len(p) >= 2]
  modes = set(objectives.TokenInfo.from_tokenizer(tok, ObjectiveConfig(name=name)).mode_ids
              .values())
  made = []
  for r in range(len(enc)):
    assert set(enc[r][enc[r] > 0]) == set(dec[r][dec[r] > 0])  # each input has its target
    for s in range(1, enc[r].max() + 1):
      inputs, targets = batch["encoder_inputs"][r][enc[r] == s], batch["targets"][r][dec[r] == s]
      assert targets[-1] == tok.eos_id
      if name == "prefix_lm":  # the document = its prefix (input) + the rest (target)
        made.append(list(inputs) + list(targets[:-1]))
      else:
        assert inputs[0] in modes
  if name == "prefix_lm":
    assert sorted(made) == sorted(list(d) for d in documents)


def test_task_packing_is_refused_for_a_classifier_head():
  config = load_config_file(str(paths.REPO_ROOT / "configs" / "sst2_bert.py"))
  config.task.packing = True
  with pytest.raises(ConfigError, match="task.packing=True .* classify head"):
    ExperimentConfig.from_config_dict(config)


# ------------------------------------------------------------------------------------------
# A packed example's loss is its loss alone in a row
# ------------------------------------------------------------------------------------------

FAMILY_LOGITS = {"seq2seq": "encoder_decoder", "prompt": "decoder"}


def tiny(family: str, vocab_size: int, seq_len: int):
  # Learned positions: a position that did not restart per example would change the logits.
  cfg = ModelConfig(family=family, vocab_size=vocab_size, num_layers=1, num_heads=2,
                    embed_dim=16, mlp_dim=32, max_len=seq_len, matmul_dtype="float32",
                    position="relative" if family == "encoder_decoder" else "learned")
  model = models.build_model(cfg)
  params = nn.unbox(model.init(jax.random.key(0), *models.dummy_inputs(cfg, seq_len))["params"])
  return model, params


def token_losses(family: str, model, params, batch) -> np.ndarray:
  """Per-token weighted losses (B, T) through the family's loss path (objectives.LOGITS)."""
  logits = jax.jit(lambda p, b: objectives.LOGITS[family](model, p, b))(params, batch)
  return np.asarray(optax.softmax_cross_entropy_with_integer_labels(
      logits, batch["targets"])) * batch["weights"]


def per_segment(losses: np.ndarray, segment_ids: np.ndarray) -> tuple[np.ndarray, list]:
  """The summed loss of each (row, segment) of a packed batch, and those (row, segment)."""
  keys = [(r, s) for r in range(len(segment_ids)) for s in range(1, segment_ids[r].max() + 1)]
  return np.array([losses[r][segment_ids[r] == s].sum() for r, s in keys]), keys


def alone(batch: dict, keys: list, segment_ids: np.ndarray, names: tuple[str, ...],
          pad_id: int = 0) -> dict:
  """Each (row, segment) of a packed batch alone in a row (padded; no segment ids)."""
  width = segment_ids.shape[1]
  out = {}
  for name in names:
    rows = np.full((len(keys), width), pad_id, batch[name].dtype)
    for i, (r, s) in enumerate(keys):
      values = batch[name][r][segment_ids[r] == s]
      rows[i, :len(values)] = values
    out[name] = rows
  return out


def assert_same_losses(packed: np.ndarray, unpacked: np.ndarray, segments: int, rows: int):
  assert segments > rows  # the batch packs several examples to a row
  np.testing.assert_allclose(packed, unpacked, rtol=1e-5, atol=1e-5)


# Documents of 1-4 words, a few of 9-12 (longer than a row of 33 tokens).
DOCUMENTS = [" ".join(f"w{i}x{j}" for j in range(1 + (5 * i) % 4 + 8 * (i % 13 == 0)))
             for i in range(40)]


@pytest.fixture(scope="module")
def document_batch():
  """A packed LM batch of DOCUMENTS (rows of 33 tokens), and its tokenizer."""
  objective = ObjectiveConfig(name="span_corruption")
  tok = tokenizers.CharTokenizer.train(
      DOCUMENTS, ("<mask>",) + objectives.required_special_tokens(objective))
  cfg = DataConfig(seq_len=32, batch_size=4, shuffle_seed=0, packing="documents")
  return next(iter(pipeline.documents_dataset(DOCUMENTS, tok, cfg))), tok


def test_decoder_packed_losses_equal_one_document_per_row(document_batch):
  batch, tok = document_batch
  model, params = tiny("decoder", tok.vocab_size, 32)
  packed, keys = per_segment(token_losses("decoder", model, params, batch), batch["segment_ids"])
  single = alone(batch, keys, batch["segment_ids"], ("inputs", "targets", "weights"))
  unpacked = token_losses("decoder", model, params, single).sum(axis=1)
  assert_same_losses(packed, unpacked, len(keys), len(batch["inputs"]))


def test_encoder_masked_lm_losses_equal_one_document_per_row(document_batch):
  lm, tok = document_batch
  transform = objectives.BatchTransform(ObjectiveConfig(name="masked_lm"), "encoder", tok)
  batch = transform(lm, np.random.default_rng(0))
  assert not (batch["weights"] * (batch["segment_ids"] == 0)).any()
  model, params = tiny("encoder", tok.vocab_size, 32)
  packed, keys = per_segment(token_losses("encoder", model, params, batch), batch["segment_ids"])
  single = alone(batch, keys, batch["segment_ids"], ("inputs", "targets", "weights",
                                                     "input_mask"))
  unpacked = token_losses("encoder", model, params, single).sum(axis=1)
  assert_same_losses(packed, unpacked, len(keys), len(batch["inputs"]))


def test_encoder_decoder_span_corruption_losses_equal_one_document_per_row(document_batch):
  lm, tok = document_batch
  objective = ObjectiveConfig(name="span_corruption")
  batch = objectives.BatchTransform(objective, "encoder_decoder", tok)(
      lm, np.random.default_rng(0))
  info = objectives.TokenInfo.from_tokenizer(tok, objective)
  enc, dec = batch["encoder_segment_ids"], batch["decoder_segment_ids"]
  starts = (batch["decoder_positions"] == 0) & (dec > 0)
  assert (batch["decoder_inputs"][starts] == tok.pad_id).all()  # each segment starts decoding
  model, params = tiny("encoder_decoder", tok.vocab_size, 32)
  packed, keys = per_segment(token_losses("encoder_decoder", model, params, batch), dec)
  # Each (input, target) pair in a row of its own, as the unpacked objective makes them.
  pairs = [(batch["encoder_inputs"][r][enc[r] == s], batch["targets"][r][dec[r] == s][:-1])
           for r, s in keys]
  # pylint: disable-next=protected-access
  single = objectives._seq2seq_batch(pairs, 32, dec.shape[1], info)
  unpacked = token_losses("encoder_decoder", model, params, single).sum(axis=1)
  assert_same_losses(packed, unpacked, len(keys), len(enc))


def feature_tokens(kind, feature) -> tuple:
  arrays = kind.pack_example(feature)
  if kind.format == "seq2seq":
    return (tuple(arrays["source"]), tuple(arrays["target"]))
  return (tuple(arrays["tokens"]),)


def example_tokens(batch, kind, r: int, s: int) -> tuple:
  """Segment s of row r of a packed task batch: (source, target) or (prompt + response,)."""
  if kind.format == "seq2seq":
    return (tuple(batch["encoder_inputs"][r][batch["encoder_segment_ids"][r] == s]),
            tuple(batch["targets"][r][batch["decoder_segment_ids"][r] == s]))
  tokens = batch["inputs"][r][batch["segment_ids"][r] == s]
  if tokens[-1] != kind.tokenizer.eos_id:  # it ends the row: its EOS is only a target
    tokens = np.append(tokens, batch["targets"][r][-1])
  return (tuple(tokens),)


@pytest.mark.parametrize("name,seq_len,task", [
    ("spa_eng_t5", 128, dict(max_input_len=32, max_target_len=32)),  # text-to-text
    ("alpaca_gpt", 384, dict(max_target_len=96)),  # instruction: loss on the response only
])
def test_task_packing_keeps_each_example_loss(tmp_path, name, seq_len, task):
  config = load_config_file(str(paths.REPO_ROOT / "configs" / f"{name}.py"))
  config.data.update(tokenizer="char", seq_len=seq_len, batch_size=4, train_split="train[:48]")
  config.task.update(packing=True, **task)
  config = ExperimentConfig.from_config_dict(config)
  data = tasks.build_task_data(config, tmp_path)
  kind = data.kind
  batch = next(iter(data.train))
  family = FAMILY_LOGITS[kind.format]
  model, params = tiny(family, data.tokenizer.vocab_size, seq_len)
  segment_ids = batch["decoder_segment_ids" if kind.format == "seq2seq" else "segment_ids"]
  packed, keys = per_segment(token_losses(family, model, params, batch), segment_ids)
  # Find each packed example among the features by its tokens, then collate it unpacked.
  features = kind.features(data.records(config.data.train_split))
  by_tokens = {feature_tokens(kind, f): f for f in features}
  found = [by_tokens.get(example_tokens(batch, kind, r, s)) for r, s in keys]
  assert all(f is not None for f in found)
  unpacked = token_losses(family, model, params, kind.collate(found)).sum(axis=1)
  assert_same_losses(packed, unpacked, len(keys), len(segment_ids))


def test_packed_translation_rows_are_full_on_both_sides(tmp_path):
  # Target rows sized by the data's target/input ratio, not by the max lengths: Spanish inputs
  # (with their task prefix) run longer than the English targets, so rows as long as the inputs
  # left the decoder half empty.
  config = load_config_file(str(paths.REPO_ROOT / "configs" / "spa_eng_t5.py"))
  config.data.update(tokenizer="char", seq_len=192, batch_size=8, train_split="train[:2000]")
  config.task.update(packing=True, max_input_len=48, max_target_len=48)
  config = ExperimentConfig.from_config_dict(config)
  data = tasks.build_task_data(config, tmp_path)
  batches = list(itertools.islice(iter(data.train), 20))
  encoder = np.mean([b["encoder_mask"].mean() for b in batches])
  decoder = np.mean([b["weights"].mean() for b in batches])
  assert encoder > 0.85 and decoder > 0.85, (encoder, decoder)
  # The FLOPs (and MFU) of the run count the rows it trains on: 192 inputs, fewer targets;
  # the config alone bounds the targets by the max lengths' proportion.
  rows = (batches[0]["encoder_inputs"].shape[1], batches[0]["targets"].shape[1])
  assert data.row_lengths == rows and rows[1] < 192
  assert flops.sequence_lengths(config) == (192, 192)
  resolved = dataclasses.replace(config, model=dataclasses.replace(
      config.model, vocab_size=data.tokenizer.vocab_size))
  assert (flops.training_flops_per_step(resolved, data.row_lengths)
          < flops.training_flops_per_step(resolved))
