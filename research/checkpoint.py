"""orbax-checkpoint: train state + data iterator state + config in one step folder.

A step is written under `<workdir>/checkpoints/<step>/` with three items:
  state   the TrainState pytree (sharded arrays; restored onto whatever shardings the caller asks)
  data    the grain iterator state (one JSON per process), so a resumed run sees the same batches
  config  the resolved experiment config (JSON)
orbax writes into a temporary folder and renames it when complete, so an interrupted save is never
taken as a step.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import sys
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from research import lease as lease_lib
from research import paths
from research.config import UserError

# The layout of what a step folder holds; bumped when it changes incompatibly. A checkpoint
# written by a newer layout is refused instead of being misread.
FORMAT_VERSION = 1
CHECKSUMS_KEY = "state_sha256"  # in a step's config item: each tensor's sha256 (state_checksums)


class CheckpointError(UserError):
  """A checkpoint that cannot be used; the message names the problem and the fix."""


class DiskFullError(CheckpointError):
  """A save ran out of space; earlier checkpoints are intact."""


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
  return paths.workdir_path(workdir) / "checkpoints"


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the wanted shardings: the target of a restore."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


class Checkpointer:
  """Thin wrapper over ocp.CheckpointManager with this project's three items."""

  def __init__(self, workdir: str | os.PathLike, *, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    self.directory = checkpoint_dir(workdir)
    self._read_only = read_only
    self._saving = None  # the step of the latest save started
    self._failed = False  # a save ran out of space (and was reported)
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                             max_to_keep=None)
    else:
      # cleanup_tmp_directories: a save cut short by a kill leaves a *.orbax-checkpoint-tmp
      # folder, never listed as a step; it is removed when the next run starts.
      options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save,
                                             cleanup_tmp_directories=True)
      self._note_saves_cut_short()
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data", "config"))

  def _note_saves_cut_short(self) -> None:
    """Says which saves were cut short (a kill, a second Ctrl-C): their folders are removed as
    the manager starts, and the run continues from the last complete step."""
    folder = os.fspath(self.directory)
    if paths.is_url(folder) or not os.path.isdir(folder) or jax.process_index() != 0:
      return
    cut = sorted({int(m.group(1)) for name in os.listdir(folder)
                  if (m := re.match(r"(\d+)\.orbax-checkpoint-tmp", name))})
    if cut:
      steps = ", ".join(map(str, cut))
      print(f"note: the save of step {steps} in {folder} was cut short (the run was stopped "
            "during it); removing it, the run goes on from the last complete step",
            file=sys.stderr)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iterator=None, config: dict | None = None,
           force: bool = False) -> bool:
    self.check_lease()
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if config is not None:
      record = {"format_version": FORMAT_VERSION, **config}
      if jax.process_count() == 1:  # every shard is this process's: the digests are whole
        record[CHECKSUMS_KEY] = state_checksums(state)
      items["config"] = ocp.args.JsonSave(record)
    # The previous save may still be writing in the background; orbax would wait for it inside
    # the new save, and its error would then be named for the new step.
    with self._disk_full_is_one_line(self._saving):
      self._manager.wait_until_finished()
    with self._disk_full_is_one_line(step):
      self._check_space(step, state)
      return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def _no_space(self, step: int, detail: str) -> CheckpointError:
    self._saving = None
    self._failed = True
    try:
      self._manager.wait_until_finished()
    except Exception:  # pylint: disable=broad-except  (the failed save itself)
      pass
    latest = self._manager.latest_step()
    kept = (f"the last complete checkpoint is step {latest} (intact)" if latest is not None
            else "no checkpoint was complete yet")
    return DiskFullError(f"no space left on the device of {self.directory} while saving step "
                           f"{step} ({detail}); {kept}: free space and rerun the same command "
                           "to continue")

  def disk_full(self, error: OSError, step: int) -> CheckpointError:
    """The one line for another write of the run (metrics, TensorBoard) that found the disk
    full at `step`: a save still in flight that fails is named as the cause (it usually filled
    the disk), else the write, with the last complete checkpoint either way."""
    saving = self._saving
    if saving is not None and not paths.is_url(self.directory):
      try:
        self._manager.wait_until_finished()
      except Exception:  # pylint: disable=broad-except  (the failed save itself)
        pass
      if saving not in self.all_steps():
        return self._no_space(saving, _first_line(error))
    self._failed = True
    latest = self._manager.latest_step()
    kept = (f"the last complete checkpoint is step {latest} (intact)" if latest is not None
            else "no checkpoint was complete yet")
    what = os.path.basename(error.filename) if error.filename else "the run's logs"
    return DiskFullError(f"no space left on the device of {self.directory.parent} while "
                         f"writing {what} at step {step} ({_first_line(error)}); {kept}: free "
                         "space and rerun the same command to continue")

  def _check_space(self, step: int, state: Any) -> None:
    """Refuses a save that cannot fit, before orbax starts it: a save that runs out of space
    fails in several background threads at once. The estimate is the larger of the state's
    bytes and the last complete step folder's size (one more step is written before the
    oldest is removed)."""
    self._saving = step
    if paths.is_url(self.directory):
      return
    self._manager.wait_until_finished()  # the previous save's size counts, and so does its end
    need = sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(state))
    latest = self._manager.latest_step()
    if latest is not None:
      folder = os.fspath(self.directory / str(latest))
      need = max(need, sum(os.path.getsize(os.path.join(root, f))
                           for root, _, files in os.walk(folder) for f in files))
    need = int(need * 1.1) + (128 << 10)  # + metadata, the data iterator and config
    free = shutil.disk_usage(os.fspath(self.directory)).free
    if free < need:
      raise self._no_space(step, f"{free:,} bytes free, about {need:,} needed")

  @contextlib.contextmanager
  def _disk_full_is_one_line(self, step: int):
    """A save (or the wait for one) that ran out of space becomes one CheckpointError."""
    try:
      yield
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      if "No space left" not in str(e) and getattr(e, "errno", None) != errno.ENOSPC:
        raise
      # An asynchronous save's error surfaces at the next save: name the step that failed.
      failed = re.search(r"/(\d+)\.orbax-checkpoint-tmp", str(e))
      raise self._no_space(int(failed.group(1)) if failed else step, _first_line(e)) from None

  def restore(self, step: int, abstract_state: Any, data_iterator=None) -> Any:
    """Restores the state onto the shardings in `abstract_state` (and the iterator in place),
    checking its tensors against the checksums written at save."""
    saved = self.check_format(step)
    expected = saved.get(CHECKSUMS_KEY)
    # Each tensor is read in the dtype it was saved in, so every checksum is compared; one the
    # caller wants in another dtype is cast afterwards.
    items = {"state": ocp.args.StandardRestore(_as_saved(abstract_state, expected))}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # any failure to read a step means it cannot be used as it is
      raise CheckpointError(
          f"checkpoint {self.directory / str(step)} cannot be read as this run's train state "
          f"({_first_line(e)}); it is corrupt, or was written with another model or optimizer "
          "configuration: use a new --workdir, or delete that step folder to resume from the "
          "one before") from e
    self._verify(step, restored["state"], expected)
    return _cast_like(restored["state"], abstract_state)

  def _verify(self, step: int, state: Any, expected: dict | None) -> None:
    """CheckpointError naming the first tensor whose bytes differ from those saved."""
    if not expected or jax.process_count() != 1:
      return  # a step saved before checksums, or by several processes
    for name, digest in state_checksums(state).items():
      kind = lambda d: d.rsplit(":", 1)[0]  # (read in its saved dtype: see _as_saved)
      if name in expected and kind(expected[name]) == kind(digest) and expected[name] != digest:
        raise CheckpointError(
            f"checkpoint {self.directory / str(step)} changed on disk since it was saved: tensor "
            f"{name} no longer matches its checksum; delete that step folder to resume from "
            "the one before, or use a new --workdir")

  def restore_config(self, step: int) -> dict:
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
      config = restored["config"]
      if not isinstance(config, dict):
        raise ValueError(f"it holds a JSON {type(config).__name__}, not an object")
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"checkpoint {self.directory / str(step)} has no readable config "
                            f"({_first_line(e)}); it is corrupt or not written by "
                            "research.train: delete that step folder to use the one before, "
                            "or use a new --workdir") from e
    return config

  def check_format(self, step: int) -> dict:
    """The step's config record (CheckpointError when a newer format wrote it)."""
    saved = self.restore_config(step)
    version = saved.get("format_version", 1)
    if version > FORMAT_VERSION:
      raise CheckpointError(
          f"checkpoint {self.directory / str(step)} was written by a newer checkpoint format "
          f"(version {version}; this code reads up to {FORMAT_VERSION}); update the code, or use "
          "a new --workdir")
    return saved

  def delete(self, step: int) -> None:
    """Deletes a step folder (a step that must be trained again)."""
    self._manager.delete(step)

  def reached_preemption(self, step: int) -> bool:
    """True at JAX's multi-host preemption sync point (always False without jax.distributed).
    Called at every step: a run whose gs:// workdir was taken over stops here (check_lease)."""
    self.check_lease()
    return self._manager.reached_preemption(step)

  def check_lease(self) -> None:
    """LeaseLost (one line) when this process held the lease of the workdir (on gs://) and
    another run has taken it over: this run then writes no more checkpoints."""
    if self._read_only:
      return
    lease = lease_lib.held(self.directory.parent)
    if lease is not None:
      lease.check()

  def wait(self) -> None:
    with self._disk_full_is_one_line(self._saving):
      self._manager.wait_until_finished()

  def close(self) -> None:
    if self._failed:  # reported already: what the failed save left behind only fails again
      with contextlib.suppress(Exception):
        self._manager.close()
      return
    with self._disk_full_is_one_line(self._saving):
      self._manager.wait_until_finished()
    self._manager.close()


