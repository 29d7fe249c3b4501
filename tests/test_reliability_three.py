"""Reliability, round three (issue #37): no read that writes, no silent wrong results, every
check before step 1, one line rather than a traceback, nothing silently ignored.

The CLI cases run the real commands against one small trained workdir and check that it is
byte for byte unchanged; the rest call the same functions in-process (seconds each).
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from research import checkpoint, train
from research import workdir as workdir_lib
from research.config import ConfigError, DataError, ExperimentConfig, UserError, base_config
from research.paths import REPO_ROOT
from xla_flags import cli_env
from tests import cli
from tests.test_train import CONFIG, SHRINK, shrunk_config

FLAGS = [f"--config={CONFIG}"] + [f"--config.{k}={v}" for k, v in SHRINK.items()]


def _cli(module, args, timeout=300):
  return cli.run(module, args, env=cli_env(1), timeout=timeout)


def _one_error(result) -> str:
  assert result.returncode != 0, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  return errors[0]


def _files(path: pathlib.Path) -> dict:
  return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir trained for 2 steps (its checkpoint at step 2)."""
  path = tmp_path_factory.mktemp("three") / "run"
  result = _cli("research.train", [f"--workdir={path}", *FLAGS, "--config.train.steps=2"])
  assert result.returncode == 0, result.stderr[-3000:]
  return path


def _config(**sections) -> ExperimentConfig:
  config = base_config()
  for key, value in sections.items():
    section, name = key.split("__")
    config[section][name] = value
  return ExperimentConfig.from_config_dict(config)


# --- 1. A command that reads a workdir never overwrites it ------------------------------------


@pytest.mark.parametrize("args, message", [
    (lambda w: [f"--output={w / 'config.json'}"],
     "--output=<w>/config.json would overwrite config.json of the workdir it evaluates"),
    (lambda w: [f"--predictions={w / 'metrics.jsonl'}"],
     "--predictions=<w>/metrics.jsonl would overwrite metrics.jsonl of the workdir"),
    (lambda w: [f"--output={w / 'checkpoints' / '2' / 'x.json'}"],
     "would overwrite checkpoints/2/x.json of the workdir"),
    (lambda w: [f"--output={w.parent / 'same.jsonl'}", f"--predictions={w.parent / 'same.jsonl'}"],
     "--predictions=<w>/../same.jsonl is also where the metrics go"),
])
def test_evaluate_refuses_to_write_over_what_it_reads(trained, args, message):
  before = _files(trained)
  result = _cli("research.evaluate", [f"--workdir={trained}", *args(trained)])
  line = _one_error(result)
  assert message.replace("<w>/..", str(trained.parent)).replace("<w>", str(trained)) in line
  assert _files(trained) == before


def test_ablation_and_results_out_refuse_a_file_or_a_training_workdir(trained, tmp_path):
  before = _files(trained)
  result = _cli("experiments.architecture_ablation", [f"--out={trained}", "--tiny"])
  assert f"--out={trained} is a training workdir" in _one_error(result)
  result = _cli("experiments.results", [f"--out={trained / 'config.json'}"])
  assert "config.json is a file, not a folder" in _one_error(result)
  assert _files(trained) == before
  # and in-process, both ways
  with pytest.raises(UserError, match="is a training workdir"):
    workdir_lib.check_out_folder(trained)
  workdir_lib.check_out_folder(tmp_path / "new")  # a new folder is fine


# --- 2. No silent wrong data -----------------------------------------------------------------


