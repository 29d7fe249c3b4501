"""A workdir is never corrupted (issue #18): one writer at a time, a failed start writes
nothing, resume checks the data, Ctrl-C saves, a full disk is one line, exports never overwrite
a workdir, and processes preparing one dataset at once all succeed.

Each case starts the real CLIs (or real processes) on the shrunk Tiny Shakespeare config.
"""

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from research.paths import REPO_ROOT
from xla_flags import cli_env
from tests import cli
from tests.test_train import CONFIG, SHRINK

FLAGS = [f"--config={CONFIG}"] + [f"--config.{k}={v}" for k, v in SHRINK.items()]


def _cli(module, args, timeout=300):
  return cli.run(module, args, env=cli_env(1), timeout=timeout)


def _one_error(result) -> str:
  """The one 'error:' line of a failed CLI; no traceback, no 'Exception ignored'."""
  assert result.returncode != 0, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, (
      result.stderr[-3000:])
  return errors[0]


def _files(path: pathlib.Path) -> dict:
  return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir trained for 4 steps (checkpoints at 2 and 4)."""
  path = tmp_path_factory.mktemp("safety") / "run"
  result = _cli("research.train", [f"--workdir={path}", *FLAGS, "--config.train.steps=4"])
  assert result.returncode == 0, result.stderr[-3000:]
  return path


def _copy(trained, tmp_path) -> pathlib.Path:
  target = tmp_path / "copy"
  shutil.copytree(trained, target)
  return target


# --- one run per workdir ------------------------------------------------------------------------

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from research import locks
    with locks.workdir_lock(sys.argv[1], "research.train"):
      print("held", flush=True)
      time.sleep(600)
""")


def _hold_lock(workdir) -> subprocess.Popen:
  holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(workdir)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"
  return holder


def test_second_writer_stops_naming_the_holder_and_sigkill_releases(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  before = _files(workdir)
  holder = _hold_lock(workdir)
  try:
    for module, args in [("research.train", [*FLAGS, "--config.train.steps=6"]),
                         ("research.evaluate", [])]:
      error = _one_error(_cli(module, [f"--workdir={workdir}", *args]))
      assert f"in use by research.train (pid {holder.pid} on host" in error, error
    assert {p: b for p, b in _files(workdir).items() if p.name != ".lock"} == {
        p: b for p, b in before.items() if p.name != ".lock"}
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # The kernel released the killed holder's lock: the next run goes ahead.
  result = _cli("research.train", [f"--workdir={workdir}", *FLAGS, "--config.train.steps=6"])
  assert result.returncode == 0, result.stderr[-3000:]


def test_two_runs_started_together_one_runs_one_refuses(tmp_path):
  workdir = tmp_path / "cc"
  args = [f"--workdir={workdir}", *FLAGS, "--config.train.steps=4"]
  procs = [cli.start("research.train", args, env=cli_env(1)) for _ in range(2)]
  results = [(p.wait(timeout=300), p.stderr) for p in procs]
  codes = sorted(code for code, _ in results)
  assert codes == [0, 2], [err[-2000:] for _, err in results]
  refused = next(err for code, err in results if code == 2)
  assert "is in use by research.train" in refused and "Traceback" not in refused
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in records if "train/loss" in r]
  assert steps == [1, 2, 3, 4]  # one run's lines only
  assert not list((workdir / "checkpoints").glob("*.orbax-checkpoint-tmp*"))


# --- a failed start writes nothing ------------------------------------------------------------


def test_failed_start_writes_nothing(tmp_path):
  fresh, empty = tmp_path / "fresh", tmp_path / "empty"
  empty.mkdir()
  for workdir in (fresh, empty):
    error = _one_error(_cli("research.train", [f"--workdir={workdir}", *FLAGS,
                                               "--config.model.vocab_size=5"]))
    assert "model.vocab_size=5" in error
  assert not fresh.exists()
  assert list(empty.iterdir()) == []
  # The corrected rerun builds its own tokenizer (nothing was kept from the failed start).
  result = _cli("research.train", [f"--workdir={empty}", *FLAGS, "--config.train.steps=2"])
  assert result.returncode == 0, result.stderr[-3000:]


# --- resume checks the data; changed settings are said and kept --------------------------------


def _corpus(folder: pathlib.Path, words: str) -> str:
  folder.mkdir(parents=True)
  for i in range(2):
    (folder / f"doc{i}.txt").write_text(" ".join(words.split() * 200))
  return str(folder / "*.txt")


