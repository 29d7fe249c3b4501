"""End to end: the real train_and_evaluate and CLIs on a shrunk Tiny Shakespeare config."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from research import train
from research.config import ExperimentConfig, load_config_file
from research.paths import REPO_ROOT
from xla_flags import cli_env
from tests import cli

CONFIG = "configs/gpt_shakespeare_char.py"
FAMILY_CONFIGS = ["configs/gpt_shakespeare_char.py", "configs/gpt_shakespeare_prefixlm.py",
                  "configs/bert_shakespeare_mlm.py", "configs/t5_shakespeare_span.py"]
# A config, shrunk: the same code path, seconds instead of minutes.
SHRINK = {"model.num_layers": 1, "model.num_decoder_layers": 1, "model.embed_dim": 32,
          "model.mlp_dim": 64, "model.num_heads": 2, "model.max_len": 32, "data.seq_len": 32,
          "train.log_every": 1, "train.eval_batches": 2, "train.eval_every": 0,
          "train.checkpoint_every": 2, "optimizer.decay_steps": 8, "data.batch_size": 8}


def shrunk_config(steps: int, config_file: str = CONFIG, **overrides) -> ExperimentConfig:
  config = load_config_file(str(REPO_ROOT / config_file))
  for key, value in {**SHRINK, "train.steps": steps, **overrides}.items():
    section, name = key.split(".")
    config[section][name] = value
  return ExperimentConfig.from_config_dict(config)


def train_losses(workdir) -> dict[int, float]:
  records = [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def run_cli(*args, cwd=REPO_ROOT):
  """`python ARGS...` with the test CLIs' environment; `-m MODULE ...` through tests/cli.py."""
  if args[0] == "-m":
    return cli.run(args[1], args[2:], env=cli_env(), cwd=cwd, timeout=300)
  return subprocess.run([sys.executable, *args], cwd=cwd, env=cli_env(), capture_output=True,
                        text=True, timeout=300)


# Resuming is one code path for every family: the default suite runs it on the causal decoder;
# the encoder-decoder, prefix LM and BERT are marked slow.
@pytest.mark.parametrize("config_file", [
    "configs/gpt_shakespeare_char.py",
    pytest.param("configs/t5_shakespeare_span.py", marks=pytest.mark.slow),
    pytest.param("configs/gpt_shakespeare_prefixlm.py", marks=pytest.mark.slow),
    pytest.param("configs/bert_shakespeare_mlm.py", marks=pytest.mark.slow)])
def test_resume_continues_the_same_run(tmp_path, config_file):
  straight = tmp_path / "straight"
  train.train_and_evaluate(shrunk_config(8, config_file), straight)
  interrupted = tmp_path / "interrupted"
  train.train_and_evaluate(shrunk_config(4, config_file), interrupted)
  assert json.loads((interrupted / "config.json").read_text())["train"]["steps"] == 4
  # Same workdir: resumes at step 4 (same data order, objective randomness and dropout keys).
  train.train_and_evaluate(shrunk_config(8, config_file), interrupted)
  a, b = train_losses(straight), train_losses(interrupted)
  assert sorted(a) == sorted(b) == list(range(1, 9))
  np.testing.assert_allclose([b[s] for s in range(1, 9)], [a[s] for s in range(1, 9)],
                             rtol=1e-6)
  _, _, params_a = train.restore_params(straight)
  _, _, params_b = train.restore_params(interrupted)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
               params_a, params_b)


