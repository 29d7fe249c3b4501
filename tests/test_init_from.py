"""init_from keeps what the user asked for: how the run computes (attention kernel and window,
precision, dropout) stays the config's, the architecture and tokenizer are the pretrained
workdir's, and a flag asking the architecture for another value is one error line."""

import dataclasses
import json

import jax.numpy as jnp
import pytest

from research import train
from research.config import ConfigError
from tests.test_train import CONFIG, SHRINK, run_cli, shrunk_config

# How the run computes: none of these changes a parameter's shape.
RUN_CHOICES = {"model.attention": "splash", "model.attention_window": 8,
               "model.param_dtype": "bfloat16", "model.dropout_rate": 0.1}


def _pretrained_workdir(path, **model):
  """A workdir as init_from reads it (its config.json), without training it."""
  config = shrunk_config(2)
  config = dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=68,
                                                                 **model))
  path.mkdir()
  (path / "config.json").write_text(config.to_json())
  return config


def _from(workdir, **overrides):
  return dataclasses.replace(shrunk_config(1, **overrides), init_from=str(workdir))


def test_run_choices_are_kept_and_the_architecture_is_inherited(tmp_path):
  pretrained = _pretrained_workdir(tmp_path / "pre")
  # num_layers=3 comes from the config file, not a flag: replaced by the pretrained 1, as
  # a task config written for training from scratch relies on.
  config = _from(tmp_path / "pre", **RUN_CHOICES, **{"model.num_layers": 3})
  resolved = train.inherit_pretrained(config, overrides=RUN_CHOICES)
  assert resolved.model == dataclasses.replace(
      pretrained.model, attention="splash", attention_window=8, param_dtype="bfloat16",
      dropout_rate=0.1)
  assert resolved.data.vocab_size == pretrained.data.vocab_size
  # Rotary positions have no table: a longer context asked for is kept, one not asked for is not.
  longer = _from(tmp_path / "pre", **{"model.max_len": 64})
  assert train.inherit_pretrained(longer, {"model.max_len"}).model.max_len == 64
  assert train.inherit_pretrained(longer).model.max_len == 32


@pytest.mark.parametrize("key, value, theirs", [
    ("model.num_layers", 3, 1), ("model.norm", "layernorm", "'rmsnorm'"),
    ("model.scan_layers", True, False), ("data.vocab_size", 500, 0),
    ("model.max_len", 64, 32)])  # a learned position table of 32 rows
def test_a_flag_that_changes_the_architecture_is_one_error_line(tmp_path, key, value, theirs):
  _pretrained_workdir(tmp_path / "pre", position="learned")
  config = _from(tmp_path / "pre", **{key: value})
  with pytest.raises(ConfigError) as error:
    train.inherit_pretrained(config, overrides={key, "model.attention"})
  message = str(error.value)
  assert "\n" not in message
  assert f"holds a model with {key}={theirs}, but --config.{key}={value!r}" in message
  assert f"drop --config.{key}" in message
  # The same value as the pretrained one is no conflict.
  train.inherit_pretrained(_from(tmp_path / "pre"), overrides={"model.num_layers"})


def test_cli_fine_tunes_with_splash_and_refuses_another_depth(tmp_path):
  """The acceptance: --config.init_from=W --config.model.attention=splash uses splash (on a CPU
  the kernel cannot run a 32-token sequence, so it says so and takes the XLA path)."""
  train.train_and_evaluate(shrunk_config(2), tmp_path / "pre")
  shrink = [f"--config.{k}={v}" for k, v in SHRINK.items()]
  common = ["-m", "research.train", f"--config={CONFIG}", f"--config.init_from={tmp_path / 'pre'}",
            "--config.train.steps=1", *shrink]
  result = run_cli(*common, f"--workdir={tmp_path / 'ft'}", "--config.model.attention=splash",
                   "--config.model.param_dtype=bfloat16")
  assert result.returncode == 0, result.stderr[-3000:]
  saved = json.loads((tmp_path / "ft" / "config.json").read_text())["model"]
  assert saved["attention"] == "splash" and saved["param_dtype"] == "bfloat16"
  config, model, params = train.restore_params(tmp_path / "ft")
  assert model.config.attention == "splash" and config.model.num_layers == 1
  assert params["token_embed"]["embedding"].dtype == jnp.bfloat16

  result = run_cli(*common, f"--workdir={tmp_path / 'deeper'}", "--config.model.num_layers=2")
  assert result.returncode != 0
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "--config.model.num_layers=2" in errors[0], result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "deeper").exists()
