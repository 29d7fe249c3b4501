"""README.md: every command it shows names a program, flags and files that exist.

Nothing is trained or run: each `python -m research.X ...` / `python -m experiments.X ...` found in
the README's shell code blocks and inline code is split into its flags; the module must exist, each
`--flag` must be one the program defines (its flags are read from a fresh process that imports the
module and calls its `define_flags()`, as its `__main__` block does), each `--config.a.b=v` must
name a field of the config the command loads (or of `research.config.base_config()`), and every
repository path the README names (flag values, scripts, links) must exist.
"""

from __future__ import annotations

import glob
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"

# A program run as python -m MODULE; the module's dotted name.
_PYTHON_M = re.compile(r"(?:\S*/)?python3?\s+-m\s+((?:research|experiments)(?:\.\w+)+)")
# A command ends at a shell separator or comment.
_COMMAND_END = re.compile(r"\s(?:;|&&|\|\||\||&|#)(?:\s|$)|;\s*$|;\s")
_REPO_PATH = re.compile(r"^(?:configs|experiments|data|scripts|benchmarks|docs|tests|research)/")
# Flags absl defines for every program (app.run's help and flag-file flags).
_ABSL_BUILTIN = {"help", "helpfull", "helpshort", "helpxml", "flagfile", "undefok"}


def _code_blocks(text: str) -> list[tuple[str, str]]:
  """(language, body) of each fenced code block."""
  return re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)


def _shell_lines(body: str) -> list[str]:
  """The block's shell commands: continuation lines joined, here-document bodies dropped."""
  lines, heredoc_end, pending = [], None, ""
  for line in body.splitlines():
    if heredoc_end is not None:
      if line.strip() == heredoc_end:
        heredoc_end = None
      continue
    here = re.search(r"<<-?\s*'?\"?(\w+)'?\"?", line)
    if here:
      heredoc_end = here.group(1)
    if line.rstrip().endswith("\\"):
      pending += line.rstrip()[:-1] + " "
      continue
    lines.append(pending + line)
    pending = ""
  if pending:
    lines.append(pending)
  return lines


def _without_substitutions(line: str) -> str:
  """$(...) command substitutions replaced by a placeholder (their inner python is not a CLI)."""
  out, depth, i = [], 0, 0
  while i < len(line):
    if line.startswith("$(", i):
      depth += 1
      if depth == 1:
        out.append("SUBSTITUTED")
      i += 2
      continue
    if depth and line[i] == "(":
      depth += 1
    elif depth and line[i] == ")":
      depth -= 1
      i += 1
      continue
    if not depth:
      out.append(line[i])
    i += 1
  return "".join(out)


def readme_commands(text: str) -> list[tuple[str, list[str], str]]:
  """(module, argument tokens, the command as written) of every python -m command in the README."""
  candidates = []
  for language, body in _code_blocks(text):
    if language in ("", "bash", "sh", "shell", "console"):
      candidates.extend(_shell_lines(body))
  without_blocks = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
  candidates.extend(re.findall(r"`([^`\n]*python3?\s+-m\s+[^`\n]*)`", without_blocks))
  commands = []
  for line in candidates:
    line = _without_substitutions(line)
    for match in _PYTHON_M.finditer(line):
      rest = line[match.end():]
      end = _COMMAND_END.search(rest)
      rest = rest[:end.start()] if end else rest
      tokens = [t.strip("[]") for t in shlex.split(rest, comments=True)]
      commands.append((match.group(1), [t for t in tokens if t], match.group(0) + rest))
  return commands


def _flag_names(tokens: list[str]) -> list[str]:
  return [t[2:].split("=", 1)[0] for t in tokens if t.startswith("--") and len(t) > 2]


def _flag_value(tokens: list[str], name: str) -> str | None:
  for t in tokens:
    if t.startswith(f"--{name}="):
      return t.split("=", 1)[1]
  return None


_INTROSPECT = r"""
import importlib, json, sys
from absl import app, flags, logging  # their own flags (logging's --v, ...) are every program's
FLAGS = flags.FLAGS
for shared in ("research.config", "research.cli"):  # plumbing every CLI imports
  try:
    importlib.import_module(shared)
  except ImportError:
    pass
common = set(FLAGS)
defined = {}
for name in sys.argv[1:]:
  before = set(FLAGS)
  try:
    module = (importlib.reload(sys.modules[name]) if name in sys.modules
              else importlib.import_module(name))
    if hasattr(module, "define_flags"):
      module.define_flags()
  except Exception as e:  # reported per module by the test
    defined[name] = {"error": f"{type(e).__name__}: {e}"}
    continue
  new = set(FLAGS) - before
  defined[name] = {"flags": sorted(new | common)}
  for flag in new:  # the next program starts from the shared flags only
    delattr(FLAGS, flag)
print("FLAGS-JSON" + json.dumps(defined))
"""


@pytest.fixture(scope="module")
def readme_text() -> str:
  return README.read_text()


@pytest.fixture(scope="module")
def commands(readme_text) -> list[tuple[str, list[str], str]]:
  found = readme_commands(readme_text)
  assert found, "no python -m commands found in README.md"
  return found


