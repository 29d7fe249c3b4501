"""`run` and `start`: a CLI of this repo as `python -m MODULE ARGS...` runs it, forked from a
server process that imported the heavy libraries once.

A fresh `python -m research.train` spends ~1.5 CPU-s importing jax, flax, orbax, grain and
tensorflow_datasets and tearing them down at exit, before and after what a test checks; the
default suite starts ~200 such CLIs. `start` sends the module, arguments, environment and
working directory to a server (this file run as a script, one per test process) that has
imported those libraries and frozen them out of the garbage collector (gc.freeze); the server
forks, and the child runs the module as `python -m` does (`runpy._run_module_as_main`, a new
`__main__`, sys.path[0] = the working directory) with that environment, its stdout and stderr
in files and its stdin the test process's. The CLI's own imports, flag parsing, work, signal
handling, exit code, output and interpreter shutdown are its own; what the preloaded libraries
print while being imported is written at the start of each child's stdout and stderr, as a fresh
process prints it. About 0.3 CPU-s a start instead of ~1.7. `start` returns a Process (pid,
poll, wait, send_signal, kill; several may run at once); `run` waits for it, as subprocess.run.

It falls back to a real `python -m` when the module is not one of FORKED (each imports every
PRELOAD library anyway, so a child sees no module a fresh process would not have), when the
environment differs from the server's in anything but XLA_FLAGS (read when JAX makes its
backend, after the fork) and PYTEST_CURRENT_TEST (other variables may be read while the
libraries are imported), or with TEST_CLI_FORK=0.

`forked_cpu_seconds`: the server's and its children's CPU (not in this process's os.times,
which counts only the children it waits for; tests/cpu_report.py adds it).
"""

import atexit
import gc
import importlib
import json
import locale
import os
import pathlib
import queue
import runpy
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# Imported by every FORKED module (research.train's third-party imports).
PRELOAD = ("numpy", "jax", "jax.numpy", "flax.linen", "optax", "orbax.checkpoint", "grain",
           "tensorflow_datasets", "tensorstore", "ml_collections.config_flags", "etils.epath",
           "absl.app", "absl.flags", "absl.logging", "tqdm", "PIL.Image", "yaml")
FORKED = frozenset({"research.train", "research.evaluate", "research.generate", "research.chat",
                    "research.convert", "research.aot", "research.bench",
                    "experiments.architecture_ablation"})
# Read after the fork (XLA_FLAGS when JAX makes its backend) or never by the libraries.
ENV_FREE = ("XLA_FLAGS", "PYTEST_CURRENT_TEST")

forked_cpu_seconds = 0.0
_server = None
_lock = threading.Lock()


def run(module: str, args, *, env: dict[str, str] | None = None,
        cwd: str | os.PathLike = REPO_ROOT,
        timeout: float | None = None) -> subprocess.CompletedProcess:
  """subprocess.run([python, -m, module, *args], capture_output=True, text=True) or its fork:
  a CLI that runs past `timeout` is killed and raises subprocess.TimeoutExpired."""
  process = start(module, args, env=env, cwd=cwd)
  try:
    process.wait(timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    process.wait()
    raise subprocess.TimeoutExpired(process.args, timeout, process.stdout, process.stderr)
  return subprocess.CompletedProcess(process.args, process.returncode, process.stdout,
                                     process.stderr)


def start(module: str, args, *, env: dict[str, str] | None = None,
          cwd: str | os.PathLike = REPO_ROOT) -> "Process":
  """`python -m module *args` started (forked where it can be), its output going to files.

  `args`: str, bytes (decoded as Python decodes its argv) or paths."""
  env = dict(os.environ if env is None else env)
  command = [sys.executable, "-m", module, *(a if isinstance(a, bytes) else str(a) for a in args)]
  folder = pathlib.Path(tempfile.mkdtemp(prefix="cli-"))
  if not _forkable(module, env):
    with open(folder / "stdout", "wb") as stdout, open(folder / "stderr", "wb") as stderr:
      popen = subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout, stderr=stderr)
    return _Spawned(command, folder, popen)
  with _lock:
    global _server
    if _server is None or _server.poll() is not None:
      _server = _Server()
    server = _server
  return server.start(command, module, env, cwd, folder)


