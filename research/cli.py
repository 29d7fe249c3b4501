"""What every command-line tool shares: flag parsing, bad input as one `error: ...` line with
exit status 2, Ctrl-C as exit status 130, quiet logs, and joining a multi-process runtime.

  def main(argv):
    cli.quiet_logs()
    cli.reject_positional_args(argv)
    cli.run_cli(body)   # body() raises UserError for bad input

  app.run(main, flags_parser=cli.parse_flags)
"""

from __future__ import annotations

import errno
import logging as pylogging
import os
import sys
import threading
import traceback
from typing import Any, Callable

import jax
from absl import flags
from absl import logging

from research import checkpoint as ckpt_lib
from research.config import ConfigError, UserError, load_config_file


class Interrupted(Exception):
  """Ctrl-C stopped a run after saving a checkpoint (exit status 130, no traceback)."""


_ERROR_REPORTED = threading.Event()  # the CLI printed its one 'error:' line


def _quiet_closed_loop_errors() -> None:
  """When orbax abandons a failed read or write, tensorstore's callbacks print 'RuntimeError:
  Event loop is closed' tracebacks (through sys.excepthook and sys.unraisablehook), and the
  array reads still pending are dropped with 'Exception ignored in: <coroutine ...>'
  tracebacks; the error itself is reported as one line, so these are noise. Every other
  exception is printed as before, until the CLI has reported its error and is exiting."""
  previous, previous_unraisable = sys.excepthook, sys.unraisablehook
  closed = lambda value: isinstance(value, RuntimeError) and str(value) == "Event loop is closed"

  def hook(kind, value, tb):
    if not closed(value):
      previous(kind, value, tb)

  def unraisable(info):  # tensorstore and abandoned coroutines report here
    if closed(info.exc_value) or _ERROR_REPORTED.is_set():
      return
    code = getattr(info.object, "cr_code", None)  # a coroutine dropped with its error
    if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
      return  # orbax's reads or writes of a restore or save that failed, reported as such
    previous_unraisable(info)

  sys.excepthook = hook
  sys.unraisablehook = unraisable


def run_cli(main_fn: Callable[[], Any]) -> None:
  """Runs a CLI body; bad input becomes one 'error: ...' line and exit status 2."""
  if not os.environ.get("RESEARCH_TRACEBACK"):
    _quiet_closed_loop_errors()
  try:
    main_fn()
  except (Interrupted, KeyboardInterrupt) as e:
    if os.environ.get("RESEARCH_TRACEBACK"):
      raise
    if isinstance(e, KeyboardInterrupt):
      print("interrupted", file=sys.stderr)
    sys.exit(130)
  except (UserError, FileNotFoundError, UnicodeDecodeError, FloatingPointError) as e:
    if os.environ.get("RESEARCH_TRACEBACK"):
      raise
    _ERROR_REPORTED.set()
    print(f"error: {e}", file=sys.stderr)
    if isinstance(e, ckpt_lib.DiskFullError):
      _exit_now(2)
    sys.exit(2)
  except OSError as e:
    if e.errno != errno.ENOSPC or os.environ.get("RESEARCH_TRACEBACK"):
      raise
    _ERROR_REPORTED.set()
    print(f"error: no space left on device ({e.filename or e}); free space and rerun",
          file=sys.stderr)
    _exit_now(2)


