"""Reliability with real processes: SIGKILL and SIGTERM, kills during a save, non-finite losses,
restoring onto other meshes, two processes as one 8-device mesh, determinism.

Kill points are drawn from a seed printed at the start of the test (set KILL_SEED to replay).
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import sys
import time

import jax
import numpy as np
import pytest

from research import train
from research.checkpoint import Checkpointer
from xla_flags import cli_env
from tests import cli
from tests.test_train import CONFIG, SHRINK, shrunk_config

BASE_FLAGS = [f"--config={CONFIG}"] + [f"--config.{k}={v}" for k, v in SHRINK.items()]


@pytest.fixture
def kill_rng():
  seed = int(os.environ.get("KILL_SEED", time.time_ns() % 1_000_000))
  print(f"\nkill points drawn with KILL_SEED={seed}")
  return np.random.default_rng(seed)


def env_for(devices: int) -> dict:
  return cli_env(devices)


def train_cmd(workdir, *flags):
  return [sys.executable, "-m", "research.train", f"--workdir={workdir}", *BASE_FLAGS, *flags]


def run_train(workdir, *flags, devices=1, check=True):
  result = cli.run("research.train", train_cmd(workdir, *flags)[3:], env=env_for(devices),
                   timeout=600)
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


def start_train(workdir, *flags, devices=1) -> cli.Process:
  return cli.start("research.train", train_cmd(workdir, *flags)[3:], env=env_for(devices))


def logged_losses(workdir) -> dict[int, float]:
  """The last logged training loss of each step (a resumed run logs some steps again)."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  losses = {}
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        record = json.loads(line)
      except json.JSONDecodeError:  # a line cut by a kill
        continue
      if "train/loss" in record:
        losses[record["step"]] = record["train/loss"]
  return losses


def wait_for_step(workdir, step, proc, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if logged_losses(workdir) and max(logged_losses(workdir)) >= step:
      return
    if proc.poll() is not None:  # a cli.Process holds its stderr as text; a Popen, a pipe
      stderr = proc.stderr if isinstance(proc, cli.Process) else proc.stderr.read()
      raise AssertionError(f"training exited early: {stderr[-3000:]}")
    time.sleep(0.05)
  raise AssertionError(f"step {step} not reached in {timeout}s")


def params_of(workdir):
  _, _, params = train.restore_params(workdir)
  return jax.device_get(params)


def assert_bit_identical(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """12 uninterrupted steps on one device: the reference for the kill tests."""
  workdir = tmp_path_factory.mktemp("straight") / "run"
  run_train(workdir, "--config.train.steps=12")
  return workdir


def test_sigkill_at_a_random_step_then_rerun_is_bit_identical(tmp_path, kill_rng, straight_run):
  workdir = tmp_path / "killed"
  kill_at = int(kill_rng.integers(2, 11))
  proc = start_train(workdir, "--config.train.steps=12")
  wait_for_step(workdir, kill_at, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  run_train(workdir, "--config.train.steps=12")  # the same command again
  assert logged_losses(workdir) == logged_losses(straight_run)  # exact, every step
  assert_bit_identical(params_of(workdir), params_of(straight_run))


def _kill_inside_a_save(workdir, proc, after_step: int) -> list[pathlib.Path]:
  """SIGKILLs the run the moment a save is in flight (a `*.orbax-checkpoint-tmp` folder), once
  step `after_step` has been saved; returns the partial folders the kill left (none when the
  save completed between the look and the kill, or the run ended first)."""
  checkpoints = workdir / "checkpoints"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    names = os.listdir(checkpoints) if checkpoints.is_dir() else []
    saved = [int(n) for n in names if n.isdigit()]
    if saved and max(saved) >= after_step and any(".orbax-checkpoint-tmp" in n for n in names):
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.001)
  proc.kill()
  proc.wait()
  return list(checkpoints.glob("*.orbax-checkpoint-tmp*"))


def test_kill_during_asynchronous_saves_restarts_from_a_complete_checkpoint(
    tmp_path, kill_rng, straight_run):
  # A checkpoint every step; the kill waits for a save in flight, so it always lands in one
  # (a save can still finish between the look and the kill: then the run is tried again).
  for attempt in range(6):
    workdir = tmp_path / f"killed_saving{attempt}"
    proc = start_train(workdir, "--config.train.steps=12", "--config.train.checkpoint_every=1")
    partials = _kill_inside_a_save(workdir, proc, int(kill_rng.integers(1, 9)))
    if partials:
      break
  print(f"partial saves left by the kill (attempt {attempt}): {[p.name for p in partials]}")
  assert partials, "no kill landed inside a save in 6 runs"
  steps = Checkpointer(workdir, read_only=True).all_steps()
  for step in steps:  # every listed step is complete: no item of it left half written
    step_dir = workdir / "checkpoints" / str(step)
    assert (step_dir / "state").is_dir() and (step_dir / "config").is_dir()
    assert not list(step_dir.glob("*.orbax-checkpoint-tmp*")), sorted(step_dir.iterdir())
  # The partial save is never taken as the latest step.
  latest = max(steps)
  assert all(int(p.name.split(".")[0]) > latest for p in partials)
  assert Checkpointer(workdir, read_only=True).latest_step() == latest
  result = run_train(workdir, "--config.train.steps=12", "--config.train.checkpoint_every=1")
  assert f"resumed from {workdir.resolve() / 'checkpoints' / str(latest)}" in result.stderr
  assert logged_losses(workdir) == logged_losses(straight_run)
  assert_bit_identical(params_of(workdir), params_of(straight_run))
  assert not list((workdir / "checkpoints").glob("*.orbax-checkpoint-tmp*"))  # cleaned up


def test_sigterm_checkpoints_and_exits_zero_then_continues(tmp_path):
  workdir = tmp_path / "preempted"
  proc = start_train(workdir, "--config.train.steps=100000", "--config.train.checkpoint_every=1000")
  wait_for_step(workdir, 3, proc)
  sent = time.time()
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=30) == 0, proc.stderr[-3000:]
  assert time.time() - sent < 30
  latest = Checkpointer(workdir, read_only=True).latest_step()
  assert latest is not None and latest == max(logged_losses(workdir))
  result = run_train(workdir, f"--config.train.steps={latest + 2}")
  assert "resumed from" in result.stderr
  assert max(logged_losses(workdir)) == latest + 2


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path):
  workdir = tmp_path / "nan"
  run_train(workdir, "--config.train.steps=4")
  before = {p: p.read_bytes() for p in (workdir / "checkpoints").rglob("*") if p.is_file()}
  result = run_train(workdir, "--config.train.steps=12", "--config.optimizer.learning_rate=1e12",
                     check=False)
  assert result.returncode != 0
  assert "non-finite loss or gradient at step" in result.stderr
  assert "the latest checkpoint (step 4) is intact" in result.stderr
  assert "Traceback" not in result.stderr
  after = {p: p.read_bytes() for p in (workdir / "checkpoints").rglob("*") if p.is_file()}
  assert after == before