def test_resume_refuses_other_data_and_reports_changed_settings(tmp_path):
  workdir = tmp_path / "run"
  data = ["--config.data.dataset=text_files", "--config.data.validation_fraction=0.5",
          f"--config.data.data_dir={tmp_path / 'tfds'}"]
  first = _corpus(tmp_path / "a", "the cat sat on the mat")
  result = _cli("research.train", [f"--workdir={workdir}", *FLAGS, *data,
                                   f"--config.data.files={first}", "--config.train.steps=2"])
  assert result.returncode == 0, result.stderr[-3000:]
  config_before = (workdir / "config.json").read_text()
  other = _corpus(tmp_path / "b", "ZYX QWV 123 456")
  error = _one_error(_cli("research.train", [f"--workdir={workdir}", *FLAGS, *data,
                                             f"--config.data.files={other}",
                                             "--config.train.steps=4"]))
  assert "trained on other data" in error and "new files" in error, error
  assert (workdir / "config.json").read_text() == config_before
  # Refused before the other corpus was read: it was never prepared.
  assert len(list((tmp_path / "tfds" / "text_files").glob("corpus_*"))) == 1
  # Same data, another seed: resumes, says so in one line, keeps the old config in the history.
  result = _cli("research.train", [f"--workdir={workdir}", *FLAGS, *data,
                                   f"--config.data.files={first}", "--config.train.steps=4",
                                   "--config.train.seed=7"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "changed settings (train.seed: 0 -> 7" in result.stderr
  assert "continues with the new values" in result.stderr
  history = (workdir / "config_history.jsonl").read_text().splitlines()
  assert json.loads(history[0]) == json.loads(config_before)
  # train.steps below the step reached: one line, nothing trained.
  result = _cli("research.train", [f"--workdir={workdir}", *FLAGS, *data,
                                   f"--config.data.files={first}", "--config.train.steps=2",
                                   "--config.train.seed=7"])
  assert result.returncode == 0 and "nothing to train" in result.stderr, result.stderr[-2000:]
  assert "changed settings" not in result.stderr  # one line says what happens


# --- truncated small files ------------------------------------------------------------------


@pytest.mark.parametrize("name, message", [
    ("config.json", "config.json is truncated or corrupt"),
    ("tokenizer/manifest.json", "manifest.json is truncated or corrupt"),
])
def test_truncated_small_file_is_one_line(trained, tmp_path, name, message):
  workdir = _copy(trained, tmp_path)
  path = workdir / name
  path.write_bytes(path.read_bytes()[:20])
  before = _files(workdir / "checkpoints")
  error = _one_error(_cli("research.train", [f"--workdir={workdir}", *FLAGS,
                                             "--config.train.steps=6"]))
  assert message in error and str(path) in error, error
  assert _files(workdir / "checkpoints") == before


def test_truncated_data_cache_is_rebuilt_and_missing_config_is_read_from_checkpoint(
    trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  for cache in (workdir / "data_cache").glob("*.npy"):
    cache.write_bytes(cache.read_bytes()[:100])
  (workdir / "config.json").unlink()
  result = _cli("research.train", [f"--workdir={workdir}", *FLAGS, "--config.train.steps=6"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "using the config saved in checkpoint step 4" in result.stderr
  assert "rebuilding" in result.stderr
  assert "delete" not in result.stderr
  assert (workdir / "config.json").exists()


# --- Ctrl-C ---------------------------------------------------------------------------------


def test_ctrl_c_saves_the_step_and_resume_logs_no_duplicates(tmp_path):
  workdir = tmp_path / "run"
  args = [f"--workdir={workdir}", *FLAGS, "--config.train.steps=100000",
          "--config.train.checkpoint_every=100000", "--config.train.log_every=1"]
  proc = cli.start("research.train", args, env=cli_env(1))
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and (not metrics.exists() or
                                    len(metrics.read_text().splitlines()) < 5):
    time.sleep(0.2)
  proc.send_signal(signal.SIGINT)
  proc.wait(timeout=120)
  stdout, stderr = proc.stdout, proc.stderr
  assert proc.returncode == 130, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  assert "interrupted: checkpoint of step" in stdout  # the progress bar's line
  steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
  assert len(steps) == 1 and steps[0] >= 5  # the step it was in, not a periodic checkpoint
  # Lines logged after the checkpoint (and a line cut short) are dropped on resume.
  with open(metrics, "a") as f:
    f.write(json.dumps({"step": steps[0] + 1, "train/loss": 1.0}) + "\n{\"step\": 9")
  result = _cli("research.train", [f"--workdir={workdir}", *FLAGS,
                                   f"--config.train.steps={steps[0] + 2}"])
  assert result.returncode == 0, result.stderr[-3000:]
  logged = [json.loads(l)["step"] for l in metrics.read_text().splitlines()
            if "train/loss" in json.loads(l)]
  assert logged == sorted(set(logged)) and logged[-1] == steps[0] + 2


# --- disk full --------------------------------------------------------------------------------


# The CLI with the space check before each save turned off: orbax itself then runs out of space.
WITHOUT_SPACE_CHECK = textwrap.dedent("""
    import runpy, sys
    from research import checkpoint
    def no_check(self, step, state):
      self._saving = step
    checkpoint.Checkpointer._check_space = no_check
    sys.argv = ["research.train", *sys.argv[1:]]
    runpy.run_module("research.train", run_name="__main__")
""")


@contextlib.contextmanager
def small_tmpfs(mount: pathlib.Path, size: str):
  """A tmpfs of `size` (as root) mounted at `mount`, unmounted afterwards; skips where it cannot
  be mounted (not root, no mount command)."""
  if os.geteuid() != 0 or not shutil.which("mount"):
    pytest.skip("needs root to mount a small tmpfs")
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)]).returncode:
    pytest.skip("cannot mount a tmpfs here")
  try:
    yield mount
  finally:
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("space_check", [True, False], ids=["checked_before", "orbax_fails"])
def test_disk_full_during_a_save_is_one_line(tmp_path, space_check):
  # Room for the data cache and tokenizer (4.3 MB), the first checkpoint, not the second.
  with small_tmpfs(tmp_path / "small", "4700k") as mount:
    workdir = mount / "run"
    args = [f"--workdir={workdir}", *FLAGS, "--config.train.steps=30",
            "--config.train.checkpoint_every=10", "--config.train.log_every=10"]
    if space_check:
      result = _cli("research.train", args)
    else:
      result = subprocess.run([sys.executable, "-c", WITHOUT_SPACE_CHECK, *args], cwd=REPO_ROOT,
                              env=dict(cli_env(1), PYTHONPATH=str(REPO_ROOT)),
                              capture_output=True, text=True, timeout=300)
    # With orbax saving in the background, the full disk also fails the run's other writes
    # (metrics, TensorBoard) and tensorstore's callbacks: still the one line, naming the save.
    error = _one_error(result)
    assert "no space left" in error, error
    assert "while saving step 20" in error, error
    assert "the last complete checkpoint is step 10 (intact)" in error, error
    steps = sorted(p.name for p in (workdir / "checkpoints").iterdir()
                   if not p.name.endswith("-tmp"))
    assert steps == ["10"], steps


def test_disk_full_in_another_write_names_the_step_and_the_last_checkpoint(tmp_path):
  """A write of the run besides a save (metrics, TensorBoard) that finds the disk full: the
  same one line, naming the write and step (in-process: no small disk needed)."""
  import errno  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from research import checkpoint  # pylint: disable=import-outside-toplevel
  ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
  ckpt.save(2, {"w": np.zeros(2)}, force=True)
  full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "metrics.jsonl"))
  error = str(ckpt.disk_full(full, 3))
  assert "no space left on the device of" in error, error
  assert "while writing metrics.jsonl at step 3" in error, error
  assert "the last complete checkpoint is step 2 (intact)" in error, error
  ckpt.close()  # reported already: closing raises nothing more


