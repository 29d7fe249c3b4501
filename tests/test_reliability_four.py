"""Reliability, round three, the rest (issue #37, items 4, 7, 8 and bfloat16 resume): a full
disk at the first save and a second Ctrl-C during a save leave a workdir the same command
continues; a killed import or data preparation blocks nothing; gs:// workdirs have a lease
(here against a fake store with GCS's contract; tests/test_gcs.py runs it against the
emulator); a bfloat16-parameter run resumes bit for bit.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from research import checkpoint, lease, multiseed, train
from research import workdir as workdir_lib
from research.config import UserError
from research.locks import WorkdirInUse
from research.paths import REPO_ROOT
from xla_flags import cli_env
from tests.test_reliability_three import FLAGS, _files, _one_error
from tests.test_train import shrunk_config
from tests.test_workdir_safety import small_tmpfs


def _python(script: str, *args, timeout=300):
  return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                        cwd=REPO_ROOT, env=dict(cli_env(1), PYTHONPATH=str(REPO_ROOT)),
                        capture_output=True, text=True, timeout=timeout)


# --- 8. gs:// workdirs: a lease, against a fake store with GCS's preconditions ---------------


class FakeStore:
  """An object store with GCS's generation preconditions, in memory, on a settable clock."""

  def __init__(self):
    self.objects, self.now, self.generations = {}, 1000.0, 0
    self._lock = threading.Lock()

  def read(self, name):
    with self._lock:
      return self.objects.get(name)

  def write(self, name, data, if_generation_match):
    with self._lock:
      current = self.objects.get(name, (None, 0, None))[1]
      if current != if_generation_match:
        raise lease.PreconditionFailed(name)
      self.generations += 1
      self.objects[name] = (data, self.generations, self.now)
      return self.generations

  def delete(self, name, if_generation_match):
    with self._lock:
      if name in self.objects:
        if self.objects[name][1] != if_generation_match:
          raise lease.PreconditionFailed(name)
        del self.objects[name]


def test_a_lease_refuses_a_second_run_until_it_expires_and_stops_a_run_it_was_taken_from():
  store = FakeStore()
  clock = lambda: store.now
  first = lease.Lease(store, "gs://b/run", "research.train", 60, clock=clock)
  assert first.acquire() is None
  second = lease.Lease(store, "gs://b/run", "research.evaluate", 60, clock=clock)
  store.now += 30
  before = dict(store.objects)
  with pytest.raises(WorkdirInUse) as refused:
    second.acquire()
  assert store.objects == before  # the refused run wrote nothing
  assert str(refused.value).startswith(
      f"workdir gs://b/run is in use by research.train (pid {os.getpid()} on host ")
  assert ("its lease (gs://b/run/.lease) was renewed 30 s ago and expires 30 s after its holder "
          "stops renewing it; wait for it to finish or stop it, or use another --workdir"
          in str(refused.value))
  first.renew()  # the holder lives on: still refused after the first lease's duration
  store.now += 59
  with pytest.raises(WorkdirInUse):
    second.acquire()
  store.now += 2  # unrenewed for 61 s: expired, taken over with a note
  note = second.acquire()
  assert note.startswith(f"note: workdir gs://b/run was held by research.train (pid "
                         f"{os.getpid()} ") and "expired 1 s ago" in note
  assert "this run takes it over" in note
  first.check()  # it does not know yet ...
  first.renew()  # ... its next renewal finds another run's write
  with pytest.raises(lease.LeaseLost) as lost:
    first.check()
  assert str(lost.value).startswith("workdir gs://b/run was taken over by research.evaluate (pid ")
  assert "this run stopped without writing more" in str(lost.value)
  first.release()  # deletes nothing: the lease is the second run's
  assert json.loads(store.read(lease.LEASE_FILE)[0])["command"] == "research.evaluate"
  second.release()
  assert store.read(lease.LEASE_FILE) is None