def _forkable(module: str, env: dict[str, str]) -> bool:
  if os.environ.get("TEST_CLI_FORK", "1") == "0" or module not in FORKED:
    return False
  differs = {k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k)}
  return differs <= set(ENV_FREE)


def _text(data: bytes) -> str:
  """As subprocess's text mode reads it: the locale's encoding, universal newlines."""
  text = data.decode(locale.getpreferredencoding(False))
  return text.replace("\r\n", "\n").replace("\r", "\n")


class Process:
  """A started CLI, as much of subprocess.Popen as the tests use: `pid`, `args`, `poll()`,
  `wait(timeout)`, `send_signal()`, `kill()`, `returncode`; once it has ended, its `stdout` and
  `stderr` as text."""

  def __init__(self, command: list, folder: pathlib.Path, pid: int):
    self.args, self.pid, self._folder = command, pid, folder
    self.returncode = self.stdout = self.stderr = None

  def _ended(self, returncode: int) -> int:
    if self.returncode is None:
      self.returncode = returncode
      self.stdout = _text((self._folder / "stdout").read_bytes())
      self.stderr = _text((self._folder / "stderr").read_bytes())
      shutil.rmtree(self._folder, ignore_errors=True)
    return self.returncode

  def send_signal(self, signum: int) -> None:
    if self.returncode is None:
      os.kill(self.pid, signum)

  def kill(self) -> None:
    self.send_signal(signal.SIGKILL)


class _Spawned(Process):
  """A real `python -m` (subprocess.Popen)."""

  def __init__(self, command, folder, popen: subprocess.Popen):
    super().__init__(command, folder, popen.pid)
    self._popen = popen

  def poll(self) -> int | None:
    code = self._popen.poll()
    return None if code is None else self._ended(code)

  def wait(self, timeout: float | None = None) -> int:
    return self._ended(self._popen.wait(timeout))


class _Forked(Process):
  """A child of the server; the server says when it ended."""

  def __init__(self, command, folder, pid: int, messages: queue.Queue):
    super().__init__(command, folder, pid)
    self._done = messages

  def poll(self) -> int | None:
    if self.returncode is None:
      try:
        self._finish(self._done.get_nowait())
      except queue.Empty:
        return None
    return self.returncode

  def wait(self, timeout: float | None = None) -> int:
    if self.returncode is None:
      try:
        self._finish(self._done.get(timeout=timeout))
      except queue.Empty:
        raise subprocess.TimeoutExpired(self.args, timeout) from None
    return self.returncode

  def _finish(self, message: dict | None) -> None:
    global forked_cpu_seconds
    if message is None:
      raise RuntimeError("tests/cli.py's server exited")
    forked_cpu_seconds += message["cpu"]
    self._ended(message["returncode"])


