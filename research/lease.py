"""Leases: one writer at a time for a workdir on cloud storage (gs://).

An object store has no lock that the kernel releases when its holder dies (research/locks.py
is that lock for local disks). A gs:// workdir is guarded instead by a lease, the object
`<workdir>/.lease`, whose every write carries a precondition on the object's generation:
- it is created only where none exists (`ifGenerationMatch=0`): of two runs starting at once,
  one creates it and the other is refused, naming the holder;
- the holder renews it from a background thread every third of its duration, each write
  conditioned on the generation it wrote last, so a renewal fails once anyone else wrote it;
- another run takes it over only once it has gone unrenewed for its whole duration (the holder
  was killed or lost its connection), conditioned on the generation it read: of two runs that
  take over at once, one wins;
- a run whose renewal failed because its lease was taken over stops at its next step or save,
  before writing anything more (`Lease.check`, called by research/checkpoint.py);
- the holder deletes it when it ends, conditioned on its own generation.

Expiry is judged from the object's `updated` time (the store's clock) against the reader's
clock; RESEARCH_LEASE_SECONDS sets the duration (default 60 s).
"""

from __future__ import annotations

from urllib.parse import quote
import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Callable, Iterator, Protocol

from research.config import UserError
from research.locks import WorkdirInUse

LEASE_FILE = ".lease"  # inside a gs:// workdir
SECONDS_ENV = "RESEARCH_LEASE_SECONDS"
DEFAULT_SECONDS = 60.0


class PreconditionFailed(Exception):
  """The object's generation was not the one a write or delete was conditioned on."""


class LeaseLost(UserError):
  """The workdir's lease was taken over, or could not be renewed, while this run held it."""


class ObjectStore(Protocol):
  """The three calls a lease needs from an object store (GCS's JSON API has them)."""

  def read(self, name: str) -> tuple[bytes, int, float] | None:
    """(content, generation, updated in seconds since the epoch), or None when absent."""

  def write(self, name: str, data: bytes, if_generation_match: int) -> int:
    """Writes `name` if its generation is `if_generation_match` (0: it must not exist);
    returns the new generation; PreconditionFailed otherwise."""

  def delete(self, name: str, if_generation_match: int) -> None:
    """Deletes `name` if its generation matches (PreconditionFailed otherwise); absent: no-op."""


class GcsStore:
  """ObjectStore on a gs://bucket/prefix through gcsfs's JSON API calls (the client, endpoint
  and credentials that etils.epath uses for gs:// paths)."""

  def __init__(self, url: str):
    # fsspec/gcsfs: only for gs:// paths
    import fsspec  # pylint: disable=import-outside-toplevel
    self.fs = fsspec.filesystem("gcs")
    self.bucket, _, prefix = url.split("://", 1)[1].partition("/")
    self.prefix = prefix.strip("/")

  def _key(self, name: str) -> str:
    return f"{self.prefix}/{name}" if self.prefix else name

  def read(self, name: str) -> tuple[bytes, int, float] | None:
    for _ in range(5):  # an object replaced between its metadata and its content: read again
      try:
        meta = self.fs.call("GET", "b/{}/o/{}", self.bucket, self._key(name), json_out=True)
        generation = int(meta["generation"])
        _, data = self.fs.call("GET", "b/{}/o/{}", self.bucket, self._key(name), alt="media",
                               generation=str(generation))
      except FileNotFoundError:
        continue
      return data, generation, _rfc3339_seconds(meta.get("updated"))
    try:
      self.fs.call("GET", "b/{}/o/{}", self.bucket, self._key(name), json_out=True)
    except FileNotFoundError:
      return None
    raise OSError(f"gs://{self.bucket}/{self._key(name)} changes faster than it can be read")

  def write(self, name: str, data: bytes, if_generation_match: int) -> int:
    url = f"{self.fs._location}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o"  # pylint: disable=protected-access
    try:
      meta = self.fs.call("POST", url, uploadType="media", name=self._key(name),
                          ifGenerationMatch=str(if_generation_match), data=data, json_out=True,
                          headers={"Content-Type": "application/octet-stream"})
    except FileExistsError:  # gcsfs's name for HTTP 412 Precondition Failed
      raise PreconditionFailed(name) from None
    return int(meta["generation"])

  def delete(self, name: str, if_generation_match: int) -> None:
    try:
      self.fs.call("DELETE", "b/{}/o/{}", self.bucket, self._key(name),
                   ifGenerationMatch=str(if_generation_match))
    except FileExistsError:
      raise PreconditionFailed(name) from None
    except FileNotFoundError:
      pass


def _rfc3339_seconds(text: str | None) -> float:
  if not text:
    return time.time()
  return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def lease_seconds() -> float:
  text = os.environ.get(SECONDS_ENV, "")
  if not text:
    return DEFAULT_SECONDS
  try:
    seconds = float(text)
  except ValueError:
    seconds = float("nan")
  if not seconds >= 1 or seconds == float("inf"):
    raise UserError(f"{SECONDS_ENV}={text!r} must be a number of seconds >= 1 (how long a "
                    "gs:// workdir's lease lasts unrenewed); unset it for the default "
                    f"{DEFAULT_SECONDS:.0f}")
  return seconds


def _holder_text(record: dict) -> str:
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("since", 0)))
  return (f"{record.get('command', 'another process')} (pid {record.get('pid', '?')} on host "
          f"{record.get('host', '?')}, since {since})")


def _parse(data: bytes) -> dict:
  try:
    record = json.loads(data.decode("utf-8"))
  except (UnicodeDecodeError, ValueError):
    return {}
  return record if isinstance(record, dict) else {}


