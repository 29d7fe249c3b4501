"""What a workdir holds besides checkpoints, and the rules that keep it whole.

- One writer at a time: `lock` (an OS file lock, see research/locks.py; on gs:// a lease, see
  research/lease.py).
- A start that fails writes nothing: `undo_failed_start` removes what the start created.
- Resume checks the data: `data_record` is written at the start (`data.json`) and compared on
  every resume, so another corpus or tokenizer setting is refused instead of silently mixed.
- The precision a run computes in is recorded (`precision.json`): `matmul_dtype="auto"`
  resolves per machine, and a resume on a machine that resolves it otherwise says so.
- Small files are read through `read_json`, which names a truncated or garbled file and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
from typing import Any, Iterator

import jax
from etils import epath

from research import lease as lease_lib
from research import locks, paths
from research.config import ExperimentConfig, UserError
from research.data import corpora

DATA_FILE = "data.json"  # what the run trains on: corpus files and sizes, tokenizer settings
HISTORY_FILE = "config_history.jsonl"  # each config a resumed run replaced, oldest first
PRECISION_FILE = "precision.json"  # the resolved precision policy, per stretch of steps
# A preference (DPO) run's reference log-probabilities, computed once before its first step
# (research/kinds/preference.py).
REFERENCE_FILE = "reference_logprobs.npz"


def read_json(path: epath.Path, fix: str) -> Any:
  """The JSON in `path`; UserError naming the file and `fix` when it is truncated or garbled."""
  text = path.read_bytes()
  try:
    return json.loads(text.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"{path} is truncated or corrupt ({len(text)} bytes; {e}); {fix}") from None


def check_writable(workdir: epath.Path, what: str = "--workdir") -> None:
  """UserError (one line) when `workdir` is a regular file or cannot be written, before any
  work. Local paths only: a bucket is checked by paths.check_bucket."""
  if paths.is_url(workdir):
    return
  path = os.fspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"{what} {path} is a file, not a folder; pass a folder (a new one is "
                    "created)")
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if os.path.isfile(existing):
    raise UserError(f"{what} {path} cannot be created: {existing} is a file")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise UserError(f"{what} {path} is not writable ({existing} is read-only for this user "
                    f"or on a read-only filesystem); pass a writable {what}")
  try:  # os.access does not see a read-only mount for root
    probe = os.path.join(existing, f".write-probe-{os.getpid()}")
    os.close(os.open(probe, os.O_CREAT | os.O_WRONLY, 0o600))
    os.unlink(probe)
  except OSError as e:
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
      raise UserError(f"{what} {path} is not writable ({existing}: {e.strerror}); pass a "
                      f"writable {what}") from None
    raise


# What a training run writes at the top of its workdir: a command that reads the workdir
# (research.evaluate) never writes over one of them, nor anything under its folders.
OWN_FILES = ("config.json", HISTORY_FILE, DATA_FILE, PRECISION_FILE, "labels.json",
             "metrics.jsonl", locks.LOCK_FILE, lease_lib.LEASE_FILE, REFERENCE_FILE)
OWN_FOLDERS = ("checkpoints", "tokenizer", "tensorboard", "data_cache")


def resolved_path(path: str | os.PathLike) -> str:
  text = os.fspath(path)
  return text.rstrip("/") if paths.is_url(text) else os.path.realpath(text)


def own_file(workdir: str | os.PathLike, path: str | os.PathLike) -> str | None:
  """The name of the workdir's own file or folder that `path` is or lies in (config.json,
  metrics.jsonl, checkpoints/...), or None."""
  root, target = resolved_path(workdir), resolved_path(path)
  if target == root:
    return "the workdir itself"
  if not target.startswith(root + "/"):
    return None
  relative = target[len(root) + 1:]
  top = relative.split("/", 1)[0]
  if relative in OWN_FILES or top in OWN_FOLDERS:
    return relative
  return None


def is_training_workdir(path: str | os.PathLike) -> bool:
  """True for a folder that holds a training run (its config.json or checkpoints/)."""
  path = epath.Path(path)
  return (path / "config.json").exists() or (path / "checkpoints").is_dir()


def check_out_folder(path: str | os.PathLike, flag: str = "--out") -> None:
  """An experiment runner's output folder (where it writes runs and reports): UserError (one
  line) when it is a file or a training workdir, before anything is written."""
  if not paths.is_url(path) and os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"{flag}={path} is a file, not a folder; pass a folder (a new one is "
                    "created)")
  if is_training_workdir(path):
    raise UserError(f"{flag}={path} is a training workdir (it holds config.json or "
                    "checkpoints/); pass a folder of its own, e.g. a new one")


@contextlib.contextmanager
def lock(workdir: epath.Path, command: str) -> Iterator[None]:
  """The workdir's lock for the block, taken by process 0 only (the processes of one run
  share a workdir): an OS file lock on a local disk, a lease on cloud storage (research/lease.py;
  a run whose lease was taken over stops at its next step)."""
  if jax.process_index() != 0:
    yield
    return
  guard = (lease_lib.workdir_lease(workdir, command) if paths.is_url(workdir)
           else locks.workdir_lock(workdir, command))
  with guard:
    yield


def _entries(workdir: epath.Path) -> set[str]:
  """Names under the workdir a start may create: top-level entries and those of the caches."""
  if not workdir.exists():
    return set()
  names = {p.name for p in workdir.iterdir()}
  for folder in ("data_cache",):
    if (workdir / folder).is_dir():
      names |= {f"{folder}/{p.name}" for p in (workdir / folder).iterdir()}
  return names


class FailedStartUndo:
  """Removes, when the start fails, what it created in the workdir (tokenizer, caches, the
  folder itself); `started()` marks the moment the run really began, after which nothing is
  removed."""

  def __init__(self, workdir: epath.Path):
    self.workdir = workdir
    self.existed = workdir.exists()
    self.before = _entries(workdir)
    self._started = False

  def started(self) -> None:
    self._started = True

  def undo(self) -> None:
    if self._started or jax.process_index() != 0:
      return
    if not self.existed and not paths.is_url(self.workdir):
      shutil.rmtree(os.fspath(self.workdir), ignore_errors=True)
      return
    # The lock file too, when this start made it: a process waiting on it retries on the new
    # file (research/locks.py), so removing it while held is safe.
    # Not the lease of a gs:// workdir: the lease's own end deletes it (conditioned on its
    # generation), and a thread renews it until then.
    for name in sorted(_entries(self.workdir) - self.before - {lease_lib.LEASE_FILE},
                       reverse=True):
      path = self.workdir / name
      if path.is_dir():
        path.rmtree(missing_ok=True)
      else:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Imports (research.convert --from_hf / --from_gguf)
# ---------------------------------------------------------------------------------------------

IMPORT_MARKER = ".import-unfinished"  # in a workdir while an import writes it


def unfinished_import(workdir: epath.Path) -> bool:
  """True for a workdir that an import began and never finished (it was killed: a failing
  import removes what it wrote); such a workdir holds no run."""
  return (workdir / IMPORT_MARKER).exists() and not (workdir / "config.json").exists()


def start_import(workdir: epath.Path, undo: FailedStartUndo) -> FailedStartUndo:
  """Under the workdir's lock, before an import writes: removes what an import killed earlier
  left (with a note), then marks this import unfinished until `finish_import`. Returns the undo
  to use (the killed import's, when it left anything)."""
  marker = workdir / IMPORT_MARKER
  if unfinished_import(workdir):
    try:
      record = json.loads(marker.read_text())
      before, existed = set(record["before"]), bool(record["existed"])
    except (ValueError, KeyError, TypeError, OSError):  # cut short while written itself
      before, existed = undo.before - {IMPORT_MARKER}, undo.existed
    left = sorted(_entries(workdir) - before - {IMPORT_MARKER, locks.LOCK_FILE,
                                                 lease_lib.LEASE_FILE}, reverse=True)
    for name in left:
      path = workdir / name
      if path.is_dir():
        path.rmtree(missing_ok=True)
      else:
        path.unlink(missing_ok=True)
    marker.unlink(missing_ok=True)
    print(f"note: an import into {workdir} was stopped before it finished; removed what it "
          f"left ({', '.join(sorted(left)) or 'nothing'}) and importing again", file=sys.stderr)
    undo = FailedStartUndo(workdir)
    undo.before, undo.existed = before, existed
  paths.write_atomic(marker, json.dumps({"before": sorted(undo.before),
                                         "existed": undo.existed}))
  return undo


def finish_import(workdir: epath.Path) -> None:
  """The import wrote its config.json (last): the workdir is whole."""
  (workdir / IMPORT_MARKER).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# The data a run trains on
# ---------------------------------------------------------------------------------------------


def data_record(config: ExperimentConfig) -> dict[str, Any]:
  """What the run's tokens come from: the corpus (each file with its size and the sha256 of its
  bytes) and the tokenizer settings."""
  data = config.data
  record: dict[str, Any] = {
      "task": config.task.name, "dataset": data.dataset, "text_key": data.text_key,
      "tokenizer": data.tokenizer, "vocab_size": data.vocab_size,
      "tokenizer_path": data.tokenizer_path}
  if data.dataset == "text_files" and not config.task.name:
    files = corpora.resolve_text_files(data.files)
    record["files"] = {name: dict(zip(("size", "sha256"), corpora.file_fingerprint(name)))
                       for name in files}
  return record


def _same_file(before: Any, now: dict) -> bool:
  """A file's record then and now; a record written before fingerprints (its size alone)
  compares by size."""
  if isinstance(before, int):
    return before == now["size"]
  return before == now


def check_data(workdir: epath.Path, config: ExperimentConfig) -> dict[str, Any] | None:
  """Refuses to resume a run on other data than it started with; returns the record to write
  (None when the workdir already holds the same one)."""
  record = data_record(config)
  path = workdir / DATA_FILE
  if not path.exists():
    return record
  saved = read_json(path, f"delete {path} to record the data of this run again (only if the "
                          "data is the one the run started with)")
  diffs = []
  for key in sorted(set(saved) | set(record)):
    if key == "files" or saved.get(key) == record.get(key):
      continue
    diffs.append(f"data.{key}: {saved.get(key)!r} -> {record.get(key)!r}")
  before, now = saved.get("files", {}), record.get("files", {})
  gone = sorted(set(before) - set(now))
  new = sorted(set(now) - set(before))
  changed = sorted(f for f in set(before) & set(now) if not _same_file(before[f], now[f]))
  for what, names in (("files no longer given", gone), ("new files", new),
                      ("files whose content changed", changed)):
    if names:
      diffs.append(f"{what}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}")
  if diffs:
    raise UserError(f"workdir {workdir} was trained on other data ({'; '.join(diffs)}); its "
                    "tokenizer and data order belong to that data: pass the data it started "
                    f"with (see {path}), or use a new --workdir for this data")
  return record if before != now else None  # a record of sizes alone gains the fingerprints


def record_config(workdir: epath.Path, config_json: str) -> list[str]:
  """Writes config.json; a resumed run with other settings keeps the previous config in
  config_history.jsonl. Returns the changed settings ('train.seed: 0 -> 1')."""
  path = workdir / "config.json"
  if not path.exists():
    paths.write_atomic(path, config_json)
    return []
  old_text = path.read_text()
  if old_text == config_json:
    return []
  old, new = json.loads(old_text), json.loads(config_json)
  changes = [f"{section}.{key}: {old.get(section, {}).get(key)!r} -> {value!r}"
             for section, values in new.items() if isinstance(values, dict)
             for key, value in values.items() if old.get(section, {}).get(key) != value]
  changes += [f"{key}: {old.get(key)!r} -> {value!r}" for key, value in new.items()
              if not isinstance(value, dict) and old.get(key) != value]
  history = workdir / HISTORY_FILE
  previous = history.read_text() if history.exists() else ""
  paths.write_atomic(history, previous + json.dumps(old) + "\n")
  paths.write_atomic(path, config_json)
  return changes


def record_precision(workdir: epath.Path, policy: dict[str, str], machine: str,
                     step: int) -> str | None:
  """Records the precision policy the run computes in from `step` on (the config's, with
  "auto" resolved on this machine). Returns a one-line note when a resumed run now computes in
  another precision than its earlier steps did (its losses then differ from those of a run
  that stayed on one kind of machine); None otherwise."""
  path = workdir / PRECISION_FILE
  recorded = (read_json(path, "delete it: it is written again at the next start")["stretches"]
              if path.exists() else [])
  kept = [s for s in recorded if s["from_step"] < step]  # the steps the checkpoint holds
  previous = kept[-1] if kept else None
  same = previous is not None and all(previous.get(k) == v for k, v in policy.items())
  if not same:
    kept.append({"from_step": step, **policy, "machine": machine})
  if kept != recorded:
    paths.write_atomic(path, json.dumps({"stretches": kept}, indent=1))
  if previous is None or same:
    return None
  changed = ", ".join(f"{k}={previous.get(k)} -> {v}" for k, v in policy.items()
                      if previous.get(k) != v)
  return (f"note: steps {previous['from_step']}-{step} of this run computed in another "
          f"precision ({previous['machine']}); here it continues with {changed} ({machine}), "
          f"so its losses will differ from a run that stays on one kind of machine (see {path})")
