"""The experiment executor: the runs of an ablation, an LR sweep or the results tables, on this
machine (a pool of worker processes) or on a Ray cluster (one Ray task per run).

A run is a resolved config and a research.train workdir. Its id is a hash of the config (paths
under the experiment's output folder written relative to it, so a moved folder keeps its ids).
Beside the workdir it leaves three files:
  <workdir>.claim     held (an OS file lock) by the process that trains the run: two drivers, or
                      a retried Ray task and a straggler, never train one workdir at once; the
                      kernel releases it however its holder ends (SIGKILL and node loss too);
  <workdir>.log       the run's output (the training progress bar, errors);
  <workdir>.run.json  written, whole, once the run has finished and been evaluated: its id,
                      final metrics, seconds and host. A rerun of the driver returns it without
                      training; a run cut short has none and resumes from its last checkpoint
                      (research.train resumes by itself).

What a run ends as (Outcome.status): "done"; "config_error" (a UserError, research.train's exit
status 2: reported once, never retried); "diverged" (a NaN/Inf loss); "interrupted" (stopped by
SIGTERM / Ctrl-C / a cancel, after its checkpoint); "failed" (anything else, with its log).

Backends:
  LocalPool(workers=1)  runs each run in this process, its output on this terminal;
  LocalPool(workers=N)  N worker processes (`python -m experiments.executor --serve`), each
                        importing JAX once and running runs one after another, so that later
                        runs load the first one's compiled programs from the persistent cache;
  RayExecutor           `--executor=ray`: each run a Ray task asking for the run's Resources
                        (CPU cores, GPUs, a TPU host of a slice type); Ray retries a task whose
                        worker or node died (max_retries), and the retry resumes from the run's
                        checkpoint on the shared storage. Ray is imported only there, so the
                        default path needs no Ray installed (scripts/setup.sh installs it, from
                        requirements-ray.txt).

Storage: workdirs must be on storage every worker sees (a local folder for the local pool or a
one-machine Ray cluster; NFS or gs:// for a cluster). Claims are OS file locks on local folders
and NFS, and on gs:// research/lease.py's lease (every write conditioned on the object's
generation; one whose holder stopped renewing it is taken over).

Progress (Board): one line per event, `[runs 12/38 done, 3 running, 1 failed; 1m20s elapsed,
about 2m10s left] ...`, and every HEARTBEAT_S seconds each running run's last logged loss from
its metrics.jsonl and where its log is.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Callable, Iterator

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
from etils import epath

from research import paths
from research.config import UserError
from research.paths import REPO_ROOT
# pylint: enable=wrong-import-position

HEARTBEAT_S = 30.0  # how often the board lists the running runs' losses
EXECUTORS = ("local", "ray")
# Ray retries a task whose worker process or node died this many times (each retry resumes
# from the run's last checkpoint); an error inside a run is never retried.
RAY_MAX_RETRIES = 3
# After Ctrl-C, how long cancelled Ray tasks get to write their checkpoint and stop before they
# are killed (research.train saves and stops after the current step).
CANCEL_GRACE_S = 60.0


def format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Resources:
  """What one run asks its worker for. tpu: a TPU slice type as Ray names its resources
  ("v4-8", "v5litepod-8", "v6e-8"); the task asks for the slice's head host ("TPU-<type>-head")
  and `tpu_chips` chips of it, so a single-host slice runs the whole run."""

  cpus: float = 1.0
  gpus: float = 0.0
  tpu: str = ""
  tpu_chips: int = 0

  def ray_options(self) -> dict[str, Any]:
    options: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus}
    if self.tpu_chips:  # Ray's TPU resources: "TPU" chips on each host, a head of each slice
      options["resources"] = {"TPU": self.tpu_chips, **(
          {f"TPU-{self.tpu}-head": 1} if self.tpu else {})}
    return options

  def for_config(self, config: dict) -> "Resources":
    """These resources with the device count that a config's mesh names (every axis sized, no
    -1): a run sharded over 4 devices asks for 4 GPUs or 4 TPU chips when it asks for any."""
    mesh = config.get("mesh", {})
    sizes = [int(mesh.get(axis, 1)) for axis in ("data", "fsdp", "tensor")]
    devices = 1
    for size in sizes:
      devices *= size
    if min(sizes) < 1 or devices <= 1:
      return self
    if self.gpus:
      return dataclasses.replace(self, gpus=max(self.gpus, devices))
    if self.tpu_chips:
      return dataclasses.replace(self, tpu_chips=max(self.tpu_chips, devices))
    return self

  def describe(self) -> str:
    parts = [f"{self.cpus:g} CPU"]
    if self.gpus:
      parts.append(f"{self.gpus:g} GPU")
    if self.tpu:
      parts.append(f"TPU {self.tpu} ({self.tpu_chips} chips)")
    return ", ".join(parts)


def parse_resources(text: str) -> Resources:
  """--run_resources: "cpus=4", "gpus=1,cpus=8" or "tpu=v4-8,tpu_chips=4"."""
  fields = {f.name: f.type for f in dataclasses.fields(Resources)}
  values: dict[str, Any] = {}
  for item in filter(None, (part.strip() for part in text.split(","))):
    key, _, value = item.partition("=")
    if key not in fields or not value:
      raise UserError(f"--run_resources: cannot read {item!r}; give comma-separated key=value "
                      f"with keys {', '.join(fields)} (e.g. cpus=4,gpus=1 or tpu=v4-8,"
                      "tpu_chips=4)")
    try:
      values[key] = value if key == "tpu" else (int(value) if key == "tpu_chips" else
                                                float(value))
    except ValueError:
      raise UserError(f"--run_resources: {key}={value} is not a number") from None
    if key != "tpu" and values[key] < 0:
      raise UserError(f"--run_resources: {key}={value} must not be negative")
  resources = Resources(**values)
  if resources.tpu and resources.tpu_chips <= 0:  # a slice type alone names no chip count
    raise UserError("--run_resources: tpu=... needs tpu_chips=N, the chips of one host of the "
                    "slice that the run uses (e.g. tpu=v4-8,tpu_chips=4)")
  return resources


def _relative_paths(value: Any, root: str) -> Any:
  """`value` with strings under `root` written as OUT/...: ids that survive a moved folder."""
  if isinstance(value, dict):
    return {k: _relative_paths(v, root) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_relative_paths(v, root) for v in value]
  if isinstance(value, str) and root and (value == root or value.startswith(root + "/")):
    return "OUT" + value[len(root):]
  return value


def config_id(config: dict, root: str = "") -> str:
  """The run's id: a hash of its resolved config (research.config.ExperimentConfig.to_dict())."""
  text = json.dumps(_relative_paths(config, root.rstrip("/")), sort_keys=True, default=str)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def config_with_overrides(path: str | os.PathLike, overrides: list[str]):
  """The ExperimentConfig of a config file with `key=value` overrides applied, as research.train
  applies its --config.key=value flags (each value read as the type of the value it replaces);
  UserError naming a key the config lacks or a value of the wrong type."""
  import ast  # pylint: disable=import-outside-toplevel
  from research.config import ExperimentConfig, load_config_file  # pylint: disable=import-outside-toplevel
  config = load_config_file(os.fspath(path))
  for override in overrides:
    key, _, text = override.partition("=")
    *sections, name = key.split(".")
    node = config
    for section in sections:
      node = node[section] if section in node else None
      if node is None:
        break
    if node is None or name not in node:
      raise UserError(f"override {override!r}: {path} has no config key {key}")
    current = node[name]
    try:
      if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
          raise ValueError(text)
        value: Any = text.lower() in ("true", "1")
      elif isinstance(current, (int, float, str)):
        value = type(current)(text)
      else:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise UserError(f"override {override!r}: {text!r} is no {type(current).__name__}") from None
    node[name] = value
  return ExperimentConfig.from_config_dict(config)


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run: `config` (a resolved ExperimentConfig as a dict) in `workdir`."""

  name: str  # for people: "decoder_lm flops5e8 seed1 pretrain"
  config: dict
  workdir: str
  resources: Resources = Resources()
  root: str = ""  # the experiment's output folder (see config_id)
  # The config keys a command line set (research.train's `overrides`): a run that starts from
  # another workdir (init_from) keeps them instead of that workdir's values.
  overrides: tuple[str, ...] = ()

  @property
  def id(self) -> str:
    return config_id(self.config, self.root)

  @property
  def log(self) -> epath.Path:
    return epath.Path(self.workdir + ".log")

  @property
  def marker(self) -> epath.Path:
    return epath.Path(self.workdir + ".run.json")

  @property
  def claim_path(self) -> str:
    return self.workdir + ".claim"

  def to_json(self) -> dict:
    return {**dataclasses.asdict(self), "resources": dataclasses.asdict(self.resources)}

  @classmethod
  def from_json(cls, value: dict) -> "Run":
    return cls(**{**value, "resources": Resources(**value["resources"]),
                  "overrides": tuple(value.get("overrides", ()))})


@dataclasses.dataclass(frozen=True)
class Outcome:
  status: str  # "done", "config_error", "diverged", "interrupted", "failed"
  result: dict = dataclasses.field(default_factory=dict)  # final evaluation metrics
  seconds: float = 0.0
  resumed: bool = False
  skipped: bool = False  # finished by an earlier driver (or another one): not trained now
  error: str = ""
  host: str = ""

  @property
  def ok(self) -> bool:
    return self.status == "done"


def finished(run: Run) -> Outcome | None:
  """The outcome of a run that finished earlier (its marker), or None. UserError when the
  workdir holds a run of another config."""
  if not run.marker.exists():
    return None
  saved = json.loads(run.marker.read_text())
  if saved.get("id") != run.id:
    raise UserError(f"{run.workdir} holds a finished run of another config (id {saved.get('id')}"
                    f", this one {run.id}); restore the config, or use another output folder")
  return Outcome("done", saved["result"], saved["seconds"], saved["resumed"], True,
                 host=saved.get("host", ""))


# ---------------------------------------------------------------------------------------------
# Claims: one trainer per workdir across drivers, processes and nodes
# ---------------------------------------------------------------------------------------------


def _holder(fd: int) -> str:
  try:
    holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
  except (OSError, ValueError):
    return "another process"
  return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"


@contextlib.contextmanager
def claim(run: Run, on_wait: Callable[[str], None] | None = None,
          poll_s: float = 1.0) -> Iterator[None]:
  """Holds the run's claim for the block, waiting while another process holds it (that one
  either finishes the run, whose marker the caller then finds, or dies and releases it)."""
  if paths.is_url(run.workdir):
    with _lease(run, on_wait, poll_s):
      yield
    return
  os.makedirs(os.path.dirname(run.claim_path) or ".", exist_ok=True)
  said = False
  while True:
    fd = os.open(run.claim_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      if on_wait and not said:
        on_wait(f"{run.name}: claimed by {_holder(fd)}; waiting for it")
        said = True
      os.close(fd)
      time.sleep(poll_s)
      continue
    try:  # the file replaced while we waited: lock the new one (research/locks.py does so too)
      same = os.fstat(fd).st_ino == os.stat(run.claim_path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "run": run.name,
                              "since": time.time()}).encode("utf-8"), 0)
    yield
  finally:
    os.close(fd)  # releases the lock; the file stays (removing it would race a waiting claim)


@contextlib.contextmanager
def _lease(run: Run, on_wait: Callable[[str], None] | None, poll_s: float) -> Iterator[None]:
  """The claim of a gs:// run: research/lease.py's lease (writes conditioned on the object's
  generation; taken over once its holder stopped renewing it) on the prefix <workdir>.claim/,
  waited for while another process holds it."""
  try:
    from research import lease as lease_lib  # pylint: disable=import-outside-toplevel
  except ImportError:  # a checkout from before research/lease.py: unclaimed, as before
    if on_wait:
      on_wait(f"{run.name}: no lease on gs:// in this checkout; the run is not claimed")
    yield
    return
  from research.locks import WorkdirInUse  # pylint: disable=import-outside-toplevel
  said = False
  with contextlib.ExitStack() as stack:
    while True:
      try:
        stack.enter_context(lease_lib.workdir_lease(run.claim_path,
                                                    f"experiments.executor: {run.name}"))
        break
      except WorkdirInUse as e:
        if on_wait and not said:
          on_wait(f"{run.name}: {e}; waiting for it")
          said = True
        time.sleep(max(poll_s, 5.0))
    yield


# ---------------------------------------------------------------------------------------------
# Executing one run (inside whatever process a backend picked)
# ---------------------------------------------------------------------------------------------


def _last_checkpoint(workdir: epath.Path) -> int | None:
  directory = workdir / "checkpoints"
  steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if (
      directory.is_dir()) else []
  return max(steps, default=None)


@contextlib.contextmanager
def _output_to(log: epath.Path | None) -> Iterator[None]:
  """File descriptors 1 and 2 (the run's progress bar, XLA's warnings) appended to `log` for the
  block; None leaves them where they are (the terminal). A log on cloud storage is written
  locally and uploaded after."""
  if log is None:
    yield
    return
  local = pathlib.Path(log) if not paths.is_url(log) else pathlib.Path(
      f"/tmp/run-{os.getpid()}-{log.name}")
  local.parent.mkdir(parents=True, exist_ok=True)
  sys.stdout.flush()
  sys.stderr.flush()
  saved = os.dup(1), os.dup(2)
  target = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  os.dup2(target, 1)
  os.dup2(target, 2)
  os.close(target)
  try:
    yield
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    for fd in saved:
      os.close(fd)
    if paths.is_url(log):
      log.write_bytes(local.read_bytes())
      local.unlink()


def execute(run: Run, log_to_file: bool = True) -> Outcome:
  """Claims, trains (or resumes) and evaluates the run, and writes its marker; what the worker
  processes of every backend call. Never raises for a run's own failure: that is the outcome."""
  from research.config import ExperimentConfig  # pylint: disable=import-outside-toplevel
  host = socket.gethostname()
  say = lambda line: print(f"[executor] {line}", file=sys.stderr, flush=True)
  try:
    with claim(run, on_wait=say):
      done = finished(run)
      if done is not None:
        return done
      # JAX is imported only now: a task that finds its run finished by another (a second
      # driver's, a retry's straggler) answers without loading it (`from research import cli,
      # train` took 2.8 s on the 2-core Zen 5, shared).
      from research import cli, train  # pylint: disable=import-outside-toplevel
      workdir = epath.Path(run.workdir)
      with _output_to(run.log if log_to_file else None):
        print(f"[executor] {run.name} (id {run.id}) on {host}, pid {os.getpid()}", flush=True)
        try:
          config = ExperimentConfig.from_config_dict(run.config)
          resumed = _last_checkpoint(workdir) is not None
          start = time.perf_counter()
          result = train.train_and_evaluate(config, run.workdir, run.overrides)
          seconds = time.perf_counter() - start
        except cli.Interrupted:
          return Outcome("interrupted", host=host)
        except FloatingPointError as e:
          print(f"error: {e}", flush=True)
          return Outcome("diverged", error=str(e), host=host)
        except UserError as e:  # research.train's exit status 2: a config error, not retried
          print(f"error: {e}", flush=True)
          return Outcome("config_error", error=str(e), host=host)
        except Exception:  # the traceback into the run's log; the outcome says "failed"
          traceback.print_exc()
          raise
      reached = _last_checkpoint(workdir)
      if reached != config.train.steps:  # SIGTERM: checkpointed and returned before the end
        return Outcome("interrupted", error=f"stopped at step {reached} of "
                       f"{config.train.steps}", host=host)
      result = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
      paths.write_atomic(run.marker, json.dumps(
          {"id": run.id, "name": run.name, "result": result, "seconds": seconds,
           "resumed": resumed, "host": host, "resources": dataclasses.asdict(run.resources)},
          indent=1, sort_keys=True) + "\n")
      return Outcome("done", result, seconds, resumed, host=host)
  except UserError as e:  # a workdir of another config, found before training
    return Outcome("config_error", error=str(e), host=host)
  except KeyboardInterrupt:
    return Outcome("interrupted", host=host)
  except Exception as e:  # pylint: disable=broad-except
    return Outcome("failed", error=f"{type(e).__name__}: {e}", host=host)


