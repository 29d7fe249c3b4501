"""Bad input of every kind: one clear 'error:' line, a non-zero exit, existing checkpoints untouched.

Every case runs the real CLI against a workdir that already holds a checkpoint; the texts made
from library errors (flags, orbax, tensorstore) are also checked in-process, at the end.
"""

import json
import pathlib
import re
import sys

import numpy as np
import pytest

from research.paths import REPO_ROOT
from xla_flags import cli_env
from tests import cli
from tests.test_train import CONFIG, SHRINK

BASE_FLAGS = [f"--config={CONFIG}"] + [f"--config.{k}={v}" for k, v in SHRINK.items()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp("bad_input") / "run"
  result = _cli("research.train", [f"--workdir={path}", *BASE_FLAGS, "--config.train.steps=2"])
  assert result.returncode == 0, result.stderr[-3000:]
  return path


def _cli(module, args, devices=1):
  return cli.run(module, args, env=cli_env(devices), timeout=300)


def _files(path: pathlib.Path) -> dict:
  return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _corpus(tmp: pathlib.Path, files: dict[str, bytes]) -> str:
  tmp.mkdir(parents=True, exist_ok=True)
  for name, content in files.items():
    (tmp / name).write_bytes(content)
  return str(tmp / "*")


def _file(path: pathlib.Path) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("not a folder")
  return path


def _config(tmp: pathlib.Path, source: str) -> pathlib.Path:
  tmp.mkdir(parents=True, exist_ok=True)
  path = tmp / "bad_config.py"
  path.write_text(source + "\n")
  return path


def _corrupt_latest(workdir: pathlib.Path) -> None:
  step_dir = max((p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()),
                 key=lambda p: int(p.name))
  for f in (step_dir / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 16:
      f.write_bytes(b"\0garbage\0" * 4)


def _truncate_latest_data(workdir: pathlib.Path) -> None:
  """Cuts the latest step's tensor data short (a crash or a full disk in the middle of a copy):
  tensorstore's error, whose own text embeds a many-line repr of a native method."""
  step_dir = max((p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()),
                 key=lambda p: int(p.name))
  for f in (step_dir / "state").glob("ocdbt.process_*/d/*"):
    f.write_bytes(f.read_bytes()[:30])


def _newer_format(workdir: pathlib.Path) -> None:
  for f in (workdir / "checkpoints").glob("*/config/*"):
    if f.is_file() and f.suffix == "" or f.name.endswith(".json"):
      try:
        saved = json.loads(f.read_text())
      except (UnicodeDecodeError, json.JSONDecodeError):
        continue
      saved["format_version"] = 99
      f.write_text(json.dumps(saved))


# (name, extra flags (a callable gets tmp_path), devices, setup of a copy of the workdir, message)
CASES = [
    # configs
    ("unknown_key", ["--config.model.num_layerz=3"], 1, None,
     """unknown config field 'num_layerz' Did you mean "num_layers" instead of "num_layerz"?"""),
    ("unknown_section", ["--config.nosection.x=1"], 1, None, "unknown config field 'nosection' ("),
    ("wrong_type", ["--config.model.num_layers=abc"], 1, None,
     "--config.model.num_layers=abc: invalid literal for int() with base 10: 'abc' (flags:"),
    ("stray_quote", ["--config.model.family='gpt"], 1, None,
     """model.family="'gpt" is not one of ['decoder', 'encoder', 'encoder_decoder']"""),
    ("float_for_int", ["--config.train.steps=2.5"], 1, None, "train.steps=2.5"),
    ("bad_choice", ["--config.model.norm=batchnorm"], 1, None, "model.norm='batchnorm'"),
    ("impossible_mesh", ["--config.mesh.data=3"], 1, None, "needs 3 devices but 1"),
    ("batch_not_divisible", ["--config.data.batch_size=7"], 2, None,
     "data.batch_size=7 is not divisible by the data x fsdp"),
    # (data.seq_len above model.max_len, and a SentencePiece vocabulary larger than the corpus
    # fills, are derived with a note instead: tests/test_defaults.py)
    ("heads_do_not_divide", ["--config.model.num_heads=3"], 1, None, "not divisible by"),
    ("objective_does_not_fit", ["--config.objective.name=masked_lm"], 1, None, "does not fit"),
    ("negative_steps", ["--config.train.steps=-1"], 1, None, "train.steps must be positive"),
    ("zero_log_interval", ["--config.train.log_every=0"], 1, None, "train.log_every=0 must be >= 1"),
    # data (on a new workdir: the trained one refuses other data before reading it, below)
    ("missing_data", ["--config.data.dataset=text_files",
                      "--config.data.files=/nonexistent/corpus/*.txt"], 1, "fresh",
     "/nonexistent/corpus"),
    ("empty_corpus", lambda tmp: ["--config.data.dataset=text_files",
                                  "--config.data.files=" + _corpus(tmp / "c", {
                                      "a.txt": b"", "b.txt": b""})], 1, "fresh", "is empty"),
    ("not_utf8", lambda tmp: ["--config.data.dataset=text_files",
                              "--config.data.files=" + _corpus(tmp / "latin1", {
                                  "a.txt": "caf\xe9 ol\xe9".encode("latin-1"),
                                  "b.txt": b"fine text"})], 1, "fresh", "UTF-8"),
    ("malformed_jsonl_row", lambda tmp: ["--config.data.dataset=text_files",
                                         "--config.data.files=" + _corpus(tmp / "jsonl", {
                                             "a.jsonl": b'{"text": "ok"}\n{"text": broken\n'})],
     1, "fresh", "a.jsonl:2: malformed JSON"),
    ("other_data_than_the_workdir_holds", lambda tmp: [
        "--config.data.dataset=text_files",
        "--config.data.files=" + _corpus(tmp / "c", {"a.txt": b"one text", "b.txt": b"two"})],
     1, None, "was trained on other data (data.dataset: 'tiny_shakespeare' -> 'text_files'"),
    ("unknown_catalog_dataset", ["--config.data.dataset=no_such_dataset_xyz"], 1, None,
     "no_such_dataset_xyz"),
    # tokenizers
    ("missing_tokenizer_file", ["--config.data.tokenizer=hf",
                                "--config.data.tokenizer_path=/nonexistent/tokenizer.json"], 1,
     "fresh", "/nonexistent/tokenizer.json"),
    ("vocab_smaller_than_tokenizer", ["--config.model.vocab_size=10"], 1, None,
     "smaller than the tokenizer's vocabulary"),
    ("tokenizer_kind_differs_from_workdir", ["--config.data.tokenizer=sentencepiece"], 1, None,
     "tokenizer"),
    # checkpoints
    ("corrupt_checkpoint", [], 1, _corrupt_latest, "cannot be read"),
    ("truncated_checkpoint_data", [], 1, _truncate_latest_data,
     "cannot be read as this run's train state (OUT_OF_RANGE: Error reading"),
    ("another_architecture", ["--config.model.embed_dim=48"], 1, None,
     "holds a run of a different model"),
    ("newer_format", [], 1, _newer_format, "newer"),
    ("unknown_eval_split", ["--config.data.eval_split=test"], 1, None,
     "has no split 'test'; its splits are ['train', 'validation']"),
    ("catalog_dataset_not_prepared", lambda tmp: ["--config.data.dataset=lm1b",
                                                  f"--config.data.data_dir={tmp / 'tfds'}"],
     1, "fresh", "is not prepared under"),
    # workdirs
    ("workdir_is_a_file", lambda tmp: [f"--workdir={_file(tmp / 'afile')}"], 1, None,
     "is a file, not a folder"),
    ("empty_workdir", ["--workdir="], 1, None, "--workdir is empty; pass a path"),
    # config files
    ("config_syntax_error", lambda tmp: [f"--config={_config(tmp, 'def get_config(:')}"], 1,
     None, "has a syntax error"),
    ("config_failing_import", lambda tmp: [f"--config={_config(tmp, 'import no_such_mod_xyz')}"],
     1, None, "failed to load (ModuleNotFoundError"),
    ("config_returns_none", lambda tmp: [f"--config={_config(tmp, 'def get_config(): pass')}"],
     1, None, "get_config() returned NoneType, not a ConfigDict"),
    ("config_returns_dict", lambda tmp: [
        f"--config={_config(tmp, 'def get_config(): return {}')}"], 1, None,
     "get_config() returned dict, not a ConfigDict"),
    ("config_argument_refused", [f"--config={CONFIG}:arg"], 1, None,
     "Error whilst parsing config file: TypeError: get_config() takes 0 positional arguments"),
    # command line
    ("positional_argument", ["stray"], 1, None, "unexpected arguments"),
    ("unknown_flag", ["--bogus=1"], 1, None, "Unknown command line flag 'bogus' (flags:"),  # quotes kept
    ("missing_config_file", ["--config=configs/no_such_config.py"], 1, None,
     "configs/no_such_config.py"),
]


@pytest.mark.parametrize("name, flags, devices, setup, message", CASES,
                         ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_line(workdir, tmp_path, name, flags, devices, setup, message):
  del name
  target = workdir
  if setup == "fresh":
    target = tmp_path / "fresh"
  elif setup is not None:  # damage a copy, never the shared workdir
    import shutil  # pylint: disable=import-outside-toplevel
    target = tmp_path / "copy"
    shutil.copytree(workdir, target)
    setup(target)
  before = _files(target) if target.exists() else {}
  args = flags(tmp_path) if callable(flags) else flags
  result = _cli("research.train", [f"--workdir={target}", *BASE_FLAGS, "--config.train.steps=4",
                                   *args], devices=devices)
  assert result.returncode != 0
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1, result.stderr[-3000:]
  assert message in errors[0], errors[0]
  assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, (
      result.stderr[-3000:])
  assert "<bound method" not in errors[0]
  after = _files(target) if target.exists() else {}
  assert {p: b for p, b in after.items() if "checkpoints" in p.parts} == {
      p: b for p, b in before.items() if "checkpoints" in p.parts}
  if (target / "config.json") in before:
    assert after[target / "config.json"] == before[target / "config.json"]


@pytest.mark.parametrize("args, message", [
    (["--workdir=/nonexistent/workdir"], "not a training workdir"),
    (["--top_p=2"], "--top_p"),
    (["--max_new_tokens=-5"], "--max_new_tokens"),
    (["--num_samples=0"], "--num_samples=0 must be >= 1"),
    (["--num_samples=-1"], "--num_samples=-1 must be >= 1"),
    (["--temperature=nan"], "--temperature=nan must be a number >= 0"),
    (["--top_k=-1"], "--top_k=-1 must be >= 0"),
    (["--top_p=nan"], "--top_p=nan must be in (0, 1]"),
])
def test_bad_generate_input_gives_one_clear_line(workdir, args, message):
  args = [a if a.startswith("--workdir") else a for a in args]
  if not any(a.startswith("--workdir") for a in args):
    args = [f"--workdir={workdir}", *args]
  result = _cli("research.generate", args)
  assert result.returncode != 0
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]


def test_generate_notes_unknown_characters_and_clamps_top_k(workdir):
  result = _cli("research.generate", [f"--workdir={workdir}", "--prompt=ROMEO: \u4e2d\u6587",
                                      "--max_new_tokens=3", "--top_k=100000"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "2 of the prompt's 9 tokens are not in the tokenizer's vocabulary" in result.stderr
  assert "--top_k=100000 is above the vocabulary" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--split=dev"], "has no split 'dev'; its splits are ['train', 'validation']"),
    (lambda tmp: [f"--output={tmp}"], "is a folder; name a file"),
    # checked before the evaluation, not when writing its result
    (lambda tmp: [f"--predictions={tmp}"], "--predictions=<tmp> is a folder; name a file"),
    (lambda tmp: [f"--workdir={_file(tmp / 'afile')}"], "is a file: not a training workdir"),
])
def test_bad_evaluate_input_gives_one_clear_line(workdir, tmp_path, args, message):
  args = args(tmp_path) if callable(args) else args
  message = message.replace("<tmp>", str(tmp_path))
  before = _files(workdir)
  result = _cli("research.evaluate", [f"--workdir={workdir}", *args])  # a later one wins
  assert result.returncode != 0
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert {p: b for p, b in _files(workdir).items() if "checkpoints" in p.parts} == {
      p: b for p, b in before.items() if "checkpoints" in p.parts}


def test_bert_config_on_a_gpt_workdir_says_it_holds_another_model(workdir):
  before = _files(workdir)
  flags = [f.replace(CONFIG, "configs/bert_shakespeare_mlm.py") for f in BASE_FLAGS]
  result = _cli("research.train", [f"--workdir={workdir}", *flags, "--config.train.steps=4"])
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert result.returncode != 0 and len(errors) == 1, result.stderr[-3000:]
  assert "holds a run of a different model (model.family: 'decoder' -> 'encoder'" in errors[0]
  unlocked = lambda files: {p: b for p, b in files.items() if p.name != ".lock"}
  assert unlocked(_files(workdir)) == unlocked(before)


def test_chat_refuses_a_task_classifier_and_notes_a_model_not_instruction_tuned(workdir,
                                                                                 tmp_path):
  result = _cli("research.chat", [f"--workdir={workdir}", "--prompt=hi", "--max_new_tokens=3"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "was not instruction-tuned" in result.stderr
  # The same workdir described as an SST-2 decoder classifier (checked before the checkpoint).
  import shutil  # pylint: disable=import-outside-toplevel
  classifier = tmp_path / "sst2"
  shutil.copytree(workdir, classifier)
  config = json.loads((classifier / "config.json").read_text())
  config["task"]["name"] = "sst2"
  (classifier / "config.json").write_text(json.dumps(config))
  result = _cli("research.chat", [f"--workdir={classifier}", "--prompt=hi"])
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert result.returncode != 0 and len(errors) == 1, result.stderr[-3000:]
  assert "scores text rather than writes it" in errors[0]
  # Sampling flags are checked before the checkpoint is read.
  result = _cli("research.chat", [f"--workdir={workdir}", "--prompt=hi", "--temperature=nan"])
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert result.returncode != 0 and len(errors) == 1, result.stderr[-3000:]
  assert "--temperature=nan must be a number >= 0" in errors[0]


# --- the texts of errors from libraries, on one line (in-process: no CLI needed) -------------


def test_flag_errors_keep_their_quotes_and_drop_embedded_tracebacks():
  from absl import flags  # pylint: disable=import-outside-toplevel
  from research.cli import _flag_error_text  # pylint: disable=import-outside-toplevel
  # ml_collections: a KeyError (repr'ed by str()) inside an AttributeError.
  wrapped = AttributeError(KeyError("'num_layerz'\nDid you mean \"num_layers\" instead of "
                                    "\"num_layerz\"?"))
  assert _flag_error_text(wrapped) == (
      "unknown config field 'num_layerz' Did you mean \"num_layers\" instead of \"num_layerz\"?")
  assert _flag_error_text(KeyError("'nosection'")) == "unknown config field 'nosection'"
  assert _flag_error_text(flags.Error("Unknown command line flag 'bogus'")) == (
      "Unknown command line flag 'bogus'")
  embedded = flags.IllegalFlagValueError(
      "flag --config=c.py:x: Error whilst parsing config file: Traceback (most recent call "
      "last):\n  File \"c.py\", line 1, in get_config\nTypeError: get_config() takes 0 "
      "positional arguments but 1 was given\n")
  assert _flag_error_text(embedded) == (
      "flag --config=c.py:x: Error whilst parsing config file: TypeError: get_config() takes 0 "
      "positional arguments but 1 was given")


def test_checkpoint_errors_name_the_cause_not_a_native_repr(tmp_path):
  from research import checkpoint  # pylint: disable=import-outside-toplevel
  cause = ValueError('OUT_OF_RANGE: Error reading "params.w/0.0" in OCDBT database at local '
                     'file "/w/checkpoints/4/state/": Requested byte range [0, 8) is not valid')
  wrapper = Exception("Encountered error while reading array index: (). See full TensorStore "
                      "details: <bound method pybind11_detail_function_record_v1_system_"
                      "libstdcpp_gxx_abi_1xxx_use_cxx11_abi_1.spec of TensorStore({\n  'base': "
                      "{\n  },\n})>.")
  wrapper.__cause__ = cause
  assert checkpoint._first_line(wrapper) == str(cause)[:200]
  wrapper.__cause__ = None
  assert checkpoint._first_line(wrapper) == "Encountered error while reading array index: ()."
  assert checkpoint._first_line(KeyError('Item "state" was not found. Available: [\'data\']')) == (
      'Item "state" was not found. Available: [\'data\']')
  shape = ValueError("Requested shape: (32, 64) is not compatible with the stored shape: (48, "
                     "64). Truncating/padding is disabled. To enable it, set `strict=False`")
  assert checkpoint._first_line(shape) == (
      "Requested shape: (32, 64) is not compatible with the stored shape: (48, 64).")
  # A step whose config item is JSON but not an object (a list): one CheckpointError.
  ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
  ckpt.save(1, {"w": np.zeros(2)}, config={"model": {}}, force=True)
  ckpt.close()
  (metadata,) = (tmp_path / "checkpoints" / "1" / "config").glob("metadata")
  metadata.write_text("[1, 2]")
  with pytest.raises(checkpoint.CheckpointError, match=(
      r"has no readable config \(it holds a JSON list, not an object\).*delete that step folder "
      "to use the one before")):
    checkpoint.Checkpointer(tmp_path, read_only=True).restore_config(1)


def test_noise_of_a_failed_restore_or_save_is_dropped():
  """What orbax's abandoned reads print after a failed restore (asyncio's 'exception was never
  retrieved', coroutines dropped with their error) is filtered; other records are kept."""
  import logging  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  from research.cli import _drop_reported_records  # pylint: disable=import-outside-toplevel
  namespace = {}
  exec(compile("def read():\n  raise ValueError('Requested shape: (32,) is not compatible')",
               os.path.join(os.sep, "site-packages", "orbax", "serialization.py"), "exec"),
       namespace)
  try:
    namespace["read"]()
  except ValueError:
    orbax_error = sys.exc_info()
  try:
    raise ValueError("a bug of ours")
  except ValueError:
    own_error = sys.exc_info()
  record = lambda message, exc_info: logging.LogRecord("asyncio", logging.ERROR, __file__, 1,
                                                       message, None, exc_info)
  never = "_GatheringFuture exception was never retrieved"
  assert not _drop_reported_records(record(never, orbax_error))
  assert _drop_reported_records(record(never, own_error))
  assert not _drop_reported_records(record("Error writing: No space left on device", None))
  assert _drop_reported_records(record("something else", None))


def test_unraisable_noise_of_tensorstore_and_orbax_is_dropped():
  import os  # pylint: disable=import-outside-toplevel
  import types  # pylint: disable=import-outside-toplevel
  from research import cli  # pylint: disable=import-outside-toplevel
  seen = []
  saved = sys.excepthook, sys.unraisablehook
  sys.unraisablehook = seen.append
  try:
    cli._quiet_closed_loop_errors()
    namespace = {}
    exec(compile("async def read():\n  pass",
                 os.path.join(os.sep, "site-packages", "orbax", "serialization.py"), "exec"),
         namespace)
    coroutine = namespace["read"]()
    args = lambda value, obj=None: types.SimpleNamespace(
        exc_type=type(value), exc_value=value, exc_traceback=None, err_msg=None, object=obj)
    sys.unraisablehook(args(RuntimeError("Event loop is closed")))  # tensorstore's callbacks
    sys.unraisablehook(args(ValueError("read failed"), coroutine))  # orbax's abandoned reads
    assert seen == []
    other = args(ValueError("a bug of ours"))
    sys.unraisablehook(other)
    assert seen == [other]
    coroutine.close()
  finally:
    sys.excepthook, sys.unraisablehook = saved


@pytest.mark.parametrize("source, message", [
    ("def get_config(:", "has a syntax error"),
    ("import no_such_mod_xyz", "failed to load (ModuleNotFoundError"),
    ("def get_config(): pass", "get_config() returned NoneType, not a ConfigDict"),
    ("def get_config(): return {}", "get_config() returned dict, not a ConfigDict"),
])
def test_config_diff_of_a_bad_config_file_is_one_error(tmp_path, source, message):
  from research import config_diff  # pylint: disable=import-outside-toplevel
  from research.config import UserError  # pylint: disable=import-outside-toplevel
  bad = _config(tmp_path, source)
  for files in ((bad, CONFIG), (CONFIG, bad)):  # either side
    with pytest.raises(UserError, match=re.escape(message)):
      config_diff.diff_files(*(str(REPO_ROOT / f) for f in files))
  if "syntax" in message:  # and the CLI: one line, no traceback
    result = _cli("research.config_diff", [str(bad), CONFIG])
    errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_truncated_tokenizer_files_are_one_error(tmp_path):
  from research.config import UserError  # pylint: disable=import-outside-toplevel
  from research.data import tokenizers  # pylint: disable=import-outside-toplevel
  text = " ".join(f"word{i} other{i * 7}" for i in range(300))
  sp = tokenizers.SentencePieceTokenizer.train([text] * 5, 300)
  sp.save(tmp_path / "sp")
  (model,) = [p for p in (tmp_path / "sp").iterdir() if p.name != tokenizers.MANIFEST]
  model.write_bytes(model.read_bytes()[:100])
  with pytest.raises(UserError, match="is truncated or corrupt .*delete .* and rerun"):
    tokenizers.load_tokenizer(tmp_path / "sp")
  cut = tmp_path / "tokenizer.json"
  cut.write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0')
  with pytest.raises(UserError, match="is truncated or not a Hugging Face tokenizer.json"):
    tokenizers.HFTokenizer.from_file(cut)
