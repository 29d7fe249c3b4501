"""experiments/executor.py: run ids, claims, the local pool, and a tiny ablation on a local
two-node Ray cluster started in this process (ray.cluster_utils.Cluster): two drivers on one
output folder, one of the cluster's nodes killed while it trains a run, and the same results as
the local pool seed for seed; (slow) Ctrl-C of a Ray driver.

The Ray tests share one cluster and one run of the tiniest ablation (one arm, one budget, one
seed: its sweep's run and one fine-tuning) in which all three happen, and the local pool's run
of it starts first, in the background, while the cluster starts; every ablation of the module
shares one JAX compilation cache, so that the later runs load the programs the first
compiled."""

import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable

import pytest

from experiments import executor as executor_lib
from research.config import UserError
from research.paths import REPO_ROOT
from xla_flags import cli_env

# The tiniest ablation: encoder_mlm pretrains once (its sweep's only rate, seed 0) and fine-tunes
# on SST-2 (an encoder has no translation), at the one budget.
TINIEST = ["--tiny", "--arms=encoder_mlm", "--budgets=2.5e8", "--seeds=0"]
TAG = "flops2.5e8"
# Ray on loopback only: without this, Ray swaps 127.0.0.1 for the machine's network address.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# The test cluster's nodes: one Ray worker process started at a time (with two CPUs a node
# started a second, idle one beside each run's: ~1 CPU-second each), and no killing of workers
# when the machine's memory is nearly full (Ray's monitor counts the whole machine's memory,
# which other work on a shared test machine fills: it killed a task of a trial run there).
NODE_ENV = {**LOOPBACK, "RAY_worker_maximum_startup_concurrency": "1",
            "RAY_memory_monitor_refresh_ms": "0"}


def start_ablation(*args, stderr: pathlib.Path) -> subprocess.Popen:
  """The driver started in the background, its output in `stderr` (a pipe left unread while
  the test waits could fill and stall it)."""
  with open(stderr, "w", encoding="utf-8") as f:
    return subprocess.Popen(_command(args), cwd=REPO_ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=f)


def finish(process: subprocess.Popen, stderr: pathlib.Path) -> tuple[str, int]:
  process.wait(timeout=600)
  return stderr.read_text(), process.returncode


def _command(args) -> list[str]:
  return [sys.executable, "-m", "experiments.architecture_ablation", *args]


def _env() -> dict[str, str]:
  return {**cli_env(), **LOOPBACK}


def stage_values(out: pathlib.Path, tag: str = TAG, arm: str = "encoder_mlm") -> dict:
  """The numbers of the arm's records that the report is made from, seed by seed."""
  result = json.loads((out / arm / tag / "seed0" / "result.json").read_text())
  sweep = json.loads(next((out / arm / tag).glob("lr*/pretrain.json")).read_text())
  return {"sweep eval_loss": sweep["eval_loss"], "pretrain eval_loss":
          result["pretrain"]["eval_loss"], "pretrain curve": result["pretrain"]["curve"],
          "sst2": result["sst2"]["value"], "sst2 eval_loss": result["sst2"]["eval_loss"]}


# ---------------------------------------------------------------------------------------------
# Without Ray
# ---------------------------------------------------------------------------------------------


def test_a_run_is_its_resolved_config():
  config = {"model": {"num_layers": 2}, "data": {"files": "/out/a/corpus"}, "init_from": ""}
  run = executor_lib.Run("x", config, "/out/a/arm/pretrain", root="/out/a")
  moved = executor_lib.Run("x", {**config, "data": {"files": "/elsewhere/corpus"}},
                           "/elsewhere/arm/pretrain", root="/elsewhere")
  changed = executor_lib.Run("x", {**config, "model": {"num_layers": 3}}, run.workdir,
                             root="/out/a")
  assert run.id == moved.id != changed.id  # a moved folder keeps its ids, a new config not
  assert executor_lib.Run.from_json(json.loads(json.dumps(run.to_json()))) == run
  assert str(run.log) == "/out/a/arm/pretrain.log"