def last_loss(workdir: str | os.PathLike) -> tuple[int, float] | None:
  """(step, train/loss) of the last logged record of a workdir's metrics.jsonl, or None."""
  path = epath.Path(workdir) / "metrics.jsonl"
  try:
    lines = path.read_text().splitlines()
  except (OSError, FileNotFoundError):
    return None
  for line in reversed(lines):
    try:
      record = json.loads(line)
    except ValueError:
      continue  # a line being written
    if "train/loss" in record:
      return record["step"], record["train/loss"]
  return None


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------


class Board:
  """One progress line over all the runs of a driver: done / running / failed of `total`, time
  elapsed and an estimate of the time left (mean seconds of the runs trained so far, shared by
  the runs running at once); each running run's last loss and log every HEARTBEAT_S."""

  def __init__(self, total: int = 0, log: Callable[[str], None] | None = None,
               heartbeat_s: float = HEARTBEAT_S, announce_starts: bool = True):
    self.total = total
    self.announce_starts = announce_starts  # False: the driver says itself what starts
    self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    self.heartbeat_s = heartbeat_s
    self.done = self.failed = 0
    self.running: dict[int, tuple[Run, float]] = {}  # by token: (run, started)
    self.seconds: list[float] = []
    self.started = time.perf_counter()
    self._lock = threading.Lock()
    self._token = 0
    self._beat = time.perf_counter()

  def expect(self, count: int) -> None:
    with self._lock:
      self.total += count

  def line(self) -> str:
    bits = f"[runs {self.done}/{self.total} done, {len(self.running)} running"
    if self.failed:
      bits += f", {self.failed} failed"
    left = max(0, self.total - self.done - self.failed)
    estimate = ""
    if left and self.seconds:
      at_once = max(1, len(self.running))
      estimate = f", about {format_seconds(sum(self.seconds) / len(self.seconds) * left / at_once)} left"
    elif left:
      estimate = ", time left known after the first run"
    return f"{bits}; {format_seconds(time.perf_counter() - self.started)} elapsed{estimate}]"

  def started_run(self, run: Run, where: str) -> int:
    with self._lock:
      self._token += 1
      self.running[self._token] = (run, time.perf_counter())
      if self.announce_starts:
        self.log(f"{self.line()} started {run.name} on {where} (log: {run.log})")
      return self._token

  def ended_run(self, token: int, outcome: Outcome) -> None:
    with self._lock:
      run, _ = self.running.pop(token)
      if outcome.ok:
        self.done += 1
        if not outcome.skipped:
          self.seconds.append(outcome.seconds)
        loss = last_loss(run.workdir)
        what = "finished earlier" if outcome.skipped else (
            f"done in {format_seconds(outcome.seconds)}" + (", resumed" if outcome.resumed
                                                            else ""))
        self.log(f"{self.line()} {run.name}: {what}" +
                 (f" (last loss {loss[1]:.4f})" if loss else ""))
      elif outcome.status == "interrupted":
        self.total -= 1  # not failed: a rerun continues it
        self.log(f"{self.line()} {run.name}: stopped after its checkpoint")
      else:
        self.failed += 1
        self.log(f"{self.line()} {run.name}: {outcome.status}: {outcome.error} (log: {run.log})")

  def skipped(self, count: int = 1) -> None:
    """Runs the caller will not submit after all (e.g. after a failure they depended on)."""
    with self._lock:
      self.total -= count

  def heartbeat(self) -> None:
    """Each running run's step, last loss and log, every heartbeat_s (call it often)."""
    with self._lock:
      if time.perf_counter() - self._beat < self.heartbeat_s or not self.running:
        return
      self._beat = time.perf_counter()
      self.log(self.line())
      for run, started in self.running.values():
        loss = last_loss(run.workdir)
        at = f"step {loss[0]}, loss {loss[1]:.4f}" if loss else "starting"
        self.log(f"  {run.name}: {at}, {format_seconds(time.perf_counter() - started)} "
                 f"(log: {run.log})")


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------