def test_of_two_runs_taking_an_expired_lease_at_once_one_wins():
  store = FakeStore()
  clock = lambda: store.now
  lease.Lease(store, "gs://b/run", "killed", 10, clock=clock).acquire()
  store.now += 11
  a = lease.Lease(store, "gs://b/run", "a", 10, clock=clock)
  b = lease.Lease(store, "gs://b/run", "b", 10, clock=clock)
  real_read = store.read
  def read_then_let_b_take_it(name):
    current = real_read(name)
    store.read = real_read
    assert b.acquire().startswith("note: ")  # b writes between a's read and a's write
    return current
  store.read = read_then_let_b_take_it
  with pytest.raises(WorkdirInUse, match=r"is in use by b \(pid"):
    a.acquire()  # its write, conditioned on the generation it read, fails; it reads b's
  assert json.loads(store.read(lease.LEASE_FILE)[0])["command"] == "b"


def test_a_run_whose_lease_was_taken_writes_no_checkpoint(tmp_path):
  store = FakeStore()
  with lease.workdir_lease(tmp_path, "research.train", store=store) as held:
    ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
    ckpt.save(1, {"w": np.zeros(2)}, force=True)
    _, generation, _ = store.read(lease.LEASE_FILE)
    store.write(lease.LEASE_FILE, json.dumps({"command": "another run", "pid": 7}).encode(),
                generation)
    held.renew()
    with pytest.raises(lease.LeaseLost, match="was taken over by another run"):
      ckpt.reached_preemption(2)
    with pytest.raises(lease.LeaseLost):
      ckpt.save(2, {"w": np.ones(2)}, force=True)
    ckpt.close()
  assert checkpoint.Checkpointer(tmp_path, read_only=True).all_steps() == [1]
  assert json.loads(store.read(lease.LEASE_FILE)[0])["command"] == "another run"


@pytest.mark.parametrize("value", ["0", "soon", "inf"])
def test_a_bad_lease_duration_is_one_line(monkeypatch, value):
  monkeypatch.setenv(lease.SECONDS_ENV, value)
  with pytest.raises(UserError, match=rf"RESEARCH_LEASE_SECONDS='{value}' must be a number of "
                                      "seconds >= 1"):
    lease.lease_seconds()


# --- bfloat16 parameters resume bit for bit --------------------------------------------------


def test_a_bfloat16_run_resumes_bit_identically(tmp_path):
  config = shrunk_config(4, **{"model.param_dtype": "bfloat16", "train.checkpoint_every": 2,
                               "train.async_checkpoints": False})
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, workdir)
  reader = checkpoint.Checkpointer(workdir, read_only=True)
  straight = reader.restore_config(4)[checkpoint.CHECKSUMS_KEY]
  # Adam's first moment is saved float32 and comes back float32 (it was rounded to bfloat16).
  moments = [v for k, v in straight.items() if ".mu[" in k]
  assert moments and all(v.startswith("float32") for v in moments), straight
  assert any(v.startswith("bfloat16") for k, v in straight.items() if k.startswith(".params["))
  shutil.rmtree(workdir / "checkpoints" / "4")
  train.train_and_evaluate(config, workdir)  # resumes at step 2
  resumed = checkpoint.Checkpointer(workdir, read_only=True).restore_config(4)
  assert resumed[checkpoint.CHECKSUMS_KEY] == straight