def test_a_background_save_that_fails_is_named_for_its_own_step(tmp_path):
  """An asynchronous save's error surfaces when the next save begins, and may not carry its
  folder's path: the one line still names the step that failed, not the one starting."""
  import errno  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from research import checkpoint  # pylint: disable=import-outside-toplevel
  ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
  state = {"w": np.zeros(2)}
  ckpt.save(10, state, force=True)
  ckpt.save(20, state, force=True)
  waits = []

  def failing_wait():  # the step-20 save "still in flight" fails, with no path in its message
    waits.append(1)
    if len(waits) == 1:
      raise OSError(errno.ENOSPC, "No space left on device")

  ckpt._manager.wait_until_finished = failing_wait  # pylint: disable=protected-access
  with pytest.raises(checkpoint.CheckpointError) as raised:
    ckpt.save(30, state, force=True)
  assert "while saving step 20" in str(raised.value), raised.value
  ckpt.close()


def test_read_only_workdir_is_one_line_before_any_work(trained, tmp_path):
  if os.geteuid() != 0 or not shutil.which("mount"):
    pytest.skip("needs root to bind-mount a folder read-only")
  view = tmp_path / "ro"
  view.mkdir()
  if subprocess.run(["mount", "--bind", "-o", "ro", str(trained), str(view)]).returncode:
    pytest.skip("cannot bind-mount here")
  try:
    if os.access(view, os.W_OK) and subprocess.run(["touch", str(view / "probe")]).returncode == 0:
      pytest.skip("the bind mount is not read-only here")
    for module, args in [("research.train", [*FLAGS, "--config.train.steps=6"]),
                         ("research.evaluate", [])]:
      error = _one_error(_cli(module, [f"--workdir={view}", *args]))
      assert "is not writable" in error, error
  finally:
    subprocess.run(["umount", str(view)], check=False)