def test_nonfinite_steps_can_be_skipped_and_counted(tmp_path):
  config = shrunk_config(6, **{"optimizer.learning_rate": 1e12, "optimizer.clip_norm": 0.0,
                               "train.nonfinite": "skip", "train.checkpoint_every": 6})
  train.train_and_evaluate(config, tmp_path / "skip")
  records = [json.loads(l) for l in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
  skipped = [r["train/skipped_steps"] for r in records if "train/skipped_steps" in r]
  assert skipped[-1] > 0 and skipped == sorted(skipped)
  _, _, params = train.restore_params(tmp_path / "skip")
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(params)))


def test_checkpoint_from_mesh_222_continues_on_other_meshes(tmp_path):
  mesh_222 = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
  straight = tmp_path / "straight"
  train.train_and_evaluate(shrunk_config(8, **mesh_222), straight)
  start = tmp_path / "start"
  train.train_and_evaluate(shrunk_config(4, **mesh_222), start)
  reference = logged_losses(straight)
  # One device, and another 8-device layout (every axis changes size); data=8 alone is a
  # subcase of the second, left out to keep the suite short.
  for name, devices, mesh in [("one_device", 1, (1, 1, 1)), ("fsdp2_tensor4", 8, (1, 2, 4))]:
    workdir = tmp_path / name
    shutil.copytree(start, workdir)
    result = run_train(workdir, "--config.train.steps=8", f"--config.mesh.data={mesh[0]}",
                       f"--config.mesh.fsdp={mesh[1]}", f"--config.mesh.tensor={mesh[2]}",
                       devices=devices)
    assert "resumed from" in result.stderr
    losses = logged_losses(workdir)
    np.testing.assert_allclose([losses[s] for s in range(5, 9)],
                               [reference[s] for s in range(5, 9)], rtol=2e-5, err_msg=name)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_as_one_eight_device_mesh(tmp_path):
  single = tmp_path / "single"
  run_train(single, "--config.train.steps=6", devices=8)
  multi = tmp_path / "multi"
  port = _free_port()
  procs = [start_train(multi, "--config.train.steps=6", f"--coordinator_address=127.0.0.1:{port}",
                       "--num_processes=2", f"--process_id={i}", devices=4) for i in range(2)]
  for p in procs:
    assert p.wait(timeout=600) == 0, p.stderr[-3000:]
  np.testing.assert_allclose(list(logged_losses(multi).values()),
                             list(logged_losses(single).values()), rtol=2e-5)
  step_dir = multi / "checkpoints" / "6"
  assert sorted(p.name for p in (step_dir / "data").glob("process_*")) == [
      "process_0-of-2.json", "process_1-of-2.json"]  # each process saved its own data position
  assert sorted(p.name for p in (multi / "checkpoints").iterdir() if p.name.isdigit()) == [
      "2", "4", "6"]


def test_same_config_and_seed_give_bit_identical_parameters(tmp_path):
  train.train_and_evaluate(shrunk_config(4), tmp_path / "a")
  train.train_and_evaluate(shrunk_config(4), tmp_path / "b")
  assert_bit_identical(params_of(tmp_path / "a"), params_of(tmp_path / "b"))
  assert logged_losses(tmp_path / "a") == logged_losses(tmp_path / "b")