class Executor:
  """submit(run) -> a Future of its Outcome; stop() cancels what runs (each run checkpoints);
  close() ends the workers. Every backend reports starts and ends to `board`."""

  name = "executor"

  def __init__(self, board: Board | None = None):
    self.board = board or Board()
    self.stopping = False

  def submit(self, run: Run) -> concurrent.futures.Future:
    raise NotImplementedError

  def run(self, run: Run) -> Outcome:
    """Submits the run and waits for it (from any thread)."""
    return self.wait(self.submit(run))

  def wait(self, future: concurrent.futures.Future) -> Outcome:
    """The outcome of a submitted run, calling the board's heartbeat meanwhile."""
    while True:
      try:
        return future.result(timeout=1.0)
      except concurrent.futures.TimeoutError:
        self.board.heartbeat()

  def stop(self) -> None:
    self.stopping = True

  def close(self) -> None:
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _resolved(future: concurrent.futures.Future, outcome: Outcome) -> None:
  if not future.done():
    future.set_result(outcome)


class LocalPool(Executor):
  """This machine: one run at a time in this process (workers=1), or `workers` processes.
  in_process=False with workers=1: one worker process. runs_per_process: a worker process
  ends after that many runs and a fresh one takes the next (None: it serves them all)."""

  name = "local"

  def __init__(self, workers: int = 1, board: Board | None = None,
               env: dict[str, str] | None = None, in_process: bool | None = None,
               runs_per_process: int | None = None):
    super().__init__(board)
    self.workers = workers
    self.in_process = workers == 1 if in_process is None else in_process
    self.runs_per_process = runs_per_process
    self.env = dict(os.environ, **(env or {}))
    self._queue: queue.Queue = queue.Queue()
    self._processes: list[subprocess.Popen] = []
    self._lock = threading.Lock()
    self._inline = threading.Lock()  # workers=1: one run at a time, in whichever thread asks
    self._threads: list[threading.Thread] = []

  def submit(self, run: Run) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    if self.stopping:
      _resolved(future, Outcome("interrupted"))
      return future
    if self.in_process:  # in this process, when asked (Executor.run waits for it)
      with self._inline:
        if self.stopping:
          _resolved(future, Outcome("interrupted"))
          return future
        token = self.board.started_run(run, "this process")
        outcome = execute(run, log_to_file=False)
        self.board.ended_run(token, outcome)
        _resolved(future, outcome)
      return future
    self._queue.put((run, future))
    with self._lock:
      if len(self._threads) < self.workers:
        thread = threading.Thread(target=self._serve, daemon=True)
        self._threads.append(thread)
        thread.start()
    return future

  def _serve(self) -> None:
    """One worker process, fed runs from the queue until it is empty or the pool stops."""
    process, served = None, 0
    try:
      while not self.stopping:
        try:
          run, future = self._queue.get(timeout=0.5)
        except queue.Empty:
          if self._queue.empty():
            break
          continue
        if self.stopping:
          _resolved(future, Outcome("interrupted"))
          continue
        if process is not None and self.runs_per_process and served >= self.runs_per_process:
          process.stdin.close()
          process.wait()
          process = None
        if process is None or process.poll() is not None:
          served = 0
          process = subprocess.Popen(
              [sys.executable, "-m", "experiments.executor", "--serve"], cwd=REPO_ROOT,
              env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
              start_new_session=True)  # Ctrl-C reaches it through stop(), once
          with self._lock:
            self._processes.append(process)
        token = self.board.started_run(run, f"worker pid {process.pid}")
        outcome = self._ask(process, run)
        served += 1
        self.board.ended_run(token, outcome)
        _resolved(future, outcome)
    finally:
      while self.stopping:  # what is still queued will not run
        try:
          _, future = self._queue.get_nowait()
        except queue.Empty:
          break
        _resolved(future, Outcome("interrupted"))
      if process is not None and process.poll() is None:
        process.stdin.close()
        process.wait()
      with self._lock:
        self._threads.remove(threading.current_thread())

  @staticmethod
  def _ask(process: subprocess.Popen, run: Run) -> Outcome:
    try:
      process.stdin.write(json.dumps(run.to_json()) + "\n")
      process.stdin.flush()
      answer = process.stdout.readline()
    except (BrokenPipeError, OSError):
      answer = ""
    if not answer:
      process.wait()
      return Outcome("failed", error=f"worker process exited with status {process.returncode} "
                     f"during the run")
    return Outcome(**json.loads(answer))

  def stop(self) -> None:
    """SIGTERM to the worker processes (research.train checkpoints and returns), repeated until
    they have ended: a worker that is still starting its run ignores the first one."""
    super().stop()
    while True:
      with self._lock:
        alive = [process for process in self._processes if process.poll() is None]
      if not alive:
        return
      for process in alive:
        process.send_signal(signal.SIGTERM)
      time.sleep(2.0)

  def close(self) -> None:
    while True:
      with self._lock:
        threads = list(self._threads)
      if not threads:
        return
      for thread in threads:
        thread.join(timeout=0.5)