def test_resources_ask_ray_for_cores_gpus_and_tpu_hosts():
  assert executor_lib.parse_resources("cpus=4,gpus=1").ray_options() == {"num_cpus": 4.0,
                                                                         "num_gpus": 1.0}
  assert executor_lib.parse_resources("tpu=v4-8,tpu_chips=4").ray_options() == {
      "num_cpus": 1.0, "num_gpus": 0.0, "resources": {"TPU": 4, "TPU-v4-8-head": 1}}
  # A config whose mesh names 4 devices asks for 4 of the accelerator asked for.
  four = {"mesh": {"data": 2, "fsdp": 2, "tensor": 1}}
  assert executor_lib.Resources(gpus=1).for_config(four).gpus == 4
  assert executor_lib.Resources(tpu="v4-8", tpu_chips=1).for_config(four).tpu_chips == 4
  assert executor_lib.Resources(gpus=1).for_config({"mesh": {"data": -1}}).gpus == 1
  for bad, message in [("gpu=1", "cannot read 'gpu=1'"), ("cpus=x", "not a number"),
                       ("tpu=v4-8", "needs tpu_chips"), ("cpus=-1", "must not be negative")]:
    with pytest.raises(UserError, match=message):
      executor_lib.parse_resources(bad)


def test_a_claimed_run_waits_for_its_holder_and_a_finished_one_is_not_trained(tmp_path):
  run = executor_lib.Run("r", {"a": 1}, str(tmp_path / "run"))
  # Another process holds the claim for a second, then writes the run's marker, as a trainer
  # that finishes does.
  holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, os, time, json