def test_a_tensor_saved_in_another_dtype_is_checked_then_cast(tmp_path):
  """A checkpoint written before the fix holds a float32 moment where the state is bfloat16:
  it is read as saved, checked against its checksum, then cast."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
  saved = np.linspace(0, 1, 8, dtype=np.float32)
  ckpt.save(1, {"mu": saved}, config={"model": {}}, force=True)
  ckpt.close()
  target = {"mu": np.zeros(8, jnp.bfloat16)}
  restored = checkpoint.Checkpointer(tmp_path, read_only=True).restore(1, target)
  assert restored["mu"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(restored["mu"], saved.astype(jnp.bfloat16))
  folder = tmp_path / "checkpoints" / "1"
  record = json.loads((folder / "config" / "metadata").read_text())
  record[checkpoint.CHECKSUMS_KEY]["['mu']"] = "float32[8]:" + "0" * 64
  (folder / "config" / "metadata").write_text(json.dumps(record))
  with pytest.raises(checkpoint.CheckpointError, match=r"tensor \['mu'\] no longer matches"):
    checkpoint.Checkpointer(tmp_path, read_only=True).restore(1, target)


# --- 4. A full disk at the first save; a second Ctrl-C during a save -------------------------


def test_no_space_for_the_first_save_is_one_line_and_writes_no_step(tmp_path, monkeypatch):
  ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(checkpoint.shutil, "disk_usage",
                      lambda path: usage._replace(free=50_000))
  with pytest.raises(checkpoint.DiskFullError) as full:
    ckpt.save(2, {"w": np.zeros(100_000, np.float32)}, force=True)
  message = str(full.value)
  assert "no space left on the device of" in message and "while saving step 2" in message
  assert "no checkpoint was complete yet: free space and rerun the same command" in message
  assert "\n" not in message
  ckpt.close()
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == []


# The CLI with the disk filled (a file taking all but 40 KB) just before its first save, and the
# space check off: orbax itself runs out of space midway through writing the step.
FILL_AT_FIRST_SAVE = """
    import os, runpy, shutil, sys
    from research import checkpoint
    filler = sys.argv.pop(1)
    save = checkpoint.Checkpointer.save
    def filling_save(self, step, *args, **kwargs):
      if not os.path.exists(filler):
        free = shutil.disk_usage(os.path.dirname(filler)).free
        with open(filler, "wb") as f:
          f.write(b"x" * max(free - 40_000, 0))
      return save(self, step, *args, **kwargs)
    checkpoint.Checkpointer.save = filling_save
    checkpoint.Checkpointer._check_space = lambda self, step, state: setattr(self, "_saving", step)
    sys.argv = ["research.train", *sys.argv[1:]]
    runpy.run_module("research.train", run_name="__main__")
"""


@pytest.fixture
def small_disk(tmp_path):
  """A 16 MB tmpfs (as root), unmounted afterwards."""
  with small_tmpfs(tmp_path / "small", "16m") as mount:
    yield mount


def test_a_first_save_that_runs_out_of_space_midway_leaves_no_step(small_disk, monkeypatch,
                                                                     capsys):
  """orbax itself runs out of space (the space check off: the disk filled under it)."""
  monkeypatch.setattr(checkpoint.Checkpointer, "_check_space",
                      lambda self, step, state: setattr(self, "_saving", step))
  ckpt = checkpoint.Checkpointer(small_disk, async_save=False)
  filler = small_disk / "filler"
  filler.write_bytes(b"x" * (shutil.disk_usage(small_disk).free - 40_000))
  state = {"w": np.arange(100_000, dtype=np.float32)}
  with pytest.raises(checkpoint.DiskFullError) as full:
    ckpt.save(2, state, config={"model": {}}, force=True)
  assert "while saving step 2" in str(full.value) and "\n" not in str(full.value)
  assert "no checkpoint was complete yet: free space and rerun the same command" in str(
      full.value)
  ckpt.close()
  filler.unlink()
  again = checkpoint.Checkpointer(small_disk, async_save=False)  # the same command, rerun
  assert again.all_steps() == []
  again.save(2, state, config={"model": {}}, force=True)
  again.close()
  np.testing.assert_array_equal(checkpoint.Checkpointer(small_disk, read_only=True).restore(
      2, {"w": np.zeros_like(state["w"])})["w"], state["w"])


def test_a_second_ctrl_c_midway_through_a_save_leaves_the_steps_before(tmp_path, monkeypatch,
                                                                        capsys):
  """The KeyboardInterrupt that PreemptionWatcher raises on a second Ctrl-C, arriving while
  orbax writes step 4 (the CLI itself: the slow test below)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  original = ocp.handlers.JsonCheckpointHandler.async_save
  def interrupted(self, directory, *args, **kwargs):
    if "/4." in str(directory):
      raise KeyboardInterrupt
    return original(self, directory, *args, **kwargs)
  monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "async_save", interrupted)
  ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
  ckpt.save(2, {"w": np.zeros(4)}, config={"model": {}}, force=True)
  with pytest.raises(KeyboardInterrupt):
    ckpt.save(4, {"w": np.ones(4)}, config={"model": {}}, force=True)
  ckpt.close()
  monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "async_save", original)
  capsys.readouterr()
  again = checkpoint.Checkpointer(tmp_path)  # the rerun
  note = capsys.readouterr().err
  assert again.all_steps() == [2]
  assert note.startswith(f"note: the save of step 4 in {tmp_path}/checkpoints was cut short")
  again.save(4, {"w": np.ones(4)}, config={"model": {}}, force=True)
  again.close()
  assert checkpoint.Checkpointer(tmp_path, read_only=True).all_steps() == [2, 4]
  assert not [p for p in (tmp_path / "checkpoints").iterdir() if "tmp" in p.name]


