"""Defaults that fit the user's data: what the rest of the config (or the corpus) implies is
derived, with one note line each, instead of an error the user must know how to answer."""

import json

import pytest

from research.config import ConfigError, ExperimentConfig, load_config_file
from research.data import tokenizers
from research.paths import REPO_ROOT
from xla_flags import cli_env
from tests import cli

PAIR_TASK = {"kind": "classification", "train_files": "my/train.jsonl",
             "eval_files": "my/dev.jsonl", "text_fields": "premise,hypothesis"}


def sst2_bert(**sections):
  config = load_config_file(str(REPO_ROOT / "configs/sst2_bert.py")).to_dict()
  for section, values in sections.items():
    if isinstance(values, dict):
      config[section].update(values)
    else:
      config[section] = values
  return config


def test_two_text_fields_give_an_encoder_token_types():
  notes = []
  config = ExperimentConfig.from_config_dict(sst2_bert(task=PAIR_TASK), notes)
  assert config.model.num_token_types == 2
  assert len(notes) == 1 and notes[0].startswith("note: task.text_fields=premise,hypothesis")
  assert "model.num_token_types=2" in notes[0]


@pytest.mark.parametrize("change", [
    {"task": {**PAIR_TASK, "text_fields": "premise"}},  # one text: no pair
    {"task": PAIR_TASK, "model": {"num_token_types": 1}},  # the user's choice stays
    {"task": {**PAIR_TASK, "kind": "span_qa", "text_fields": ""}},  # only classification
    {"task": PAIR_TASK, "init_from": "runs/pretrained"},  # the pretrained architecture rules
])
def test_token_types_are_derived_only_for_an_encoder_pair_left_at_the_default(change):
  notes = []
  config = ExperimentConfig.from_config_dict(sst2_bert(**change), notes)
  assert config.model.num_token_types == change.get("model", {}).get("num_token_types", 0)
  assert not notes


def test_the_decoder_gets_no_token_types():
  config = load_config_file(str(REPO_ROOT / "configs/sst2_gpt.py")).to_dict()
  config["task"].update(PAIR_TASK)
  notes = []
  assert ExperimentConfig.from_config_dict(config, notes).model.num_token_types == 0
  assert not notes


def test_a_saved_config_is_taken_as_it_is():
  # A workdir's config.json (no notes asked for) keeps what the run was trained with.
  config = ExperimentConfig.from_config_dict(sst2_bert(task=PAIR_TASK))
  assert config.model.num_token_types == 0


def test_a_longer_context_raises_the_position_table():
  learned = {"position": "learned", "max_len": 64}
  with pytest.raises(ConfigError, match="longer than the position table"):
    ExperimentConfig.from_config_dict(sst2_bert(model=learned, data={"seq_len": 128}))
  notes = []
  config = ExperimentConfig.from_config_dict(sst2_bert(model=learned, data={"seq_len": 128}),
                                             notes)
  assert config.model.max_len == 128 and config.data.seq_len == 128
  assert notes == ["note: data.seq_len=128 is longer than model.max_len=64: model.max_len=128; "
                   "set model.max_len to choose"]
  # A rotary encoder never needed it: nothing changes.
  notes = []
  config = ExperimentConfig.from_config_dict(sst2_bert(data={"seq_len": 128}), notes)
  assert config.model.max_len == 64 and not notes


TEXTS = ["the cat sat on the mat and the dog ran far away from home today\n" * 3,
         "hello world, this is a tiny corpus with ünïcode"]


def test_a_small_corpus_gets_the_largest_vocabulary_it_fills(capsys):
  tokenizer = tokenizers.SentencePieceTokenizer.train(iter(TEXTS), 8000)
  note = capsys.readouterr().err.strip()
  assert 256 < tokenizer.vocab_size < 8000
  assert note == (f"note: the tokenizer's training texts fill at most {tokenizer.vocab_size} "
                  f"SentencePiece pieces: trained with {tokenizer.vocab_size} instead of "
                  "data.vocab_size=8000")
  assert tokenizer.decode(tokenizer.encode("hello cat ü")) == "hello cat ü"
  # That size itself trains without a note: it is the largest the corpus fills.
  assert tokenizers.SentencePieceTokenizer.train(TEXTS, tokenizer.vocab_size).vocab_size == (
      tokenizer.vocab_size)
  assert capsys.readouterr().err == ""


def test_too_small_a_vocabulary_grows_to_hold_the_characters(capsys):
  tokenizer = tokenizers.SentencePieceTokenizer.train(TEXTS, 100)
  assert tokenizer.vocab_size > 256  # the bytes of byte fallback and the characters
  assert "need at least" in capsys.readouterr().err


def test_a_large_corpus_is_not_kept_for_a_retrain(monkeypatch):
  monkeypatch.setattr(tokenizers._KeptTexts, "LIMIT_CHARS", 100)
  with pytest.raises(tokenizers.DataError, match="too small for data.vocab_size=8000"):
    tokenizers.SentencePieceTokenizer.train(iter(TEXTS), 8000)


def test_a_sentence_pair_task_on_sst2_bert_runs_as_given(tmp_path):
  """The README's own-task command without data.vocab_size and model.num_token_types."""
  rows = [{"premise": f"the film was {w} and {v}", "hypothesis": f"a {v} story about {w}",
           "label": "same" if i % 2 else "mixed"}
          for i, (w, v) in enumerate(zip(["good", "bad", "long", "short"] * 6,
                                         ["fun", "dull", "slow", "bright", "odd", "warm"] * 4))]
  for name in ("train", "dev"):
    (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  workdir = tmp_path / "run"
  result = cli.run(
      "research.train", ["--config=configs/sst2_bert.py",
       f"--workdir={workdir}", "--config.task.kind=classification",
       f"--config.task.train_files={tmp_path / 'train.jsonl'}",
       f"--config.task.eval_files={tmp_path / 'dev.jsonl'}",
       "--config.task.text_fields=premise,hypothesis",
       "--config.model.num_layers=1", "--config.model.embed_dim=32", "--config.model.mlp_dim=64",
       "--config.model.num_heads=2", "--config.data.batch_size=8", "--config.train.steps=1",
       "--config.train.eval_every=1", "--config.train.checkpoint_every=1"],
      env=cli_env(), timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
  assert any("model.num_token_types=2" in n for n in notes), notes
  assert any("instead of data.vocab_size=8000" in n for n in notes), notes
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["num_token_types"] == 2
  assert 256 < saved["model"]["vocab_size"] < 8000