def _exit_now(status: int) -> None:
  """Exits without the interpreter's exit handlers: with the disk full, TensorBoard's and
  orbax's would only fail again, each with its traceback. The checkpointer is closed already."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access


def quiet_logs() -> None:
  """orbax and TFDS log every checkpoint step at INFO; keep the terminal for the progress bar."""
  if not os.environ.get("RESEARCH_VERBOSE"):
    logging.set_verbosity(logging.ERROR)
    for logger in (logging.get_absl_logger(), pylogging.getLogger("asyncio")):
      logger.addFilter(_drop_reported_records)


def _drop_reported_records(record) -> bool:
  """orbax logs a save that ran out of space from each of its threads, and asyncio each read
  of a failed restore ('exception was never retrieved'), tracebacks included; the run reports
  the failure as one 'error:' line (research/checkpoint.py), so those records go."""
  text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
  if "No space left" in text or "RESOURCE_EXHAUSTED" in text:
    return False
  if record.exc_info and "exception was never retrieved" in record.getMessage():
    frames = traceback.extract_tb(record.exc_info[2])
    return not any(f"{os.sep}orbax{os.sep}" in frame.filename for frame in frames)
  return True


def check_utf8(text: str, what: str = "--prompt") -> str:
  """`text` when it is UTF-8; else UserError naming the first bad byte (a command line's
  undecodable bytes arrive as surrogates, which no tokenizer or terminal can take)."""
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as e:
    byte = ord(text[e.start]) - 0xDC00 if 0xDC80 <= ord(text[e.start]) <= 0xDCFF else None
    shown = f"byte 0x{byte:02x}" if byte is not None else f"{text[e.start]!r}"
    raise UserError(f"{what} holds {shown} at character {e.start}, which is not UTF-8 text; "
                    "pass UTF-8 (e.g. convert with iconv -t UTF-8)") from None
  return text


def reject_positional_args(argv: list[str]) -> None:
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}; flags take the form --name=value",
          file=sys.stderr)
    sys.exit(2)


def initialize_distributed(coordinator_address: str, num_processes: int, process_id: int,
                           auto: bool = False) -> None:
  """Joins this process to a multi-process JAX runtime (one process per host).

  With --coordinator_address the processes are named explicitly (CPU tests, bare clusters);
  with --distributed JAX finds them itself (TPU pod slices, SLURM). CPUs talk through gloo.
  """
  if not coordinator_address and not auto:
    return
  # Must precede any backend use; affects only the CPU backend.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag or config override reported as one line (exit 2)."""
  check_config_flag(argv)
  try:
    rest = flags.FLAGS(argv)
    if "config" in flags.FLAGS and flags.FLAGS.config is not None:
      flags.FLAGS.config.to_dict()  # the config file loads lazily: surface its errors here
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    print(f"error: bad command-line flag: {_flag_error_text(e)} (flags: --config=FILE "
          "--workdir=DIR --config.SECTION.KEY=VALUE, where KEY is a field of research/config.py)",
          file=sys.stderr)
    sys.exit(2)
  for name in PATH_FLAGS:  # an empty path would be the current folder: never meant
    flag = flags.FLAGS[name] if name in flags.FLAGS else None
    if flag is not None and flag.default is None and flag.present and not str(
        flag.value or "").strip():
      print(f"error: --{name} is empty; pass a path", file=sys.stderr)
      sys.exit(2)
  return rest


# Flags naming a folder that a CLI reads or writes; where their default is None (no default),
# an empty value is refused (where it is "", the CLI gives "" its own meaning).
PATH_FLAGS = ("workdir", "out")


def _flag_error_text(error: BaseException) -> str:
  """absl's or ml_collections' message about a bad flag, on one line: a KeyError's quotes
  taken off (those inside kept as they are), a traceback embedded in it (a config file whose
  get_config fails on its argument) cut to its last line."""
  while len(error.args) == 1 and isinstance(error.args[0], BaseException):
    error = error.args[0]  # ml_collections wraps a KeyError in an AttributeError
  if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
    # str(KeyError) is the repr of its argument, escapes and all
    text = f"unknown config field {error.args[0]}"
  else:  # absl quotes some values with repr: their newlines and quotes come escaped
    text = str(error).replace("\\n", "\n").replace("\\'", "'")
  if "Traceback (most recent call last)" in text:
    head = text.split("Traceback (most recent call last)", 1)[0].rstrip(" :\n")
    last = [line.strip() for line in text.strip().splitlines() if line.strip()][-1]
    text = f"{head}: {last}"
  return " ".join(text.split())


def check_config_flag(argv: list[str]) -> None:
  """A --config file that does not load (syntax error, failing import, no get_config, a
  get_config that returns no ConfigDict) is one 'error:' line, exit 2, before absl reads it."""
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
    else:
      continue
    if not os.path.isfile(path) and ":" in path:
      path = path.split(":", 1)[0]  # --config=file.py:argument
    if not os.path.isfile(path):
      return  # absl names the missing file
    try:
      load_config_file(path)
    except ConfigError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