def _saved_dtype(record: str) -> np.dtype:
  """The dtype of a state_checksums record ("bfloat16[4, 8]:<hex>")."""
  return jax.numpy.dtype(record.split("[", 1)[0])


def _as_saved(abstract: Any, expected: dict | None) -> Any:
  """`abstract` with each leaf in the dtype the checksums record says it was saved in."""
  if not expected or jax.process_count() != 1:
    return abstract

  def saved(path, leaf):
    record = expected.get(jax.tree_util.keystr(path))
    if record is None or not hasattr(leaf, "dtype"):
      return leaf
    dtype = _saved_dtype(record)
    if dtype == leaf.dtype:
      return leaf
    if isinstance(leaf, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(leaf.shape, dtype, sharding=leaf.sharding)
    return np.zeros(np.shape(leaf), dtype)

  return jax.tree_util.tree_map_with_path(saved, abstract)


def _cast_like(state: Any, abstract: Any) -> Any:
  """`state` with each leaf in the dtype `abstract` asks for (a no-op where they agree)."""
  def cast(leaf, want):
    dtype = getattr(want, "dtype", None)
    return leaf if dtype is None or leaf.dtype == dtype else leaf.astype(dtype)
  return jax.tree.map(cast, state, abstract)


def state_checksums(state: Any) -> dict[str, str]:
  """sha256 of each tensor's bytes, by its path in the tree ("params['w']"): written with a
  step, compared at restore, so bytes changed on disk are found even where they still decode.
  Costs one copy of the state to the host and ~1-2 GB/s of hashing at each save and restore
  (README, "Runs that survive")."""
  sums = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]:
    array = np.ascontiguousarray(leaf)
    digest = hashlib.sha256(array.reshape(-1).view(np.uint8)).hexdigest()
    sums[jax.tree_util.keystr(path)] = f"{array.dtype}{list(array.shape)}:{digest}"
  return sums


def _first_line(error: BaseException) -> str:
  """The gist of an orbax or tensorstore error, on one line of at most 200 characters."""
  while True:
    if len(error.args) == 1 and isinstance(error.args[0], BaseException):
      error = error.args[0]
    elif (str(error).startswith("Encountered error while reading array") and
          error.__cause__ is not None):
      error = error.__cause__  # orbax's wrapper: the cause names the file and what is wrong
    else:
      break
  if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
    text = error.args[0].strip().splitlines()  # not the repr str(KeyError) gives
  else:
    text = str(error).strip().splitlines()
  if not text:
    return type(error).__name__
  # tensorstore's pointer to its details is a repr of a native method that runs over many
  # lines ('See full TensorStore details: <bound method pybind11_detail_function_record_...
  # .spec of TensorStore({...'); orbax's advice on padding arrays does not apply here.
  line = re.sub(r"\s*See full TensorStore details:.*", "", text[0])
  line = re.sub(r"\s*Truncating/padding is disabled\..*", "", line)
  line = re.sub(r"<bound method pybind11[^>]*(?:>|$)", "a native function", line)
  line = re.sub(r"<bound method ([\w.]+)(?: of <[^<>]*>)?>", r"\1()", line)
  return line[:200]
