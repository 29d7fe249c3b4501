"""Bad input of every kind: one clear 'error:' line, a non-zero exit, existing checkpoints untouched.

Every case runs the real CLI against a workdir that already holds a checkpoint.
"""

import json
import pathlib
import subprocess
import sys

import pytest

from research.paths import REPO_ROOT
from xla_flags import cli_env
from tests.test_train import CONFIG, SHRINK

BASE_FLAGS = [f"--config={CONFIG}"] + [f"--config.{k}={v}" for k, v in SHRINK.items()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp("bad_input") / "run"
  result = _cli("research.train", [f"--workdir={path}", *BASE_FLAGS, "--config.train.steps=2"])
  assert result.returncode == 0, result.stderr[-3000:]
  return path


def _cli(module, args, devices=1):
  env = cli_env(devices)
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


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
    ("unknown_key", ["--config.model.num_layerz=3"], 1, None, "num_layerz"),
    ("wrong_type", ["--config.model.num_layers=abc"], 1, None, "num_layers=abc"),
    ("float_for_int", ["--config.train.steps=2.5"], 1, None, "train.steps=2.5"),
    ("bad_choice", ["--config.model.norm=batchnorm"], 1, None, "model.norm='batchnorm'"),
    ("impossible_mesh", ["--config.mesh.data=3"], 1, None, "needs 3 devices but 1"),
    ("batch_not_divisible", ["--config.data.batch_size=7"], 2, None,
     "data.batch_size=7 is not divisible by the data x fsdp"),
    ("context_longer_than_table", ["--config.model.position=learned",
                                   "--config.data.seq_len=64"], 1, None,
     "longer than the position table"),
    ("heads_do_not_divide", ["--config.model.num_heads=3"], 1, None, "not divisible by"),
    ("objective_does_not_fit", ["--config.objective.name=masked_lm"], 1, None, "does not fit"),
    ("negative_steps", ["--config.train.steps=-1"], 1, None, "train.steps must be positive"),
    ("zero_log_interval", ["--config.train.log_every=0"], 1, None, "train.log_every=0 must be >= 1"),
    # data
    ("missing_data", ["--config.data.dataset=text_files",
                      "--config.data.files=/nonexistent/corpus/*.txt"], 1, None,
     "/nonexistent/corpus"),
    ("empty_corpus", lambda tmp: ["--config.data.dataset=text_files",
                                  "--config.data.files=" + _corpus(tmp / "empty", {
                                      "a.txt": b"", "b.txt": b""})], 1, None, "empty"),
    ("not_utf8", lambda tmp: ["--config.data.dataset=text_files",
                              "--config.data.files=" + _corpus(tmp / "latin1", {
                                  "a.txt": "caf\xe9 ol\xe9".encode("latin-1"),
                                  "b.txt": b"fine text"})], 1, None, "UTF-8"),
    ("malformed_jsonl_row", lambda tmp: ["--config.data.dataset=text_files",
                                         "--config.data.files=" + _corpus(tmp / "jsonl", {
                                             "a.jsonl": b'{"text": "ok"}\n{"text": broken\n'})],
     1, None, "a.jsonl:2: malformed JSON"),
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
    ("another_architecture", ["--config.model.embed_dim=48"], 1, None,
     "holds a run of a different model"),
    ("newer_format", [], 1, _newer_format, "newer"),
    ("rope_context_longer_than_max_len", ["--config.data.seq_len=64"], 1, None,
     "longest context the model decodes with"),
    ("unknown_eval_split", ["--config.data.eval_split=test"], 1, None,
     "has no split 'test'; its splits are ['train', 'validation']"),
    ("catalog_dataset_not_prepared", lambda tmp: ["--config.data.dataset=lm1b",
                                                  f"--config.data.data_dir={tmp / 'tfds'}"],
     1, "fresh", "is not prepared under"),
    ("sentencepiece_vocab_too_large", lambda tmp: [
        "--config.data.dataset=text_files", "--config.data.tokenizer=sentencepiece",
        "--config.data.vocab_size=5000", f"--config.data.data_dir={tmp / 'tfds'}",
        "--config.data.files=" + _corpus(tmp / "small", {"a.txt": b"a small text " * 50,
                                                         "b.txt": b"another one " * 50})],
     1, "fresh", "lower data.vocab_size"),
    # workdirs
    ("workdir_is_a_file", lambda tmp: [f"--workdir={_file(tmp / 'afile')}"], 1, None,
     "is a file, not a folder"),
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
  assert "Traceback" not in result.stderr
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
])
def test_bad_evaluate_input_gives_one_clear_line(workdir, tmp_path, args, message):
  args = args(tmp_path) if callable(args) else args
  before = _files(workdir)
  result = _cli("research.evaluate", [f"--workdir={workdir}", *args])
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
