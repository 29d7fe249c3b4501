"""Locations: the repository's own folders, and the one path type for what a run reads or writes.

Every location a user gives (a workdir, `init_from`, `data.data_dir`, `data.files`, a Hugging
Face folder, an output file) is an `etils.epath.Path`, made by `workdir_path`: a local path made
absolute as before, or a cloud URL (gs://bucket/dir) kept as it is. orbax takes the same type.
gs:// needs `gcsfs` (requirements.txt) and credentials (Application Default Credentials).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from typing import BinaryIO, Callable, Iterator

from etils import epath

from research.config import UserError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA_ROOT = REPO_ROOT / "data"
TFDS_DATA_DIR = DATA_ROOT / "tfds"  # prepared ArrayRecord files (git-ignored, rebuilt on demand)


def is_url(path: str | os.PathLike) -> bool:
  """True for a cloud location (gs://bucket/...), False for a local path."""
  return "://" in os.fspath(path)


def workdir_path(path: str | os.PathLike) -> epath.Path:
  """A location a user gave as an epath.Path: a local path resolved to an absolute one (as
  pathlib's resolve() does), a URL as it is (never read as a local folder named 'gs:')."""
  if is_url(path):
    return epath.Path(os.fspath(path))
  return epath.Path(pathlib.Path(path).resolve())


def check_bucket(path: str | os.PathLike) -> None:
  """UserError (one line) when `path` is on cloud storage that cannot be used: gcsfs missing,
  a bucket that does not exist, or access refused. Nothing is written; local paths pass."""
  if not is_url(path):
    return
  scheme, rest = os.fspath(path).split("://", 1)
  bucket = rest.split("/", 1)[0]
  url = f"{scheme}://{bucket}"
  try:
    if scheme == "gs":
      # fsspec/gcsfs: only for gs:// paths
      import fsspec  # pylint: disable=import-outside-toplevel
      # One listing of at most one object: FileNotFoundError when the bucket does not exist, a
      # 401/403 error when this account may not read it, [] for an empty bucket it may read.
      fsspec.filesystem("gcs").ls(bucket, max_results=1)
    elif not epath.Path(url).exists():
      raise FileNotFoundError(url)
  except ImportError as e:
    raise UserError(f"{path}: {scheme}:// paths need gcsfs ({_first_line(e)}); install "
                    "requirements.txt (pip install -r requirements.txt)") from None
  except FileNotFoundError:
    raise UserError(f"bucket {url} does not exist (for {path}); create it (gcloud storage "
                    f"buckets create {url}) or fix the name") from None
  except Exception as e:  # pylint: disable=broad-except  (auth, permission, network errors)
    raise UserError(f"bucket {url} refuses access or cannot be reached (for {path}): "
                    f"{_first_line(e)}; check the name and the credentials (gcloud auth "
                    "application-default login, or the VM's service account)") from None


def write_atomic(path: epath.Path, data: str | bytes | Callable[[BinaryIO], object]) -> None:
  """Writes a whole file (text, bytes, or what `data(file)` writes) so that no reader ever sees
  it half written: locally under a temporary name renamed into place; a cloud object appears
  only once its upload completes."""
  if not callable(data):
    content = data.encode("utf-8") if isinstance(data, str) else data
    data = lambda f: f.write(content)
  if is_url(path):
    with path.open("wb") as f:
      data(f)
    return
  local = pathlib.Path(path)
  local.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.", suffix=".tmp")
  try:
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make the file private
    with os.fdopen(fd, "wb") as f:
      data(f)
    os.replace(tmp, local)
  except BaseException:
    os.unlink(tmp)
    raise


def _umask() -> int:
  mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
  os.umask(mask)
  return mask


def copy_tree(source: epath.Path, target: epath.Path, last: tuple[str, ...] = ()) -> None:
  """Copies the folder `source` to `target` (local or cloud, either way). Files named in
  `last` are copied after all others, so a reader that waits for them sees a whole copy."""
  if not is_url(source) and not is_url(target):
    shutil.copytree(pathlib.Path(source), pathlib.Path(target))
    return
  if not source.is_dir():
    raise FileNotFoundError(f"{source} not found (nothing to copy to {target})")
  for file in sorted(_files_under(source), key=lambda p: p.name in last):
    destination = target / os.path.relpath(os.fspath(file), os.fspath(source))
    if not is_url(destination):
      pathlib.Path(destination).parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(file.read_bytes())


def _files_under(folder: epath.Path) -> Iterator[epath.Path]:
  # Not epath's rglob or walk: on gs:// the first is refused and the second yields bare names.
  for child in folder.iterdir():
    if child.is_dir():
      yield from _files_under(child)
    else:
      yield child


@contextlib.contextmanager
def local_file(path: epath.Path) -> Iterator[pathlib.Path]:
  """A local path holding the file `path`, for libraries that open files themselves
  (safetensors): the path itself, or a downloaded copy removed afterwards."""
  if not is_url(path):
    yield pathlib.Path(path)
    return
  with tempfile.TemporaryDirectory() as tmp:
    local = pathlib.Path(tmp) / path.name
    local.write_bytes(path.read_bytes())
    yield local


@contextlib.contextmanager
def local_output(path: epath.Path) -> Iterator[pathlib.Path]:
  """A local path to write the file `path` through: the path itself, or a temporary file
  uploaded to `path` when the block ends without an error."""
  if not is_url(path):
    yield pathlib.Path(path)
    return
  with tempfile.TemporaryDirectory() as tmp:
    local = pathlib.Path(tmp) / path.name
    yield local
    path.write_bytes(local.read_bytes())


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0][:300] if text else type(error).__name__