@pytest.mark.slow  # two CLI runs (~20 s); the in-process test above checks the same
def test_the_disk_filling_at_the_first_save_is_one_line_and_the_rerun_continues(small_disk):
  workdir = small_disk / "run"
  args = [f"--workdir={workdir}", *FLAGS, "--config.train.steps=4",
          "--config.train.checkpoint_every=2", "--config.train.log_every=2"]
  result = _python(FILL_AT_FIRST_SAVE, small_disk / "filler", *args)
  error = _one_error(result)
  assert "no space left" in error and "while saving step 2" in error, error
  assert "no checkpoint was complete yet" in error, error
  os.unlink(small_disk / "filler")
  result = subprocess.run([sys.executable, "-m", "research.train", *args], cwd=REPO_ROOT,
                          env=cli_env(1), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  steps = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert steps == ["2", "4"], steps


# The CLI with two Ctrl-C (SIGINT) arriving while orbax writes step 4: the first asks for a
# checkpoint and a stop, the second stops at once, in the middle of the save.
SECOND_CTRL_C_MID_SAVE = """
    import os, runpy, signal, sys
    import orbax.checkpoint as ocp
    handler = ocp.handlers.JsonCheckpointHandler
    original = handler.async_save
    def interrupted(self, directory, *args, **kwargs):
      if "/4." in str(directory) or str(directory).endswith("/4"):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
      return original(self, directory, *args, **kwargs)
    handler.async_save = interrupted
    sys.argv = ["research.train", *sys.argv[1:]]
    runpy.run_module("research.train", run_name="__main__")
"""


@pytest.mark.slow  # two CLI runs (~20 s); the in-process test above checks the same
def test_a_second_ctrl_c_during_a_save_leaves_a_workdir_that_resumes(tmp_path):
  workdir = tmp_path / "run"
  args = [f"--workdir={workdir}", *FLAGS, "--config.train.steps=6",
          "--config.train.checkpoint_every=2", "--config.train.log_every=2"]
  result = _python(SECOND_CTRL_C_MID_SAVE, *args)
  assert result.returncode == 130, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == "interrupted", result.stderr[-2000:]
  complete = checkpoint.Checkpointer(workdir, read_only=True).all_steps()
  assert complete and max(complete) in (2, 4), complete
  result = subprocess.run([sys.executable, "-m", "research.train", *args], cwd=REPO_ROOT,
                          env=cli_env(1), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"resumed from {workdir}/checkpoints/{max(complete)}" in result.stderr
  if max(complete) == 2:  # step 4 was cut short: said, and removed
    assert (f"note: the save of step 4 in {workdir}/checkpoints was cut short (the run was "
            "stopped during it)") in result.stderr, result.stderr[-2000:]
  assert checkpoint.Checkpointer(workdir, read_only=True).latest_step() == 6
  assert not [p for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]


def test_multiseed_resumes_every_seed_from_the_last_step_all_of_them_saved(tmp_path, capsys):
  """A run stopped between the seeds' saves of one step (a second Ctrl-C, a kill)."""
  ckpts = [checkpoint.Checkpointer(tmp_path / f"seed{i}", async_save=False) for i in range(2)]
  for step in (2, 4):
    for ckpt in ckpts:
      ckpt.save(step, {"w": np.full(2, step)}, force=True)
  ckpts[0].save(6, {"w": np.full(2, 6)}, force=True)  # seed 1's save of step 6 never came
  assert multiseed._common_latest_step(ckpts) == 4  # pylint: disable=protected-access
  assert ckpts[0].all_steps() == [2, 4]
  assert ("note: the save of step 6 was cut short among the seeds (some workdirs hold it, "
          "others not); deleted it where it was, and every seed resumes from step 4"
          in capsys.readouterr().err)
  # Workdirs apart by more than one interrupted save are another matter: refused as before.
  ckpts[1].save(6, {"w": np.full(2, 6)}, force=True)
  ckpts[1].save(8, {"w": np.full(2, 8)}, force=True)
  ckpts[1].save(10, {"w": np.full(2, 10)}, force=True)
  with pytest.raises(UserError, match="hold checkpoints of different steps"):
    multiseed._common_latest_step(ckpts)  # pylint: disable=protected-access
  for ckpt in ckpts:
    ckpt.close()


# --- 7. A killed import or data preparation blocks nothing -----------------------------------


KILLED_IMPORT = """
    import os, signal, sys
    from research import checkpoint, convert
    close = checkpoint.Checkpointer.close
    def close_then_die(self):
      close(self)  # step 0 is complete; the side files and config.json are not written yet
      os.kill(os.getpid(), signal.SIGKILL)
    checkpoint.Checkpointer.close = close_then_die
    convert.import_hf(sys.argv[1], sys.argv[2])
"""


def test_a_killed_import_is_cleaned_up_by_the_next_try(tmp_path, capsys):
  from research import convert  # pylint: disable=import-outside-toplevel
  fixture = REPO_ROOT / "tests" / "fixtures" / "hf" / "gpt2"
  workdir = tmp_path / "imported"
  result = _python(KILLED_IMPORT, fixture, workdir)
  assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
  assert (workdir / "checkpoints" / "0").is_dir() and not (workdir / "config.json").exists()
  config, _ = convert.import_hf(fixture, workdir)
  err = capsys.readouterr().err
  assert (f"note: an import into {workdir} was stopped before it finished; removed what it left "
          "(checkpoints, tokenizer) and importing again") in err, err
  clean = tmp_path / "clean"
  convert.import_hf(fixture, clean)
  names = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*")
                              if p.is_file() and "checkpoints" not in p.parts)
  assert names(workdir) == names(clean)  # no marker, nothing left over
  assert not (workdir / workdir_lib.IMPORT_MARKER).exists()
  assert config.model.vocab_size > 0
  before = _files(workdir)
  with pytest.raises(UserError, match="already holds a workdir"):  # a finished one is kept
    convert.import_hf(fixture, workdir)
  assert _files(workdir) == before


KILLED_PREPARATION = """
    import os, signal, sys
    from research.config import DataConfig
    from research.data import corpora
    generate = corpora.TextFiles._generate_examples
    def die_midway(self, *args, **kwargs):
      for i, example in enumerate(generate(self, *args, **kwargs)):
        if i == 2:
          os.kill(os.getpid(), signal.SIGKILL)
        yield example
    corpora.TextFiles._generate_examples = die_midway
    corpora.prepared_builder(DataConfig(dataset="text_files", files=sys.argv[1],
                                        data_dir=sys.argv[2]))
"""


def test_a_killed_data_preparation_is_cleaned_up_by_the_next_try(tmp_path, capsys):
  from research.config import DataConfig  # pylint: disable=import-outside-toplevel
  from research.data import corpora  # pylint: disable=import-outside-toplevel
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for i in range(8):
    (corpus / f"{i}.txt").write_text(f"document {i} " * 50)
  data_dir = tmp_path / "tfds"
  result = _python(KILLED_PREPARATION, corpus, data_dir)
  assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
  left = list(data_dir.glob("*/*/incomplete.*")) + list(data_dir.glob("*/incomplete.*"))
  assert left, sorted(str(p) for p in data_dir.rglob("*"))
  cfg = DataConfig(dataset="text_files", files=str(corpus), data_dir=str(data_dir))
  assert len(list(corpora.load_texts(cfg, "train"))) + len(
      list(corpora.load_texts(cfg, "validation"))) == 8
  assert "note: removed what an earlier preparation of text_files left when it was stopped" in (
      capsys.readouterr().err)
  assert not list(data_dir.rglob("incomplete.*"))