fd = os.open({run.claim_path!r}, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(1.0)
open({str(run.marker)!r}, "w").write(json.dumps({{"id": {run.id!r}, "result": {{"eval/loss": 1.5}},
                                                  "seconds": 3.0, "resumed": False}}))
"""], stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline() == "held\n"
  waited, start = [], time.perf_counter()
  with executor_lib.claim(run, on_wait=waited.append, poll_s=0.1):
    assert time.perf_counter() - start > 0.5 and "waiting for it" in waited[0]
    outcome = executor_lib.finished(run)
  holder.wait()
  assert outcome.ok and outcome.skipped and outcome.result == {"eval/loss": 1.5}
  # A run of another config in that workdir is refused, not trained over.
  other = executor_lib.Run("r", {"a": 2}, run.workdir)
  assert executor_lib.execute(other).status == "config_error"


def test_results_rows_resolve_their_readme_overrides():
  # experiments.results hands the executor the config its README command would train.
  path = REPO_ROOT / "configs" / "gpt_shakespeare_char.py"
  config = executor_lib.config_with_overrides(path, [
      "train.seed=3", "optimizer.learning_rate=5e-5", "train.async_checkpoints=false",
      "model.attention=xla"])
  assert (config.train.seed, config.optimizer.learning_rate) == (3, 5e-5)
  assert config.train.async_checkpoints is False and config.model.attention == "xla"
  for bad, message in [("train.sede=3", "has no config key train.sede"),
                       ("train.steps=many", "'many' is no int"),
                       ("train.async_checkpoints=maybe", "is no bool")]:
    with pytest.raises(UserError, match=message):
      executor_lib.config_with_overrides(path, [bad])


def test_dry_run_lists_the_runs_and_their_resources_and_imports_no_ray(tmp_path):
  # The default path (the local executor) never imports Ray: not the drivers, not a dry run.
  out = tmp_path / "out"
  code = f"""
import sys
from absl import flags
from experiments import architecture_ablation, results, executor
architecture_ablation.define_flags()
flags.FLAGS(["x", "--out={out}", *{TINIEST!r}, "--dry_run", "--run_resources=cpus=2,gpus=1"])
try:
  architecture_ablation.main(["x"])
except SystemExit as e:
  assert not e.code, e.code
print("ray imported:", "ray" in sys.modules)
"""
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=cli_env(),
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.strip().splitlines()
  assert lines[-1] == "ray imported: False"
  assert lines[0].startswith(f"encoder_mlm {TAG} lr0.004 pretrain@{TAG}: to run; 2 CPU, 1 GPU")
  assert lines[1].startswith(f"encoder_mlm {TAG} seed0 sst2: to run")
  assert any(line.startswith("2 runs (2 to run), each asking for 2 CPU, 1 GPU")
             for line in lines)
  assert any(line.startswith(f"  encoder_mlm at {TAG}: 1 pretraining run(s), 1 fine-tuning run(s)")
             and "chip-hours at peak" in line for line in lines)
  assert not out.exists()  # nothing written


def test_a_config_error_is_reported_once(tmp_path):
  # A config that research.train refuses (exit status 2 on the command line) ends as
  # "config_error" at its first try, named in the board's line with its log. (In this process:
  # the pool's worker processes are the --tiny ablation's, tests/test_ablation.py.)
  from research.config import load_config_file  # pylint: disable=import-outside-toplevel
  config = load_config_file(str(REPO_ROOT / "configs" / "gpt_shakespeare_char.py")).to_dict()
  config["data"]["seq_len"] = 10**6  # longer than the model's positions
  lines = []
  board = executor_lib.Board(log=lines.append)
  with executor_lib.LocalPool(1, board) as pool:
    bad = executor_lib.Run("bad", config, str(tmp_path / "bad"))
    outcome = pool.run(bad)
  assert outcome.status == "config_error" and outcome.error
  assert sum("bad: config_error" in line for line in lines) == 1, lines
  assert str(bad.log) in lines[-1] and "[runs 0/0 done, 0 running, 1 failed" in lines[-1]
  assert not bad.marker.exists() and not (tmp_path / "bad").exists()


def test_ctrl_c_stops_the_executor_once():
  stopped = []

  class Stub(executor_lib.Executor):
    def stop(self):
      stopped.append(True)

  previous = signal.getsignal(signal.SIGINT)
  with executor_lib.StopOnSignal(Stub()) as stop:
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C while the runs checkpoint: no second stop
    deadline = time.time() + 5
    while not stopped and time.time() < deadline:
      time.sleep(0.01)
  assert stopped == [True] and stop.signal == signal.SIGINT
  assert signal.getsignal(signal.SIGINT) is previous


def test_the_ablation_records_what_its_runs_end_as(tmp_path):
  # What the executor answers becomes the ablation's records: a finished run a record, a
  # diverged seed a failure without one (a rerun tries it again), a config error a failure
  # reported once and no record; a sweep with a failed rate chooses no rate.
  from experiments import architecture_ablation as ablation  # pylint: disable=import-outside-toplevel
  from experiments.ablation_pool import Progress  # pylint: disable=import-outside-toplevel
  from experiments.ablation_spec import Plan, seed_dir  # pylint: disable=import-outside-toplevel

  class Answers(executor_lib.Executor):
    def __init__(self, answer):
      super().__init__(executor_lib.Board(log=lambda line: None))
      self.answer, self.runs = answer, []

    def submit(self, run):
      self.runs.append(run)
      future = executor_lib.concurrent.futures.Future()
      future.set_result(self.answer(run))
      return future

  plan = Plan(arm="decoder_lm", family="decoder", objective="causal_lm", parameters=1,
              vocab_size=68, flops_per_step=10**10, batch_size=16, seq_len=128,
              learning_rate=2e-3, diff=(), data_order="same")
  by_seed = {0: executor_lib.Outcome("done", {"eval/loss": 2.5}, 4.0),
             1: executor_lib.Outcome("diverged", error="loss is nan at step 3"),
             2: executor_lib.Outcome("config_error", error="data.seq_len too long")}
  answers = Answers(lambda run: by_seed[run.config["train"]["seed"]])
  run = ablation.Ablation(tmp_path, ["decoder_lm"], [1e11, 1e12], [0, 1, 2], [1.0], True,
                          {"decoder_lm": plan}, executor=answers)
  lines = []
  failed = run.run_budget("decoder_lm", 1e12, 2e-3, Progress([], {}), lines.append)
  # Every seed's pretraining at once, then the finished seed's fine-tunings.
  assert [r.name for r in answers.runs] == [
      *(f"decoder_lm flops1e12 seed{s} pretrain" for s in (0, 1, 2)),
      "decoder_lm flops1e12 seed0 sst2", "decoder_lm flops1e12 seed0 spa_eng"]
  assert failed[0] == "decoder_lm flops1e12 seed1: loss is nan at step 3"
  assert failed[1].startswith("decoder_lm flops1e12 seed2: config error: data.seq_len too long")
  assert str(tmp_path / "decoder_lm" / "flops1e12" / "seed2" / "pretrain.log") in failed[1]
  assert len(failed) == 2
  assert json.loads((seed_dir(tmp_path, "decoder_lm", 1e12, 0) / "result.json").read_text())[
      "pretrain"]["eval_loss"] == 2.5
  for seed in (1, 2):
    assert not (seed_dir(tmp_path, "decoder_lm", 1e12, seed) / "pretrain.json").exists()
  # The sweep: its one rate's run failed, so no rate is chosen and no budget runs.
  answers.answer = lambda run: executor_lib.Outcome("failed", error="worker exited")
  assert run.run_arm_at("decoder_lm", 1e11, Progress([], {}), lines.append) == [
      "decoder_lm: the sweep did not finish (failed: worker exited (log: "
      f"{tmp_path}/decoder_lm/flops1e11/lr0.002/pretrain.log))"]
  assert not (tmp_path / "decoder_lm" / "lr.json").exists()


# ---------------------------------------------------------------------------------------------
# Ray: a cluster of two nodes in this process
# ---------------------------------------------------------------------------------------------

# The ablation of the Ray tests and of the local pool's run they are compared with: the
# tiniest one (its sweep's run and one fine-tuning) at 102 steps with a checkpoint every 25,
# so that a node can be killed after the sweep's run has saved one and before its end (a step
# takes ~12 ms on the 2-core CPU: the 50-77 steps left leave over half a second for it).
RAY_ABLATION = ["--tiny", "--arms=encoder_mlm", "--budgets=5e9", "--seeds=0",
                "--checkpoint_every=25"]
RAY_TAG = "flops5e9"
LOCAL = {"node_ip_address": "127.0.0.1"}


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory) -> pathlib.Path:
  """The JAX compilation cache of this module's ablations: the suite's where it has one
  (scripts/test.sh sets JAX_COMPILATION_CACHE_DIR; other tests compile these tiny programs
  too), else one of this module's own."""
  suite = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  return pathlib.Path(suite) if suite else tmp_path_factory.mktemp("jax_cache")


def new_out(parent: pathlib.Path, cache: pathlib.Path) -> pathlib.Path:
  """A new output folder whose compilation cache (OUT/jax_cache) is `cache`."""
  out = parent / "out"
  out.mkdir(parents=True)
  (out / "jax_cache").symlink_to(cache)
  return out


@pytest.fixture(scope="module", autouse=True)
def start_the_local_pool_early(request):
  """The local pool's run starts with the module where a Ray test is to run: it runs beside the
  tests before those and the cluster's start, and compiles the programs the Ray runs then load
  from the cache."""
  if any("on_ray" in item.fixturenames for item in request.session.items
         if item.module is request.module):
    request.getfixturevalue("local_pool")


@pytest.fixture(scope="module")
def local_pool(compilation_cache, tmp_path_factory):
  """The local pool's run of RAY_ABLATION, started in the background: a function that waits for
  it and returns (OUT, stderr, exit status)."""
  out = new_out(tmp_path_factory.mktemp("local"), compilation_cache)
  stderr = out.parent / "driver.txt"
  process = start_ablation(f"--out={out}", *RAY_ABLATION, "--workers=1", stderr=stderr)
  yield lambda: (out, *finish(process, stderr))
  if process.poll() is None:  # a test failed before waiting for it
    process.kill()
    process.wait()


@pytest.fixture(scope="module")
def ray_head():
  """The cluster's head node, on loopback, without the cluster's nodes yet (`cluster` adds
  them): it takes no runs (its loss would end the cluster), and runs no autoscaler and no log
  monitor (the drivers take no log from Ray): 2-4 s less to start."""
  saved = {key: os.environ.get(key) for key in NODE_ENV}
  os.environ.update(NODE_ENV)
  from ray.cluster_utils import Cluster  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  cluster = Cluster(initialize_head=True, head_node_args={
      "num_cpus": 0, "include_dashboard": False, "no_monitor": True,
      "include_log_monitor": False, **LOCAL})
  print(f"Ray head up in {time.perf_counter() - start:.1f} s")
  yield cluster
  cluster.shutdown()
  for key, value in saved.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value


@pytest.fixture(scope="module")
def cluster(ray_head):
  """The head and two nodes of two CPUs (two runs at once) each."""
  start = time.perf_counter()
  for _ in range(2):
    ray_head.add_node(num_cpus=2, **LOCAL)
  ray_head.wait_for_nodes()
  print(f"Ray nodes up in {time.perf_counter() - start:.1f} s")
  return ray_head


def wait_for(found: Callable[[], Any], driver: subprocess.Popen, stderr: pathlib.Path,
             what: str, timeout_s: float = 300.0) -> Any:
  """Polls found() until it returns something true, while the driver runs."""
  deadline = time.time() + timeout_s
  while not (value := found()):
    if driver.poll() is not None or time.time() > deadline:
      driver.kill()
      pytest.fail(f"no {what} while the driver ran: {finish(driver, stderr)[0][-3000:]}")
    time.sleep(0.02)
  return value


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())


