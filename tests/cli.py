"""`run`: a CLI of this repo as `python -m MODULE ARGS...` runs it, forked from a server process
that imported the heavy libraries once.

A fresh `python -m research.train` spends ~1.5 CPU-s importing jax, flax, orbax, grain and
tensorflow_datasets and tearing them down at exit before and after what a test checks; the
default suite starts ~200 such CLIs. `run` sends the module, arguments, environment and working
directory to a server (this file run as a script, one per test process) that has imported those
libraries and frozen them out of the garbage collector (gc.freeze); the server forks, and the
child runs the module as `python -m` does (`runpy._run_module_as_main`, a new `__main__`,
sys.path[0] = the working directory) with that environment, its stdout and stderr in files
and its stdin the test process's. The CLI's own imports, flag parsing, work, exit code, output and
interpreter shutdown are its own; what the preloaded libraries print while being imported is
written at the start of each child's stdout and stderr, as a fresh process prints it. About
0.3 CPU-s a start instead of ~1.7.

It falls back to a real `python -m` when the module is not one of FORKED (each imports every
PRELOAD library anyway, so a child sees no module a fresh process would not have), when the
environment differs from the server's in anything but XLA_FLAGS (read when JAX makes its
backend, after the fork) and PYTEST_CURRENT_TEST (other variables may be read while the
libraries are imported), or with TEST_CLI_FORK=0. Tests that send signals to a CLI or run
several at once start real processes themselves.

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
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
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
  """subprocess.run([python, -m, module, *args], capture_output=True, text=True) or its fork.

  `args`: str, bytes (decoded as Python decodes its argv) or paths."""
  env = dict(os.environ if env is None else env)
  command = [sys.executable, "-m", module, *(a if isinstance(a, bytes) else str(a) for a in args)]
  if not _forkable(module, env):
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
  with _lock:
    global _server
    if _server is None or _server.poll() is not None:
      _server = _Server()
    return _server.run(command, module, env, cwd, timeout)


def _forkable(module: str, env: dict[str, str]) -> bool:
  if os.environ.get("TEST_CLI_FORK", "1") == "0" or module not in FORKED:
    return False
  differs = {k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k)}
  return differs <= set(ENV_FREE)


def _text(data: bytes) -> str:
  """As subprocess's text mode reads it: the locale's encoding, universal newlines."""
  text = data.decode(locale.getpreferredencoding(False))
  return text.replace("\r\n", "\n").replace("\r", "\n")


class _Server:
  """The client's end: one server process, one request at a time."""

  def __init__(self):
    global forked_cpu_seconds
    request_read, self.request = os.pipe()
    self.response, response_write = os.pipe()
    self.proc = subprocess.Popen(
        [sys.executable, __file__, str(request_read), str(response_write)], cwd=REPO_ROOT,
        pass_fds=(request_read, response_write), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    os.close(request_read)
    os.close(response_write)
    self.lines = os.fdopen(self.response, "r")
    ready = self._read()
    forked_cpu_seconds += ready["cpu"]
    atexit.register(self.close)

  def close(self):
    """The server exits when its request pipe closes."""
    try:
      os.close(self.request)
    except OSError:
      pass
    self.proc.wait()

  def poll(self):
    return self.proc.poll()

  def _read(self) -> dict:
    line = self.lines.readline()
    if not line:
      raise RuntimeError(f"tests/cli.py's server exited ({self.proc.wait()})")
    return json.loads(line)

  def run(self, command, module, env, cwd, timeout):
    global forked_cpu_seconds
    folder = pathlib.Path(tempfile.mkdtemp(prefix="cli-"))
    try:
      request = {"module": module, "args": [os.fsdecode(a) for a in command[3:]], "env": env,
                 "cwd": str(cwd), "stdout": str(folder / "stdout"),
                 "stderr": str(folder / "stderr")}
      os.write(self.request, (json.dumps(request) + "\n").encode())
      pid = self._read()["pid"]
      timed_out = threading.Event()
      def stop():
        timed_out.set()
        os.kill(pid, signal.SIGKILL)
      timer = threading.Timer(timeout, stop) if timeout else None
      if timer:
        timer.start()
      try:
        done = self._read()
      finally:
        if timer:
          timer.cancel()
      forked_cpu_seconds += done["cpu"]
      stdout = _text((folder / "stdout").read_bytes())
      stderr = _text((folder / "stderr").read_bytes())
      if timed_out.is_set():
        raise subprocess.TimeoutExpired(command, timeout, stdout, stderr)
      return subprocess.CompletedProcess(command, done["returncode"], stdout, stderr)
    finally:
      shutil.rmtree(folder, ignore_errors=True)


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
  sys.path[0] = str(REPO_ROOT)
  printed = _preload()
  gc.collect()
  gc.freeze()  # the children's interpreter shutdown then skips the preloaded objects
  times = os.times()
  responses = os.fdopen(response_fd, "w", buffering=1)
  responses.write(json.dumps({"cpu": times.user + times.system}) + "\n")
  for line in os.fdopen(request_fd, "r"):
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
      _child(request, printed, (request_fd, response_fd))
    responses.write(json.dumps({"pid": pid}) + "\n")
    _, status, usage = os.wait4(pid, 0)
    responses.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status),
                                "cpu": usage.ru_utime + usage.ru_stime}) + "\n")


if __name__ == "__main__":
  serve(int(sys.argv[1]), int(sys.argv[2]))