@pytest.fixture(scope="module")
def program_flags(commands) -> dict:
  modules = sorted({module for module, _, _ in commands})
  result = subprocess.run([sys.executable, "-c", _INTROSPECT, *modules], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
  lines = [l for l in result.stdout.splitlines() if l.startswith("FLAGS-JSON")]
  assert result.returncode == 0 and lines, result.stderr[-3000:]
  return json.loads(lines[-1][len("FLAGS-JSON"):])


def test_the_extraction_finds_commands_and_their_flags():
  """The parser on a made-up README: blocks, continuations, inline code, heredocs, $(...)."""
  text = (
      "Run `python -m research.generate --workdir=W --prompt=\"a b\"` then:\n\n"
      "```bash\n"
      ".venv/bin/python -m research.train --config=configs/x.py \\\n"
      "    --config.model.num_layers=6 --workdir=runs/x   # a comment --not_a_flag\n"
      "python - <<'PY'\nimport os  # python -m research.nothing --in_heredoc\nPY\n"
      "python -m research.convert --from_hf=$(python -c \"import x; print(x)\") --workdir=W; ls\n"
      "python -m research.evaluate --workdir=W [--split=validation]\n"
      "```\n\n```python\nprint('python -m research.ignored --flag')\n```\n")
  found = {(module, tuple(_flag_names(tokens))) for module, tokens, _ in readme_commands(text)}
  assert found == {
      ("research.train", ("config", "config.model.num_layers", "workdir")),
      ("research.convert", ("from_hf", "workdir")),
      ("research.evaluate", ("workdir", "split")),
      ("research.generate", ("workdir", "prompt")),
  }


def test_every_module_exists_and_defines_every_flag_used(commands, program_flags):
  problems = []
  for module, tokens, written in commands:
    info = program_flags.get(module, {})
    if "error" in info or not info:
      problems.append(f"{module}: cannot be imported ({info.get('error', 'missing')}): {written}")
      continue
    known = set(info["flags"]) | _ABSL_BUILTIN
    for name in _flag_names(tokens):
      if name.startswith("config.") and "config" in known:
        continue  # checked against the config's fields below
      if name not in known:
        problems.append(f"{module} has no flag --{name}: {written}")
  assert not problems, "\n".join(problems)


def _config_for(tokens: list[str]):
  from research import config as config_lib
  path = _flag_value(tokens, "config")
  return config_lib.load_config_file(path) if path else config_lib.base_config()


def test_every_config_override_names_a_field(commands):
  problems = []
  for module, tokens, written in commands:
    overrides = [n for n in _flag_names(tokens) if n.startswith("config.")]
    if not overrides:
      continue
    config = _config_for(tokens)
    for name in overrides:
      node = config
      for key in name.split(".")[1:]:
        if not hasattr(node, "keys") or key not in node.keys():
          problems.append(f"--{name} is not a field of the config of: {written}")
          break
        node = node[key]
  assert not problems, "\n".join(problems)


def _repo_paths(tokens: list[str]) -> list[str]:
  values = [t.split("=", 1)[1] if t.startswith("--") and "=" in t else t for t in tokens]
  return [v for v in values if _REPO_PATH.match(v)]


def test_every_path_the_readme_names_exists(readme_text, commands):
  missing = []
  for _, tokens, written in commands:
    for path in _repo_paths(tokens):
      if not glob.glob(str(REPO_ROOT / path)):
        missing.append(f"{path} (in: {written})")
  for language, body in _code_blocks(readme_text):
    if language in ("", "bash", "sh", "shell", "console"):
      for line in _shell_lines(body):
        for script in re.findall(r"(?:bash|python3?)\s+((?:scripts|benchmarks|experiments)/\S+)", line):
          if not (REPO_ROOT / script).exists():
            missing.append(f"{script} (in: {line.strip()})")
  for link in re.findall(r"\]\(([^)\s]+)\)", readme_text):
    if re.match(r"^[a-z]+:", link):
      continue
    path, _, anchor = link.partition("#")
    target = REPO_ROOT / path if path else README
    if path and not glob.glob(str(target)):
      missing.append(f"link {link}")
    elif anchor and target.suffix == ".md" and anchor not in _anchors(target.read_text()):
      missing.append(f"link {link} (no such heading)")
  assert not missing, "missing: " + "; ".join(missing)


def _anchors(markdown: str) -> set[str]:
  """The anchors GitHub gives a file's headings: lower case, punctuation dropped, spaces -."""
  headings = re.findall(r"^#+\s+(.*?)\s*$", re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S),
                        re.M)
  return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_readme_is_a_page_a_user_reads():
  text = README.read_text()
  assert len(text.splitlines()) <= 450
  for needed in ("bash scripts/quickstart.sh", "bash scripts/test.sh",
                 "Gemma is provided under and subject to the Gemma Terms of Use "
                 "(ai.google.dev/gemma/terms)", "<!-- results:begin -->", "<!-- results:end -->",
                 "<!-- pretrained:begin -->", "<!-- pretrained:end -->"):
    assert needed in " ".join(text.split()), needed