def test_a_corpus_file_edited_in_place_is_seen(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  (corpus / "a.txt").write_text("the first document " * 20)
  (corpus / "b.txt").write_text("the second document " * 20)
  config = _config(data__dataset="text_files", data__files=str(corpus / "*.txt"))
  workdir = tmp_path / "run"
  workdir.mkdir()
  record = workdir_lib.check_data(workdir, config)
  (workdir / workdir_lib.DATA_FILE).write_text(json.dumps(record))
  assert workdir_lib.check_data(workdir, config) is None  # the same data
  stat = os.stat(corpus / "a.txt")
  (corpus / "a.txt").write_text("THE first document " * 20)  # same size, same time
  os.utime(corpus / "a.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns))
  with pytest.raises(UserError, match=r"was trained on other data \(files whose content "
                                      r"changed: .*a\.txt\)"):
    workdir_lib.check_data(workdir, config)
  # A record of sizes alone (written before fingerprints) is taken, and gains them.
  (workdir / workdir_lib.DATA_FILE).write_text(json.dumps(
      {**record, "files": {k: v["size"] for k, v in record["files"].items()}}))
  assert workdir_lib.check_data(workdir, config)["files"] == workdir_lib.data_record(
      config)["files"]


def test_resuming_a_user_task_whose_labels_changed_is_refused(tmp_path):
  from research import tasks  # pylint: disable=import-outside-toplevel
  task = tasks.TaskDef("user", "classification", "accuracy", label_field="stance")
  tasks.record_labels(tmp_path, ("agree", "disagree"), task, write=True)
  before = _files(tmp_path)
  tasks.record_labels(tmp_path, ("agree", "disagree"), task, write=True)  # same: no write
  with pytest.raises(DataError, match=r"the task's files carry other labels \(agree, neutral\) "
                                      r"than the run in .* was trained on \(agree, disagree"):
    tasks.record_labels(tmp_path, ("agree", "neutral"), task, write=True)
  assert _files(tmp_path) == before


def test_a_label_field_among_the_text_fields_is_refused():
  with pytest.raises(ConfigError, match=r"task.label_field='label' is also among "
                                        r"task.text_fields='text,label': the model would read"):
    _config(task__name="user", task__kind="classification", task__train_files="a.jsonl",
            task__eval_files="b.jsonl", task__text_fields="text,label", model__family="encoder")


def test_a_checkpoint_whose_bytes_changed_on_disk_is_refused(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
  state = {"w": np.arange(8, dtype=np.float32), "b": np.ones(3, np.float32)}
  ckpt.save(1, state, config={"model": {}}, force=True)
  ckpt.save(2, {"w": state["w"] + 1, "b": state["b"]}, config={"model": {}}, force=True)
  ckpt.close()
  steps = tmp_path / "checkpoints"
  abstract = {k: np.zeros_like(v) for k, v in state.items()}
  reader = checkpoint.Checkpointer(tmp_path, read_only=True)
  np.testing.assert_array_equal(reader.restore(1, abstract)["w"], state["w"])  # intact
  # Step 1's tensors replaced by other bytes that still decode (step 2's).
  shutil.rmtree(steps / "1" / "state")
  shutil.copytree(steps / "2" / "state", steps / "1" / "state")
  with pytest.raises(checkpoint.CheckpointError, match=(
      r"checkpoint .*/1 changed on disk since it was saved: tensor \['w'\] no longer matches "
      "its checksum; delete that step folder")):
    checkpoint.Checkpointer(tmp_path, read_only=True).restore(1, abstract)


# --- 3. Every check that can run before step 1 does -------------------------------------------


def test_an_empty_file_never_becomes_the_validation_split(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  (corpus / "a.txt").write_text("all the text there is " * 40)
  (corpus / "z.txt").write_text("")  # last: it would have been the whole validation split
  config = shrunk_config(2, **{"data.dataset": "text_files", "data.files": str(corpus),
                               "data.data_dir": str(tmp_path / "tfds")})
  with pytest.raises(DataError, match="holds a single document, which cannot be split"):
    train.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value, message", [
    ("train__seed", -1, "config train.seed=-1 must be in [0, 2**31); pass a non-negative seed"),
    ("data__shuffle_seed", -3, "config data.shuffle_seed=-3 must be in [0, 2**31)"),
    ("optimizer__learning_rate", float("nan"),
     "config optimizer.learning_rate=nan must be a finite number"),
    ("objective__num_sentinels", 0, "config objective.num_sentinels=0 must be >= 1"),
])
def test_config_values_found_only_late_are_refused_at_start(key, value, message):
  extra = ({"model__family": "encoder_decoder", "objective__name": "span_corruption"}
           if "sentinels" in key else {})
  with pytest.raises(ConfigError) as error:
    _config(**{key: value}, **extra)
  assert message in str(error.value) and "\n" not in str(error.value)


def test_the_final_checkpoint_is_written_before_the_final_evaluation(tmp_path, monkeypatch,
                                                                     capsys):
  def failing(*args, **kwargs):
    raise FloatingPointError("the evaluation failed")
  monkeypatch.setattr(train, "evaluate_split", failing)
  with pytest.raises(FloatingPointError):
    train.train_and_evaluate(shrunk_config(2), tmp_path / "run")
  assert checkpoint.Checkpointer(tmp_path / "run", read_only=True).all_steps() == [2]
  # 5. a warmup longer than the run says so
  assert ("note: optimizer.warmup_steps=100 is not shorter than the run's 2 steps: the learning "
          "rate only rises") in capsys.readouterr().err


# --- 5. Nothing silently ignored; 4. one line, not a traceback ---------------------------------


@pytest.mark.parametrize("sections, message", [
    ({"task__name": "sst2", "model__family": "encoder", "task__kind": "classification"},
     "task.kind describe(s) a task from your own files, but task.train_files is empty, so the "
     "bundled task 'sst2' would run with it ignored"),
    ({"model__position": "rope", "model__rope_base": 0.0},
     "config model.rope_base=0.0 must be > 1 (the base of the rotary positions' wavelengths"),
    ({"model__position": "relative", "model__relative_buckets": 0},
     "model.relative_buckets=0 must be >= 4"),
])
def test_options_that_would_be_ignored_or_fail_late_are_one_line(sections, message):
  with pytest.raises(ConfigError) as error:
    _config(**sections)
  assert message in str(error.value) and "\n" not in str(error.value)


def test_splash_is_refused_on_cpus_only_where_the_kernel_would_run(tmp_path):
  splash = shrunk_config(2, **{"model.attention": "splash", "model.max_len": 128,
                               "data.seq_len": 128})
  with pytest.raises(ConfigError, match="model.attention='splash' is a TPU kernel and these "
                                        "devices are CPUs; use --config.model.attention=auto"):
    train.train_and_evaluate(splash, tmp_path / "run")
  assert not (tmp_path / "run").exists()  # nothing that would refuse the corrected run
  train.check_attention_runs(splash, platform="tpu")
  # 32-token rows: the kernel cannot run them and falls back to XLA (tests/test_init_from.py)
  train.check_attention_runs(shrunk_config(2, **{"model.attention": "splash"}))


# --- 7. Resume rules that match what changes the parameters ----------------------------------


def test_resume_keeps_going_with_another_kernel_remat_or_dropout(trained):
  before = _files(trained)
  for key, value in (("model.attention", "xla"), ("model.remat", "full"),
                     ("model.dropout_rate", 0.1)):
    train.check_resumable(trained, shrunk_config(2, **{key: value, "model.vocab_size": 68}))
  with pytest.raises(UserError, match=r"holds a run of a different model \(model.embed_dim: "
                                      "32 -> 48"):
    train.check_resumable(trained, shrunk_config(2, **{"model.embed_dim": 48,
                                                       "model.vocab_size": 68}))
  assert _files(trained) == before


def test_a_non_utf8_prompt_and_chat_without_stdin_are_one_line(trained):
  env = cli_env(1)
  run = lambda args, **kw: subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, env=env,
                                          capture_output=True, timeout=300, **kw)
  result = run(["research.generate", f"--workdir={trained}", b"--prompt=caf\xe9",
                "--max_new_tokens=2"])
  result.stderr = result.stderr.decode("utf-8", "replace")
  assert ("--prompt holds byte 0xe9 at character 3, which is not UTF-8 text"
          in _one_error(result))
  result = run(["research.chat", f"--workdir={trained}", b"--prompt=\xff hi"])
  result.stderr = result.stderr.decode("utf-8", "replace")
  assert "--prompt holds byte 0xff at character 0" in _one_error(result)
  command = f"exec {sys.executable} -m research.chat --workdir={trained} <&-"
  result = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
  assert "chat reads its messages from the terminal, and stdin is closed" in _one_error(result)