def sweep_workdir(out: pathlib.Path) -> pathlib.Path | None:
  found = list((out / "encoder_mlm" / RAY_TAG).glob("lr*/pretrain"))
  return found[0] if found else None


def run_log(workdir: pathlib.Path) -> str:
  log = pathlib.Path(f"{workdir}.log")
  return log.read_text() if log.exists() else ""


def ray_attempts(workdir: pathlib.Path) -> list[tuple[str, str]]:
  """(node, task) of each Ray task that took the run, from its log, in order."""
  return [tuple(line.split("Ray node ")[1].split(", attempt "))
          for line in run_log(workdir).splitlines() if "Ray node " in line]


def training_starts(workdir: pathlib.Path) -> int:
  """How many times the run's training started: executor.execute's line once it holds the
  run's claim."""
  return sum(" (id " in line for line in run_log(workdir).splitlines())


@dataclasses.dataclass(frozen=True)
class RayRun:
  """What the on_ray fixture did and found."""

  out: pathlib.Path
  drivers: list[tuple[str, int]]  # (stderr, exit status) of the first driver and the second
  killed: str  # the node that trained the sweep's run when it was killed
  other: str  # the cluster's other node
  checkpoint: int  # the sweep's run's last checkpoint then


@pytest.fixture(scope="module")
def on_ray(request, local_pool, ray_head, compilation_cache, tmp_path_factory) -> RayRun:
  """RAY_ABLATION on the cluster by two drivers on one output folder, with a node killed in the
  middle. The first driver starts alone; once the sweep's run has saved a checkpoint, the node
  that trains it is killed as a machine that loses power is: the run's worker process frozen
  at once (so it cannot reach its end meanwhile), the node's Ray processes killed, then the
  worker. Once Ray's retry of that task has claimed the run on the other node, the second
  driver starts: its tasks run on that node beside the retry (its second CPU). The first
  driver starts as soon as the head is up, and the nodes start while it does (its task waits
  for them)."""
  del local_pool  # started first: it runs while the cluster starts
  out = new_out(tmp_path_factory.mktemp("ray"), compilation_cache)
  flags = [f"--out={out}", *RAY_ABLATION, "--executor=ray", f"--ray_address={ray_head.address}"]
  logs = out.parent / "first.txt", out.parent / "second.txt"
  start = time.perf_counter()
  first = start_ablation(*flags, stderr=logs[0])
  cluster = request.getfixturevalue("cluster")
  workdir = wait_for(lambda: (w := sweep_workdir(out)) and checkpoint_steps(w) and w, first,
                     logs[0], "checkpoint of the sweep's run")
  holder = json.loads(pathlib.Path(f"{workdir}.claim").read_text())
  assert holder["host"] == socket.gethostname(), holder
  os.kill(holder["pid"], signal.SIGSTOP)
  if pathlib.Path(f"{workdir}.run.json").exists():
    os.kill(holder["pid"], signal.SIGCONT)
    pytest.fail("the sweep's run ended before its node could be killed")
  checkpoint = checkpoint_steps(workdir)[-1]
  killed = ray_attempts(workdir)[-1][0]
  cluster.remove_node(next(n for n in cluster.worker_nodes if n.node_id == killed),
                      allow_graceful=False)
  os.kill(holder["pid"], signal.SIGKILL)
  other, = (n.node_id for n in cluster.worker_nodes)
  print(f"killed the node of the sweep's run at its checkpoint {checkpoint}: "
        f"{time.perf_counter() - start:.1f} s")
  wait_for(lambda: training_starts(workdir) >= 2, first, logs[0], "retry of the sweep's run")
  print(f"the retry holds the run: {time.perf_counter() - start:.1f} s")
  second = start_ablation(*flags, stderr=logs[1])
  drivers = [finish(process, log) for process, log in zip((first, second), logs)]
  print(f"two Ray drivers: {time.perf_counter() - start:.1f} s")
  return RayRun(out, drivers, killed, other, checkpoint)


