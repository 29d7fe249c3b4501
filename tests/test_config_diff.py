"""research.config_diff: the entries in which two experiment configs differ, defaults resolved."""

import subprocess
import sys

import pytest

from research import config_diff
from research.paths import REPO_ROOT
from xla_flags import cli_env

ABLATION = REPO_ROOT / "experiments" / "ablation"


def write_config(path, body: str = "") -> str:
  path.write_text("from research.config import base_config\n\n\ndef get_config():\n"
                  "  config = base_config()\n" + body + "  return config\n")
  return str(path)


def diff_lines(a: str, b: str) -> list[str]:
  return config_diff.format_diff(config_diff.diff_files(a, b))


def run_cli(*args):
  env = cli_env()
  return subprocess.run([sys.executable, "-m", "research.config_diff", *args], cwd=REPO_ROOT,
                        env=env, capture_output=True, text=True, timeout=120)


def test_an_arm_differs_from_the_baseline_by_its_own_lines():
  assert diff_lines(str(ABLATION / "baseline.py"), str(ABLATION / "encoder_mlm.py")) == [
      "model.family: 'encoder_decoder' -> 'encoder'",
      "model.num_layers: 2 -> 4",
      "model.mlp_dim: 384 -> 512",
      "objective.name: 'span_corruption' -> 'masked_lm'",
  ]
  assert diff_lines(str(ABLATION / "baseline.py"), str(ABLATION / "encdec_span.py")) == []


def test_defaults_are_resolved_before_comparing(tmp_path):
  plain = write_config(tmp_path / "plain.py")
  # The defaults written out, and an int where the field is a float: the same experiment.
  explicit = write_config(tmp_path / "explicit.py", "  config.model.num_layers = 4\n"
                          "  config.optimizer.learning_rate = 0.001\n"
                          "  config.optimizer.weight_decay = 0.1\n"
                          "  config.train.peak_flops = 0\n")
  assert config_diff.diff_files(plain, explicit) == []


def test_entries_come_in_declaration_order_with_top_level_ones(tmp_path):
  a = write_config(tmp_path / "a.py")
  b = write_config(tmp_path / "b.py", "  config.train.steps = 7\n  config.data.seq_len = 32\n"
                   "  config.init_from = 'runs/x'\n  config.rules = (('batch', 'data'),)\n"
                   "  config.model.family = 'encoder'\n  config.objective.name = 'masked_lm'\n")
  lines = diff_lines(a, b)
  assert [line.split(":")[0] for line in lines] == [
      "model.family", "data.seq_len", "train.steps", "objective.name", "rules", "init_from"]
  assert "train.steps: 2000 -> 7" in lines
  assert "init_from: '' -> 'runs/x'" in lines
  assert lines[4].endswith("-> (('batch', 'data'),)")
  assert diff_lines(b, a)[0] == "model.family: 'encoder' -> 'decoder'"


def test_cli_prints_one_line_per_difference():
  result = run_cli("experiments/ablation/baseline.py", "experiments/ablation/encdec_lm.py")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.splitlines() == ["objective.name: 'span_corruption' -> 'prefix_lm'"]


@pytest.mark.parametrize("case", ["one_file", "missing_file", "bad_value"])
def test_cli_bad_input_is_one_error_line(tmp_path, case):
  bad = write_config(tmp_path / "bad.py", "  config.model.num_layers = 0\n")
  args, message = {
      "one_file": (["experiments/ablation/baseline.py"], "expected two config files"),
      "missing_file": (["nothere.py", "experiments/ablation/baseline.py"], "does not exist"),
      "bad_value": ([bad, "experiments/ablation/baseline.py"], "model.num_layers must be"),
  }[case]
  result = run_cli(*args)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