@pytest.fixture(scope="module")
def cli_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("cli") / "run"
  flags = [f"--config.{k}={v}" for k, v in SHRINK.items()]
  result = run_cli("-m", "research.train", f"--config={CONFIG}", f"--workdir={workdir}",
                   "--config.train.steps=4", *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_cli_writes_checkpoint_events_metrics_and_config(cli_workdir):
  assert sorted(p.name for p in (cli_workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
      "2", "4"]
  assert list((cli_workdir / "tensorboard").glob("events.out.tfevents.*"))
  records = [json.loads(l) for l in (cli_workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4]
  assert any("eval/loss" in r for r in records)
  saved = json.loads((cli_workdir / "config.json").read_text())
  assert saved["model"]["num_layers"] == 1 and saved["model"]["vocab_size"] == 68


def test_evaluate_cli_scores_the_whole_split(cli_workdir):
  result = run_cli("-m", "research.evaluate", f"--workdir={cli_workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  saved = json.loads((cli_workdir / "eval.json").read_text())
  assert saved["step"] == 4 and saved["split"] == "validation"
  assert saved["tokens"] == 111_539  # every character of the last 10% but the first
  assert np.isclose(saved["perplexity"], np.exp(saved["loss"]))
  assert f"loss: {saved['loss']:.4f}" in result.stdout


def test_generate_cli_continues_the_prompt(cli_workdir):
  result = run_cli("-m", "research.generate", f"--workdir={cli_workdir}", "--prompt=ROMEO:",
                   "--max_new_tokens=100", "--temperature=0")
  assert result.returncode == 0, result.stderr[-3000:]
  text = result.stdout.rstrip("\n")
  assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 100


@pytest.mark.parametrize("config_file, prompt, check", [
    ("configs/t5_shakespeare_span.py", "ROMEO: What <extra_id_0> you?",
     lambda out: out.startswith("ROMEO: What ") and out.endswith(" you?") and "<extra_id" not in out),
    ("configs/bert_shakespeare_mlm.py", "ROMEO: Wh<mask>t say y<mask>u?",
     lambda out: len(out) == len("ROMEO: What say you?") and out.startswith("ROMEO: Wh")
     and "<mask>" not in out),
])
def test_generate_cli_on_t5_and_bert_workdirs(tmp_path, config_file, prompt, check):
  workdir = tmp_path / "run"
  train.train_and_evaluate(shrunk_config(2, config_file), workdir)
  result = run_cli("-m", "research.generate", f"--workdir={workdir}", f"--prompt={prompt}",
                   "--max_new_tokens=20", "--temperature=0")
  assert result.returncode == 0, result.stderr[-3000:]
  assert check(result.stdout.rstrip("\n")), result.stdout


def _checkpoint_files(workdir):
  return {p: p.stat().st_mtime_ns for p in (workdir / "checkpoints").rglob("*") if p.is_file()}


@pytest.mark.parametrize("flags, message", [
    (["--config.model.num_layerz=3"], "num_layerz"),
    (["--config.mesh.data=3"], "needs 3 devices but 1 are available"),
    (["--config.data.dataset=text_files", "--config.data.files=/nonexistent/*.txt"],
     "/nonexistent"),
    (["--config.model.embed_dim=48"], "holds a run of a different model"),
    (["--config.objective.name=span_corruption"], "does not fit model.family='decoder'"),
])
def test_bad_input_is_one_clear_line_and_leaves_the_workdir_alone(cli_workdir, flags, message):
  before = _checkpoint_files(cli_workdir)
  config_before = (cli_workdir / "config.json").read_text()
  shrink = [f"--config.{k}={v}" for k, v in SHRINK.items()]
  result = run_cli("-m", "research.train", f"--config={CONFIG}", f"--workdir={cli_workdir}",
                   "--config.train.steps=6", *shrink, *flags)
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr
  assert _checkpoint_files(cli_workdir) == before
  assert (cli_workdir / "config.json").read_text() == config_before


def test_a_run_resumes_under_another_precision_policy_but_not_another_model(tmp_path):
  """matmul_dtype="auto" resolves per machine, so the precision policy is not model identity."""
  config = ExperimentConfig.from_config_dict(
      load_config_file(str(REPO_ROOT / "configs/gpt_shakespeare_char.py")))
  (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
  train.check_resumable(tmp_path, config)
  for model in (dict(matmul_dtype="float32"), dict(matmul_dtype="bfloat16"),
                dict(activation_dtype="bfloat16")):
    train.check_resumable(tmp_path, _with_model(config, **model))
  with pytest.raises(train.UserError, match="holds a run of a different model"):
    train.check_resumable(tmp_path, _with_model(config, embed_dim=48))


def _with_model(config, **changes):
  return dataclasses.replace(config, model=dataclasses.replace(config.model, **changes))
