"""Objective transforms: statistics of masked LM, exact reconstruction for span corruption."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from research import objectives
from research.config import FAMILY_OBJECTIVES, ConfigError, ExperimentConfig, ObjectiveConfig

VOCAB = 200
SPECIALS = (0, 1, 2, 3)  # pad, eos, unk, <mask>
INFO = objectives.TokenInfo(vocab_size=VOCAB, pad_id=0, eos_id=1, special_ids=SPECIALS,
                            mask_id=3, sentinel_ids=tuple(range(100, 200)),
                            mode_ids={"R": 4, "S": 5, "X": 6})


def lm_batch(tokens: np.ndarray, lengths=None) -> dict:
  """An LM batch (as the pipeline makes it) from windows of T+1 tokens."""
  b, n = tokens.shape
  weights = np.ones((b, n - 1), np.float32)
  if lengths is not None:
    for r, length in enumerate(lengths):
      weights[r, max(length - 1, 0):] = 0
      tokens[r, length:] = 0
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights}


def test_family_table_matches_the_implemented_transforms():
  implemented = {}
  for objective, family in objectives.TRANSFORMS:
    implemented.setdefault(family, set()).add(objective)
  assert {f: set(o) for f, o in FAMILY_OBJECTIVES.items()} == implemented


def test_an_objective_that_does_not_fit_the_family_is_refused_when_the_config_is_read():
  with pytest.raises(ConfigError, match="span_corruption.*does not fit.*encoder"):
    ExperimentConfig.from_config_dict({"model": {"family": "encoder"},
                                       "objective": {"name": "span_corruption"}})


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), special_share=st.floats(0.0, 0.5))
def test_masked_lm_statistics(seed, special_share):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(7, 100, (64, 129))
  specials = rng.random(tokens.shape) < special_share
  tokens = np.where(specials, rng.choice(SPECIALS[:3], tokens.shape), tokens)
  batch = lm_batch(tokens.copy(), lengths=rng.integers(2, 130, 64))
  out = objectives.masked_lm(batch, rng, INFO, ObjectiveConfig(name="masked_lm"))
  selected = out["weights"] > 0
  eligible = out["input_mask"] & ~np.isin(out["targets"], SPECIALS)
  # Special and padding tokens are never selected; the original is always the target.
  assert not (selected & ~eligible).any()
  np.testing.assert_array_equal(out["inputs"][~selected], out["targets"][~selected])
  n_eligible, n_selected = eligible.sum(), selected.sum()
  # Binomial tolerances: about 5 standard deviations at these sizes.
  assert abs(n_selected / n_eligible - 0.15) < 5 * np.sqrt(0.15 * 0.85 / n_eligible)
  masked = (out["inputs"] == 3) & selected
  kept = (out["inputs"] == out["targets"]) & selected
  randomised = selected & ~masked & ~kept
  sd = lambda p: 5 * np.sqrt(p * (1 - p) / n_selected) + 0.011  # + the 1/100 chance a random
  assert abs(masked.sum() / n_selected - 0.8) < sd(0.8)           # draw equals the original
  assert abs(kept.sum() / n_selected - 0.1) < sd(0.1)
  assert abs(randomised.sum() / n_selected - 0.1) < sd(0.1)
  assert not np.isin(out["inputs"][randomised], SPECIALS).any()


def reconstruct(encoder_inputs, targets, sentinels) -> list[int]:
  """Merges a span-corruption pair back into the original sequence on the sentinels."""
  spans, current = {}, None
  for t in targets:
    if t in sentinels:
      current = t
      spans[current] = []
    elif t == INFO.eos_id:
      break
    else:
      spans[current].append(t)
  out = []
  for t in encoder_inputs:
    if t == INFO.pad_id:
      break
    out.extend(spans[t] if t in sentinels else [t])
  return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), length=st.integers(2, 200))
def test_span_corruption_reconstructs_the_original_exactly(seed, length):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(7, 100, (2, length + 1))
  batch = lm_batch(tokens.copy())
  out = objectives.span_corruption(batch, rng, INFO, ObjectiveConfig(name="span_corruption"))
  sentinels = set(INFO.sentinel_ids)
  for r in range(2):
    assert reconstruct(out["encoder_inputs"][r], out["targets"][r], sentinels) == list(
        tokens[r, :length])
    # decoder input is the target shifted right behind a start (pad) token
    assert out["decoder_inputs"][r, 0] == INFO.pad_id
    np.testing.assert_array_equal(out["decoder_inputs"][r, 1:], out["targets"][r, :-1])
    assert out["weights"][r].sum() == (out["targets"][r] != INFO.pad_id).sum()


def test_span_corruption_noise_density_and_span_length_hold_on_average():
  rng = np.random.default_rng(0)
  masks = [objectives.random_spans_noise_mask(512, 0.15, 3.0, rng) for _ in range(200)]
  density = np.mean([m.mean() for m in masks])
  spans = [np.sum(m & ~np.concatenate([[False], m[:-1]])) for m in masks]
  mean_span = np.sum([m.sum() for m in masks]) / np.sum(spans)
  assert abs(density - 0.15) < 0.005
  assert abs(mean_span - 3.0) < 0.1
  assert not any(m[0] for m in masks)  # T5's masks never start with noise


def test_prefix_lm_weights_cover_exactly_the_continuation():
  rng = np.random.default_rng(0)
  batch = lm_batch(rng.integers(7, 100, (16, 33)), lengths=[33] * 8 + [10] * 8)
  out = objectives.prefix_lm_decoder(batch, rng, INFO, ObjectiveConfig(name="prefix_lm"))
  for r in range(16):
    p = out["prefix_lengths"][r]
    n = 33 if r < 8 else 10
    assert 1 <= p < n
    # target t predicts token t+1: exactly tokens p .. n-1 carry loss
    np.testing.assert_array_equal(out["weights"][r] > 0, (np.arange(32) >= p - 1) &
                                  (np.arange(32) < n - 1))


def test_ul2_rows_start_with_their_mode_token():
  rng = np.random.default_rng(0)
  batch = lm_batch(rng.integers(7, 100, (64, 65)))
  out = objectives.ul2(batch, rng, INFO, ObjectiveConfig(name="ul2"))
  modes = out["encoder_inputs"][:, 0]
  assert set(modes) == {4, 5, 6}
  assert (out["weights"].sum(1) > 0).all()


def test_too_few_sentinels_is_a_clear_error():
  info = dataclasses.replace(INFO, sentinel_ids=(100, 101))
  batch = lm_batch(np.random.default_rng(0).integers(7, 100, (1, 201)))
  with pytest.raises(ValueError, match="raise objective.num_sentinels"):
    objectives.span_corruption(batch, np.random.default_rng(0), info,
                               ObjectiveConfig(name="span_corruption"))
