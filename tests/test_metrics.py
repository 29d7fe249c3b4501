"""Task metrics against values worked out by hand."""

import pytest

from research import metrics


def test_squad_normalization_exact_match_and_f1():
  assert metrics.squad_normalize("The  Eiffel Tower!") == "eiffel tower"
  assert metrics.squad_normalize("an apple, a pear") == "apple pear"
  assert metrics.squad_exact_match("the Eiffel Tower.", ["Eiffel tower"]) == 1.0
  assert metrics.squad_exact_match("Eiffel", ["Eiffel tower"]) == 0.0
  # pred [in, paris, france] vs gold [paris]: precision 1/3, recall 1 -> F1 0.5
  assert metrics.squad_f1("in Paris, France", ["Paris"]) == pytest.approx(0.5)
  # the best of several references counts
  assert metrics.squad_f1("in Paris, France", ["Lyon", "Paris France"]) == pytest.approx(0.8)
  assert metrics.squad_exact_match("1990", ["in 1990", "1990"]) == 1.0
  assert metrics.squad_f1("the", ["a"]) == 1.0  # both normalize to empty
  assert metrics.squad_f1("Lyon", ["Paris"]) == 0.0


def test_bleu_known_values_and_signature():
  score, signature = metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"])
  assert score == pytest.approx(100.0)
  assert signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
  # One last word differs in 7: n-gram precisions 6/7, 5/6, 4/5, 3/4, no brevity penalty.
  score, _ = metrics.bleu(["the cat sat on the mat today"], ["the cat sat on the mat now"])
  assert score == pytest.approx(100 * (6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25, abs=1e-6)
  assert metrics.bleu(["completely different words"], ["nothing in common here"])[0] == 0.0


def test_rouge_known_values_with_stemming():
  scores = metrics.rouge(["the cat sat"], ["the cat ran"])
  assert scores["rouge1"] == pytest.approx(2 / 3)  # 2 of 3 unigrams each way
  assert scores["rouge2"] == pytest.approx(1 / 2)  # "the cat" of 2 bigrams each way
  assert scores["rougeL"] == pytest.approx(2 / 3)  # LCS "the cat"
  assert metrics.rouge(["dogs running"], ["dog runs"])["rouge1"] == pytest.approx(1.0)  # stems


def test_accuracy():
  assert metrics.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
  with pytest.raises(ValueError, match="equal, non-empty"):
    metrics.accuracy([], [])