class _Server:
  """The client's end of one server process; its messages go to each request's queue."""

  def __init__(self):
    global forked_cpu_seconds
    request_read, self.request = os.pipe()
    response, response_write = os.pipe()
    self.proc = subprocess.Popen(
        [sys.executable, __file__, str(request_read), str(response_write)], cwd=REPO_ROOT,
        pass_fds=(request_read, response_write), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    os.close(request_read)
    os.close(response_write)
    self.lines = os.fdopen(response, "r")
    forked_cpu_seconds += json.loads(self.lines.readline())["cpu"]
    self.queues: dict[int, queue.Queue] = {}
    self.lock = threading.Lock()
    threading.Thread(target=self._dispatch, daemon=True).start()
    atexit.register(self.close)

  def _dispatch(self) -> None:
    for line in self.lines:
      message = json.loads(line)
      self.queues[message["id"]].put(message)
    for waiting in list(self.queues.values()):  # the server is gone
      waiting.put(None)

  def close(self) -> None:
    """The server ends once its request pipe is closed and its children have ended."""
    try:
      os.close(self.request)
      self.proc.wait(timeout=60)
    except (OSError, subprocess.TimeoutExpired):
      self.proc.kill()

  def poll(self):
    return self.proc.poll()

  def start(self, command, module, env, cwd, folder) -> _Forked:
    messages = queue.Queue()  # the fork's pid, then the child's end
    request = {"module": module, "args": [os.fsdecode(a) for a in command[3:]], "env": env,
               "cwd": str(cwd), "stdout": str(folder / "stdout"),
               "stderr": str(folder / "stderr")}
    with self.lock:
      request["id"] = len(self.queues)
      self.queues[request["id"]] = messages
      os.write(self.request, (json.dumps(request) + "\n").encode())
    started = messages.get()
    if started is None:
      raise RuntimeError("tests/cli.py's server exited")
    return _Forked(command, folder, started["pid"], messages)


# --- the server (this file run as a script) -------------------------------------------------


def _capture_fd(fd: int, path: str) -> int:
  saved = os.dup(fd)
  target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
  os.dup2(target, fd)
  os.close(target)
  return saved


def _preload() -> tuple[bytes, bytes]:
  """Imports PRELOAD; returns what that printed on stdout and stderr."""
  with tempfile.TemporaryDirectory() as folder:
    out, err = os.path.join(folder, "out"), os.path.join(folder, "err")
    saved = _capture_fd(1, out), _capture_fd(2, err)
    try:
      for name in PRELOAD:
        importlib.import_module(name)
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      for fd, copy in zip((1, 2), saved):
        os.dup2(copy, fd)
        os.close(copy)
    return pathlib.Path(out).read_bytes(), pathlib.Path(err).read_bytes()


def _child(request: dict, printed: tuple[bytes, bytes], pipes: tuple[int, int]) -> None:
  """Becomes `python -m MODULE ARGS...`; never returns (the module's exit ends the process)."""
  devnull = os.open(os.devnull, os.O_RDWR)
  for fd in pipes:  # the server's; its file objects still close them at exit
    os.dup2(devnull, fd)
  os.close(devnull)
  os.chdir(request["cwd"])
  os.environ.clear()
  os.environ.update(request["env"])
  for fd, path, text in ((1, request["stdout"], printed[0]), (2, request["stderr"], printed[1])):
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(target, text)
    os.dup2(target, fd)
    os.close(target)
  if "numpy.random" in sys.modules:  # seeded from the OS at its import, as in a fresh process
    sys.modules["numpy.random"].seed()
  sys.argv = [request["module"], *request["args"]]
  sys.path[0] = os.getcwd()
  sys.modules["__main__"] = types.ModuleType("__main__")
  runpy._run_module_as_main(request["module"])  # pylint: disable=protected-access
  sys.exit(0)


def serve(request_fd: int, response_fd: int) -> None:
  """Forks a child per request line; answers {id, pid} at the fork and {id, returncode, cpu}
  when the child has ended. Ends when the request pipe closes and every child has ended."""
  sys.path[0] = str(REPO_ROOT)
  printed = _preload()
  gc.collect()
  gc.freeze()  # the children's interpreter shutdown then skips the preloaded objects
  responses = os.fdopen(response_fd, "w", buffering=1)
  respond = lambda message: responses.write(json.dumps(message) + "\n")
  times = os.times()
  respond({"cpu": times.user + times.system})
  pending, children, reading = b"", {}, True
  while reading or children:
    if reading and select.select([request_fd], [], [], 0.05)[0]:
      chunk = os.read(request_fd, 1 << 16)
      reading = bool(chunk)
      pending += chunk
      while b"\n" in pending:
        line, pending = pending.split(b"\n", 1)
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
          _child(request, printed, (request_fd, response_fd))
        children[pid] = request["id"]
        respond({"id": request["id"], "pid": pid})
    elif not reading:
      time.sleep(0.05)
    while children:
      pid, status, usage = os.wait4(-1, os.WNOHANG)
      if not pid:
        break
      respond({"id": children.pop(pid), "returncode": os.waitstatus_to_exitcode(status),
               "cpu": usage.ru_utime + usage.ru_stime})


if __name__ == "__main__":
  serve(int(sys.argv[1]), int(sys.argv[2]))