class Lease:
  """The lease of one workdir, held from `acquire()` to `release()`."""

  def __init__(self, store: ObjectStore, workdir: str, command: str, seconds: float,
               clock: Callable[[], float] = time.time):
    self.store, self.workdir, self.seconds, self.clock = store, workdir, seconds, clock
    self.record = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                   "since": clock(), "argv": sys.argv, "seconds": seconds,
                   "token": uuid.uuid4().hex}
    self.generation: int | None = None
    self.lost: str | None = None  # why the lease is no longer this run's
    self.last_error = ""  # the last renewal that failed for another reason than a takeover
    self._renewed = time.monotonic()  # the last successful write, on this process's clock
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  @property
  def path(self) -> str:
    return f"{self.workdir.rstrip('/')}/{LEASE_FILE}"

  def _body(self) -> bytes:
    return json.dumps({**self.record, "renewed": self.clock()}).encode("utf-8")

  def acquire(self) -> str | None:
    """Takes the lease; WorkdirInUse (one line, naming the holder) while another run's has not
    expired. Returns a note when an expired lease was taken over."""
    for _ in range(5):
      current = self.store.read(LEASE_FILE)
      if current is None:
        try:
          self._wrote(self.store.write(LEASE_FILE, self._body(), 0))
          return None
        except PreconditionFailed:
          continue  # created by another run meanwhile: read whose it is
      data, generation, updated = current
      holder = _parse(data)
      if holder.get("token") == self.record["token"]:  # our own write, retried by the client
        self._wrote(generation)
        return None
      age = self.clock() - updated
      remaining = float(holder.get("seconds", self.seconds)) - age
      if remaining > 0:
        raise WorkdirInUse(
            f"workdir {self.workdir} is in use by {_holder_text(holder)}: its lease "
            f"({self.path}) was renewed {max(age, 0):.0f} s ago and expires {remaining:.0f} s "
            "after its holder stops renewing it; wait for it to finish or stop it, or use "
            "another --workdir")
      try:
        self._wrote(self.store.write(LEASE_FILE, self._body(), generation))
      except PreconditionFailed:
        continue  # renewed, or taken over by another run, meanwhile: read again
      return (f"note: workdir {self.workdir} was held by {_holder_text(holder)}, whose lease "
              f"expired {age - float(holder.get('seconds', self.seconds)):.0f} s ago (killed, "
              "or cut off from storage); this run takes it over")
    raise WorkdirInUse(f"workdir {self.workdir} is being taken by other runs at this moment "
                       f"(its lease {self.path} kept changing); wait for them, or use another "
                       "--workdir")

  def _wrote(self, generation: int) -> None:
    self.generation = generation
    self._renewed = time.monotonic()

  def renew(self) -> None:
    """One renewal (the background thread's work): conditioned on the generation written last,
    so it fails once another run has written the lease."""
    if self.lost is not None:
      return
    try:
      self._wrote(self.store.write(LEASE_FILE, self._body(), self.generation))
    except PreconditionFailed:
      try:
        current = self.store.read(LEASE_FILE)
        holder = _holder_text(_parse(current[0])) if current else "nobody (it was deleted)"
      except Exception:  # pylint: disable=broad-except  (who it was is only for the message)
        holder = "another run"
      self.lost = (f"workdir {self.workdir} was taken over by {holder} while this run held "
                   f"it (its lease {self.path} was written by another run)")
    except Exception as e:  # pylint: disable=broad-except  (network: tried again until expiry)
      self.last_error = f"{type(e).__name__}: {str(e).strip()[:120]}".splitlines()[0]

  def check(self) -> None:
    """LeaseLost when the lease is no longer surely this run's."""
    unrenewed = time.monotonic() - self._renewed
    if self.lost is None and unrenewed >= self.seconds:
      error = f" (last error: {self.last_error})" if self.last_error else ""
      self.lost = (f"this run could not renew the lease of workdir {self.workdir} for "
                   f"{unrenewed:.0f} s{error}, so another run may have taken it over")
    if self.lost is not None:
      raise LeaseLost(f"{self.lost}; this run stopped without writing more: check who trains "
                      f"in {self.workdir} before rerunning")

  def start_renewing(self) -> None:
    def loop():
      while not self._stop.wait(self.seconds / 3):
        self.renew()
        if self.lost is not None:
          return
    self._thread = threading.Thread(target=loop, name="workdir-lease", daemon=True)
    self._thread.start()

  def release(self) -> None:
    """Stops renewing and deletes the lease, unless another run holds it now."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self.lost is None and self.generation is not None:
      with contextlib.suppress(PreconditionFailed, OSError):
        self.store.delete(LEASE_FILE, self.generation)
    self.generation = None


_HELD: dict[str, Lease] = {}  # the leases this process holds, by workdir URL


def held(workdir: str | os.PathLike) -> Lease | None:
  """The lease this process holds on `workdir` (None for a local path or one not held)."""
  return _HELD.get(os.fspath(workdir).rstrip("/"))


@contextlib.contextmanager
def workdir_lease(workdir: str | os.PathLike, command: str,
                  store: ObjectStore | None = None) -> Iterator[Lease]:
  """Holds the lease of the gs:// `workdir` for the block (see the module's docstring)."""
  url = os.fspath(workdir).rstrip("/")
  lease = Lease(store or GcsStore(url), url, command, lease_seconds())
  note = lease.acquire()
  if note:
    print(note, file=sys.stderr)
  _HELD[url] = lease
  lease.start_renewing()
  try:
    yield lease
  finally:
    _HELD.pop(url, None)
    lease.release()
