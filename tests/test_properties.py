"""Property-based tests (hypothesis) of tokenizing, packing and masking on arbitrary text:
empty strings, very long lines, any Unicode."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from research import objectives
from research.config import DataConfig, DataError, ObjectiveConfig
from research.data import pipeline
from research.data.tokenizers import CharTokenizer

ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=300)
LONG_LINE = st.text(st.characters(codec="utf-8"), min_size=2000, max_size=6000)


@settings(max_examples=60, deadline=None)
@given(corpus=st.lists(ANY_TEXT | LONG_LINE, max_size=4), text=ANY_TEXT | LONG_LINE)
def test_char_tokenizer_on_any_unicode(corpus, text):
  tokenizer = CharTokenizer.train(corpus, extra_special_tokens=("<mask>",))
  ids = tokenizer.encode(text)
  assert ids.dtype == np.int32 and len(ids) == len(text)  # one id per character, empty -> empty
  assert ((ids >= 0) & (ids < tokenizer.vocab_size)).all()
  alphabet = set("".join(corpus))
  known = np.array([c in alphabet for c in text], bool)
  assert (ids[~known] == tokenizer.unk_id).all()
  assert not np.isin(ids[known], [tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id]).any()
  if all(known):
    assert tokenizer.decode(ids) == text
  in_alphabet = "".join(c for c in text if c in alphabet)
  assert tokenizer.decode(tokenizer.encode(in_alphabet)) == in_alphabet


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(ANY_TEXT, min_size=1, max_size=6), seq_len=st.integers(1, 24),
       batch_size=st.integers(1, 5))
def test_eval_packing_covers_every_token_of_any_text(texts, seq_len, batch_size):
  tokenizer = CharTokenizer.train(texts)
  tokens = pipeline.tokenize_stream(texts, tokenizer, separator_id=tokenizer.eos_id)
  assert len(tokens) == sum(len(t) + 1 for t in texts)  # every document ends in EOS
  cfg = DataConfig(seq_len=seq_len, batch_size=batch_size)
  if len(tokens) < 2:  # nothing to predict: refused with a message
    with pytest.raises(DataError, match="needs at least 2"):
      list(pipeline.eval_batches(tokens, cfg, batch_size))
    return
  batches = list(pipeline.eval_batches(tokens, cfg, batch_size))
  seen = []
  for b in batches:
    assert b["inputs"].shape == b["targets"].shape == (batch_size, seq_len)
    seen.extend(b["targets"][b["weights"] > 0].tolist())
  assert seen == tokens[1:].tolist()  # each target once, in order


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(ANY_TEXT | LONG_LINE, min_size=1, max_size=3), seed=st.integers(0, 2**32 - 1))
def test_training_windows_of_any_text_are_slices_of_the_stream(texts, seed):
  tokenizer = CharTokenizer.train(texts)
  tokens = pipeline.tokenize_stream(texts, tokenizer, separator_id=tokenizer.eos_id)
  cfg = DataConfig(seq_len=8, batch_size=2, shuffle_seed=seed % 1000)
  if len(tokens) <= cfg.seq_len:
    return  # too short for one window: refused with a message (tested in test_data)
  stream = tokens.tolist()
  for batch, _ in zip(iter(pipeline.train_dataset(tokens, cfg)), range(3)):
    for inputs, targets in zip(batch["inputs"], batch["targets"]):
      window = inputs.tolist() + targets[-1:].tolist()
      assert any(stream[o:o + 9] == window for o in range(len(stream) - 8))
      np.testing.assert_array_equal(inputs[1:], targets[:-1])


@settings(max_examples=40, deadline=None)
@given(text=st.text(st.characters(codec="utf-8"), min_size=2, max_size=400),
       seed=st.integers(0, 2**32 - 1))
def test_masking_any_text_never_touches_specials_or_padding(text, seed):
  tokenizer = CharTokenizer.train([text], extra_special_tokens=(objectives.MASK_TOKEN,))
  objective = ObjectiveConfig(name="masked_lm")
  info = objectives.TokenInfo.from_tokenizer(tokenizer, objective)
  ids = tokenizer.encode(text)
  seq_len = 32
  window = np.full(seq_len + 1, tokenizer.pad_id, np.int32)
  n = min(len(ids), seq_len + 1)
  window[:n] = ids[:n]
  weights = (np.arange(seq_len) < n - 1).astype(np.float32)[None]
  batch = {"inputs": window[None, :-1], "targets": window[None, 1:], "weights": weights}
  out = objectives.masked_lm(batch, np.random.default_rng(seed), info, objective)
  selected = out["weights"][0] > 0
  assert not selected[min(n, seq_len):].any()  # padding never selected
  assert not np.isin(out["targets"][0][selected], info.special_ids).any()
  np.testing.assert_array_equal(out["inputs"][0][~selected], out["targets"][0][~selected])
  assert not np.isin(out["inputs"][0][selected & (out["inputs"][0] != info.mask_id)],
                     [tokenizer.pad_id, tokenizer.eos_id]).any()