# --- convert --to_hf ------------------------------------------------------------------------


def test_export_never_overwrites_a_workdir_or_an_existing_model(tmp_path):
  workdir = tmp_path / "gpt2like"
  gpt2 = ["--config.model.position=learned", "--config.model.norm=layernorm",
          "--config.model.mlp_activation=gelu", "--config.model.use_bias=true"]
  result = _cli("research.train", [f"--workdir={workdir}", *FLAGS, *gpt2,
                                   "--config.train.steps=2"])
  assert result.returncode == 0, result.stderr[-3000:]
  # Importing into a workdir that is a file: one line, nothing written.
  afile = tmp_path / "afile"
  afile.write_text("x")
  gpt2_dir = REPO_ROOT / "tests" / "fixtures" / "hf" / "gpt2"
  error = _one_error(_cli("research.convert", [f"--workdir={afile}", f"--from_hf={gpt2_dir}"]))
  assert "is a file, not a folder" in error and afile.read_text() == "x"
  other = tmp_path / "other"
  shutil.copytree(workdir, other)
  before = _files(other)
  error = _one_error(_cli("research.convert", [f"--workdir={workdir}", f"--to_hf={other}"]))
  assert "is a training workdir" in error
  assert _files(other) == before
  out = tmp_path / "hf"
  assert _cli("research.convert", [f"--workdir={workdir}", f"--to_hf={out}"]).returncode == 0
  for f in out.iterdir():
    assert f.stat().st_mode & 0o777 == 0o644 & ~_umask(), (f, oct(f.stat().st_mode))
  exported = _files(out)
  error = _one_error(_cli("research.convert", [f"--workdir={workdir}", f"--to_hf={out}"]))
  assert "--overwrite" in error and _files(out) == exported
  assert _cli("research.convert", [f"--workdir={workdir}", f"--to_hf={out}",
                                   "--overwrite"]).returncode == 0


def _umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


# --- datasets prepared by many processes at once ---------------------------------------------

PREPARE = textwrap.dedent("""
    import sys
    from research.config import ExperimentConfig
    from research.data import corpora, tasks
    data_dir, corpus = sys.argv[1], sys.argv[2]
    cfg = ExperimentConfig.from_config_dict({"data": {
        "dataset": "text_files", "files": corpus, "data_dir": data_dir,
        "validation_fraction": 0.5}})
    texts = corpora.load_texts(cfg.data, "train")
    builder = tasks.prepared_builder("sst2", data_dir)
    print(len(texts), len(builder.as_data_source(split="train")))
""")


def test_processes_preparing_one_dataset_at_once_all_succeed(tmp_path):
  corpus = _corpus(tmp_path / "corpus", "one two three four")
  data_dir = tmp_path / "tfds"
  procs = [subprocess.Popen([sys.executable, "-c", PREPARE, str(data_dir), corpus],
                            cwd=REPO_ROOT, env=cli_env(1), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(4)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  # Every process read the same dataset (the last line: TFDS may print before it).
  assert len({out.strip().splitlines()[-1] for out, _ in outputs}) == 1, outputs
  assert not list(data_dir.rglob("incomplete*"))
