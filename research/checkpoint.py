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
import os
import re
import shutil
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from research import paths
from research.config import UserError

# The layout of what a step folder holds; bumped when it changes incompatibly. A checkpoint
# written by a newer layout is refused instead of being misread.
FORMAT_VERSION = 1


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
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                             max_to_keep=None)
    else:
      # cleanup_tmp_directories: a save cut short by a kill leaves a *.orbax-checkpoint-tmp
      # folder, never listed as a step; it is removed when the next run starts.
      options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save,
                                             cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data", "config"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iterator=None, config: dict | None = None,
           force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if config is not None:
      items["config"] = ocp.args.JsonSave({"format_version": FORMAT_VERSION, **config})
    with self._disk_full_is_one_line(step):
      self._check_space(step, state)
      return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def _no_space(self, step: int, detail: str) -> CheckpointError:
    self._saving = None
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
    """Restores the state onto the shardings in `abstract_state` (and the iterator in place)."""
    self.check_format(step)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
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
    return restored["state"]

  def restore_config(self, step: int) -> dict:
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"checkpoint {self.directory / str(step)} has no readable config "
                            f"({_first_line(e)}); it is corrupt or not written by research.train"
                            ) from e
    return restored["config"]

  def check_format(self, step: int) -> None:
    version = self.restore_config(step).get("format_version", 1)
    if version > FORMAT_VERSION:
      raise CheckpointError(
          f"checkpoint {self.directory / str(step)} was written by a newer checkpoint format "
          f"(version {version}; this code reads up to {FORMAT_VERSION}); update the code, or use "
          "a new --workdir")

  def reached_preemption(self, step: int) -> bool:
    """True at JAX's multi-host preemption sync point (always False without jax.distributed)."""
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    with self._disk_full_is_one_line(getattr(self, "_saving", None)):
      self._manager.wait_until_finished()

  def close(self) -> None:
    with self._disk_full_is_one_line(getattr(self, "_saving", None)):
      self._manager.wait_until_finished()
    self._manager.close()


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  if not text:
    return type(error).__name__
  # Reprs of native callables ('<bound method pybind11_detail_function_record_... of <...>>')
  # say nothing to a user.
  line = re.sub(r"<bound method pybind11\S*(?: of <[^<>]*>)?>", "a native function", text[0])
  line = re.sub(r"<bound method ([\w.]+)(?: of <[^<>]*>)?>", r"\1()", line)
  return line[:200]