def test_two_drivers_on_ray_train_each_run_once(on_ray):
  for stderr, returncode in on_ray.drivers:
    assert returncode == 0, stderr[-3000:]
  # Each run trained by one task at a time: the sweep's run by the task on the killed node and
  # then by its retry, the fine-tuning once. The other driver's task of a run found it claimed
  # (and waited) or finished, and took the finished run's outcome.
  workdir = sweep_workdir(on_ray.out)
  assert training_starts(workdir) == 2, run_log(workdir)
  finetune = on_ray.out / "encoder_mlm" / RAY_TAG / "seed0" / "sst2"
  assert training_starts(finetune) == 1 and "Ray node" in run_log(finetune), run_log(finetune)
  assert any("finished earlier" in stderr for stderr, _ in on_ray.drivers)
  assert (on_ray.out / "report.md").exists()


def test_a_killed_node_reruns_its_arm_elsewhere_from_its_checkpoint(on_ray):
  workdir = sweep_workdir(on_ray.out)
  # Ray retried the task that trained the run (the same task id) on the other node...
  attempts = ray_attempts(workdir)
  assert attempts[0][0] == on_ray.killed and attempts[1] == (on_ray.other, attempts[0][1]), \
      attempts
  # ... which resumed from the killed node's last checkpoint, not from step 0, and logged every
  # step once (the killed attempt's records after the checkpoint dropped).
  assert f"resumed from {workdir / 'checkpoints' / str(on_ray.checkpoint)}" in run_log(workdir)
  last = json.loads((workdir / "config.json").read_text())["train"]["steps"]
  records = map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
  assert [r["step"] for r in records if "train/loss" in r] == list(range(1, last + 1))
  assert 0 < on_ray.checkpoint < last
  assert json.loads(pathlib.Path(f"{workdir}.json").read_text())["resumed"]