def serve() -> None:
  """A LocalPool worker process: reads runs (JSON lines) on stdin, runs each, answers its
  Outcome (a JSON line) on stdout. The runs' own output goes to their logs."""
  from research import cli  # pylint: disable=import-outside-toplevel
  cli.quiet_logs()
  answers = os.fdopen(os.dup(1), "w")
  os.dup2(2, 1)  # a stray print never mixes into the answers
  idle = lambda *_: sys.exit(0)  # between runs: nothing to checkpoint
  signal.signal(signal.SIGTERM, idle)
  for line in sys.stdin:
    run = Run.from_json(json.loads(line))
    # research.train installs its own handler (checkpoint, then stop) once it trains; until
    # then, and until the answer is written, SIGTERM waits (LocalPool.stop repeats it).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    outcome = execute(run)
    answers.write(json.dumps(dataclasses.asdict(outcome)) + "\n")
    answers.flush()
    signal.signal(signal.SIGTERM, idle)


def _ray_execute(run_json: dict) -> dict:
  """The body of a Ray task (module-level, so Ray pickles it by reference). Its log names the
  Ray node, so that a retry's move to another node can be followed."""
  import ray  # pylint: disable=import-outside-toplevel
  run = Run.from_json(run_json)
  with _output_to(run.log):
    print(f"[executor] {run.name}: Ray node {ray.get_runtime_context().get_node_id()}, attempt "
          f"{ray.get_runtime_context().get_task_id()}", flush=True)
  return dataclasses.asdict(execute(run))


