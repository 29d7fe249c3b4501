"""Operating-system file locks: one writer per workdir, one builder per dataset.

A lock is `fcntl.flock` on a file, so the kernel releases it when its holder exits in any way
(SIGKILL included): a lock left by a killed run never blocks the next one. The file records the
holder (pid, host, command) for the message a second writer gets.

Limits: flock works between processes of one machine and on NFS (Linux >= 2.6.12 maps it to
byte-range locks). A workdir on cloud storage (gs://) has a lease instead (research/lease.py):
object stores offer no lock that a killed holder releases.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from typing import Iterator

from research.config import UserError

LOCK_FILE = ".lock"  # inside a workdir


class WorkdirInUse(UserError):
  """Another process holds the workdir's lock."""


def _holder_text(fd: int) -> str:
  # The holder writes who it is just after it takes the lock: a busy machine can show us the
  # lock before the text, so an empty (or half-written) file is read again for up to 2 s.
  holder = {}
  for _ in range(40):
    try:
      holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
      holder = {}
    if holder:
      break
    time.sleep(0.05)
  if not holder:
    return "another process"
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
  return (f"{holder.get('command', 'another process')} (pid {holder.get('pid', '?')} on host "
          f"{holder.get('host', '?')}, since {since})")


def _open_locked(path: str, wait: bool) -> int | None:
  """An fd of `path` holding its exclusive lock; None when another process holds it (with
  wait=False). A lock file removed and recreated meanwhile is retried, so two processes never
  hold locks on two different files of one name."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
      raise _Busy(fd) from None  # only without wait
    try:
      if os.fstat(fd).st_ino == os.stat(path).st_ino:
        return fd
    except FileNotFoundError:
      pass
    os.close(fd)  # the file was replaced while we waited: lock the new one


class _Busy(Exception):
  """The lock is held elsewhere; carries the open fd, to read the holder from."""

  def __init__(self, fd: int):
    super().__init__()
    self.fd = fd


@contextlib.contextmanager
def workdir_lock(workdir: os.PathLike | str, command: str) -> Iterator[None]:
  """Holds `<workdir>/.lock` for the block; WorkdirInUse (one line naming the holder) at once
  when another process holds it. The workdir must exist; gs:// workdirs are not locked."""
  path = os.fspath(workdir)
  if "://" in path:
    yield
    return
  lock_path = os.path.join(path, LOCK_FILE)
  try:
    fd = _open_locked(lock_path, wait=False)
  except _Busy as busy:
    holder = _holder_text(busy.fd)
    os.close(busy.fd)
    raise WorkdirInUse(f"workdir {path} is in use by {holder}; wait for it to finish or stop "
                       "it, or use another --workdir") from None
  try:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
              "command": command, "argv": sys.argv}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
    yield
  finally:
    os.close(fd)  # releases the lock (the file stays: removing it would race a waiting process)


@contextlib.contextmanager
def build_lock(folder: os.PathLike | str, name: str) -> Iterator[None]:
  """Waits for and holds `<folder>/.<name>.lock`: one process at a time builds `name` there
  (the others then find it built). Cloud folders (gs://) are not locked."""
  folder = os.fspath(folder)
  if "://" in folder:
    yield
    return
  os.makedirs(folder, exist_ok=True)
  fd = _open_locked(os.path.join(folder, f".{name}.lock"), wait=True)
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
    yield
  finally:
    os.close(fd)