def test_ray_gives_the_local_pool_s_results_seed_for_seed(on_ray, local_pool):
  # The local pool ran the same ablation without a stop: every number of the report (its
  # results.json, seed by seed), the loss curves and the evaluation losses are the same, the
  # resumed run's too.
  out, stderr, returncode = local_pool()
  assert returncode == 0, stderr[-3000:]
  assert json.loads((on_ray.out / "results.json").read_text()) == json.loads(
      (out / "results.json").read_text())
  assert stage_values(on_ray.out, RAY_TAG) == stage_values(out, RAY_TAG)


@pytest.mark.slow
def test_ctrl_c_cancels_the_ray_tasks_and_exits_130(cluster, compilation_cache, tmp_path):
  # A run long enough to be stopped in its middle: 1,000 steps, a checkpoint every 100 (the same
  # programs as the other Ray tests': after those, the compilation cache has them).
  out = new_out(tmp_path, compilation_cache)
  stderr = tmp_path / "driver.txt"
  driver = start_ablation(f"--out={out}", "--tiny", "--arms=encoder_mlm", "--budgets=5e10",
                          "--seeds=0", "--checkpoint_every=100", "--executor=ray",
                          f"--ray_address={cluster.address}", stderr=stderr)
  workdir = None
  deadline = time.time() + 300
  while time.time() < deadline and workdir is None and driver.poll() is None:
    found = list((out / "encoder_mlm").glob("flops*/lr*/pretrain/checkpoints/100"))
    workdir = found[0].parents[1] if found else None
    time.sleep(0.1)
  assert workdir is not None, finish(driver, stderr)[0][-3000:]
  driver.send_signal(signal.SIGINT)
  output, returncode = finish(driver, stderr)
  assert returncode == 130, output[-3000:]
  assert "stopping: the running runs checkpoint and stop" in output
  assert not pathlib.Path(str(workdir) + ".run.json").exists()  # not finished
  assert not (workdir.parent / "pretrain.json").exists()
  assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.orbax-checkpoint-tmp*"))
  # The cancelled task stopped: its claim is free again, for the rerun that resumes it.
  run = executor_lib.Run("x", {}, str(workdir))
  with executor_lib.claim(run, poll_s=0.1):
    pass