class RayExecutor(Executor):
  """A Ray cluster: each run one task asking for its Resources. `address`: a running cluster
  ("auto", "ray://host:10001", "host:6379"), else RAY_ADDRESS, else a cluster started on this
  machine for the driver's lifetime. The workers import this repository from REPO_ROOT, which
  must hold the same checkout on every node (docs/ray.md)."""

  name = "ray"

  def __init__(self, address: str | None = None, board: Board | None = None,
               env: dict[str, str] | None = None, max_retries: int = RAY_MAX_RETRIES):
    super().__init__(board)
    # Ray is imported here only: the default path (the local pool) must not need it installed.
    try:
      import ray  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise UserError("--executor=ray needs Ray installed: run scripts/setup.sh (it installs "
                      "requirements-ray.txt) or pip install -r requirements-ray.txt") from None
    self.ray = ray
    env_vars = {"PYTHONPATH": str(REPO_ROOT), **(env or {})}
    address = address or os.environ.get("RAY_ADDRESS") or None
    # The runs' output goes to their own logs, not through Ray to this terminal.
    options: dict[str, Any] = {"runtime_env": {"env_vars": env_vars}, "log_to_driver": False}
    if address is None:  # a cluster of this machine alone, for the driver's lifetime
      options["include_dashboard"] = False
    ray.init(address=address, **options)
    self.remote = ray.remote(_ray_execute)
    self.max_retries = max_retries
    self._pending: dict[Any, tuple[concurrent.futures.Future, Run, int]] = {}
    self._lock = threading.Lock()
    self._waiter = threading.Thread(target=self._wait, daemon=True)
    self._closed = False
    self._waiter.start()

  def submit(self, run: Run) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    if self.stopping:
      _resolved(future, Outcome("interrupted"))
      return future
    ref = self.remote.options(name=run.name[:100], max_retries=self.max_retries,
                              retry_exceptions=False, **run.resources.ray_options()
                              ).remote(run.to_json())
    token = self.board.started_run(run, "ray")
    with self._lock:
      self._pending[ref] = (future, run, token)
    return future

  def _wait(self) -> None:
    ray = self.ray
    while not self._closed:
      with self._lock:
        refs = list(self._pending)
      if not refs:
        time.sleep(0.2)
        continue
      ready, _ = ray.wait(refs, num_returns=1, timeout=0.5)
      for ref in ready:
        with self._lock:
          future, run, token = self._pending.pop(ref)
        try:
          outcome = Outcome(**ray.get(ref))
        except ray.exceptions.TaskCancelledError:
          outcome = Outcome("interrupted")
        except ray.exceptions.RayError as e:  # its node or worker died past max_retries, ...
          outcome = Outcome("failed", error=str(e).strip().splitlines()[-1][:300])
        self.board.ended_run(token, outcome)
        _resolved(future, outcome)

  def stop(self) -> None:
    super().stop()
    with self._lock:
      refs = list(self._pending)
    for ref in refs:  # a KeyboardInterrupt in the task: research.train checkpoints and stops
      self.ray.cancel(ref, force=False)
    deadline = time.perf_counter() + CANCEL_GRACE_S
    while time.perf_counter() < deadline:
      with self._lock:
        if not self._pending:
          return
      time.sleep(0.2)
    with self._lock:
      refs = list(self._pending)
    for ref in refs:
      self.ray.cancel(ref, force=True)

  def close(self) -> None:
    while True:
      with self._lock:
        if not self._pending:
          break
      time.sleep(0.2)
    self._closed = True
    self._waiter.join()
    self.ray.shutdown()