@pytest.mark.slow
def test_results_rows_through_the_executor_match_their_readme_commands(tmp_path, monkeypatch):
  # experiments.results trains a row through the executor (a fresh worker process per run, as
  # its README command would): the same numbers as the command itself, a row that starts from
  # another's weights included.
  from experiments import results  # pylint: disable=import-outside-toplevel
  tiny = ("model.num_layers=1", "model.embed_dim=32", "model.num_heads=2", "model.mlp_dim=64",
          "data.seq_len=32", "data.batch_size=4", "train.steps=3", "train.eval_every=3",
          "train.checkpoint_every=3", "train.eval_batches=1", "train.log_every=1",
          "optimizer.warmup_steps=1")
  first = results.Row("tiny", "pretraining", "gpt_shakespeare_char.py", "tiny GPT",
                      (results.LOSS,), overrides=tiny)
  second = results.Row("tiny_more", "pretraining", "gpt_shakespeare_char.py", "continued",
                       (results.LOSS,), overrides=tiny, after="tiny")
  monkeypatch.setattr(results, "ROWS", {"tiny": first, "tiny_more": second})
  monkeypatch.setenv("XLA_FLAGS", cli_env()["XLA_FLAGS"])
  commands = results.run(tmp_path / "commands", ["tiny_more"], [0])
  pool = executor_lib.LocalPool(1, in_process=False, runs_per_process=1)
  with pool:
    executed = results.run(tmp_path / "executor", ["tiny_more"], [0], pool)
  metrics = lambda written: {row: seeds["0"]["metrics"] for row, seeds in written["rows"].items()}
  assert metrics(executed) == metrics(commands)
  assert (tmp_path / "executor" / "tiny_more" / "seed0" / "workdir.run.json").exists()