# ---------------------------------------------------------------------------------------------
# The drivers' side: flags, the executor they ask for, Ctrl-C
# ---------------------------------------------------------------------------------------------


def define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_enum("executor", "local", list(EXECUTORS), "Where the runs train: 'local' (this "
                    "machine, --workers processes) or 'ray' (a Ray cluster, one task per run; "
                    "docs/ray.md).")
  flags.DEFINE_string("ray_address", None, "The Ray cluster of --executor=ray ('auto', "
                      "'ray://HOST:10001', 'HOST:6379'; default: RAY_ADDRESS, else a cluster "
                      "started on this machine).")
  flags.DEFINE_string("run_resources", "cpus=1", "What each run asks Ray for: comma-separated "
                      "cpus=N, gpus=N, tpu=SLICE_TYPE with tpu_chips=N (e.g. gpus=1,cpus=8 or "
                      "tpu=v4-8,tpu_chips=4).")
  flags.DEFINE_bool("dry_run", False, "List the runs and the resources they ask for, and exit.")


def make_executor(kind: str, workers: int = 1, board: Board | None = None,
                  ray_address: str | None = None, env: dict[str, str] | None = None) -> Executor:
  if kind == "local":
    return LocalPool(workers, board, env)
  if kind == "ray":
    return RayExecutor(ray_address, board, env)
  raise UserError(f"--executor={kind}: choose one of {', '.join(EXECUTORS)}")


class StopOnSignal:
  """SIGINT (Ctrl-C) and SIGTERM stop the executor once: its runs checkpoint and end as
  "interrupted"; the driver then writes what finished and exits 130 (`signal` says which)."""

  def __init__(self, executor: Executor):
    self.executor = executor
    self.signal: int | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGINT, signal.SIGTERM):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signal is None:
      self.signal = signum
      print("[executor] stopping: the running runs checkpoint and stop; rerun the same "
            "command to continue", file=sys.stderr, flush=True)
      threading.Thread(target=self.executor.stop, daemon=True).start()

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


def join(threads: list[threading.Thread], board: Board) -> None:
  """Waits for the threads in small steps, so that signals reach the main thread meanwhile."""
  for thread in threads:
    while thread.is_alive():
      thread.join(timeout=0.2)
      board.heartbeat()


def main() -> None:
  if sys.argv[1:] == ["--serve"]:
    serve()
    return
  print("usage: python -m experiments.executor --serve (the local pool's worker processes; "
        "the drivers are experiments.architecture_ablation and experiments.results)",
        file=sys.stderr)
  sys.exit(2)


if __name__ == "__main__":
  main()
