"""The entries in which two experiment configs differ, defaults resolved.

  python -m research.config_diff A.py B.py

prints one line per differing entry, `section.key: A_value -> B_value`, in the order the fields
are declared in research/config.py (nothing when the configs train the same thing). Both files
go through `ExperimentConfig.from_config_dict`, so an entry one file sets to its default value
and the other leaves out is no difference, and a bad config fails as it would in training.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from research import cli
from research.config import ExperimentConfig, UserError, load_config_file


def flatten(config: ExperimentConfig) -> dict[str, Any]:
  """{'section.key': value} of every entry; `rules` and `init_from` are entries of their own."""
  out: dict[str, Any] = {}
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if dataclasses.is_dataclass(value):
      for inner in dataclasses.fields(value):
        out[f"{field.name}.{inner.name}"] = getattr(value, inner.name)
    else:
      out[field.name] = value
  return out


def diff(a: ExperimentConfig, b: ExperimentConfig) -> list[tuple[str, Any, Any]]:
  """(key, value in a, value in b) for every entry that differs, in declaration order."""
  flat_a, flat_b = flatten(a), flatten(b)
  return [(key, flat_a[key], flat_b[key]) for key in flat_a if flat_a[key] != flat_b[key]]


def format_diff(entries: list[tuple[str, Any, Any]]) -> list[str]:
  # repr keeps strings unambiguous: '' and 'x' rather than an empty field and x.
  return [f"{key}: {a!r} -> {b!r}" for key, a, b in entries]


def diff_files(path_a: str, path_b: str) -> list[tuple[str, Any, Any]]:
  """The differences between two config files (each a get_config() module)."""
  configs = [ExperimentConfig.from_config_dict(load_config_file(p)) for p in (path_a, path_b)]
  return diff(*configs)


def main(argv: list[str]) -> None:
  def body():
    if len(argv) != 3:
      raise UserError(f"expected two config files, got {len(argv) - 1}; usage: "
                      "python -m research.config_diff A.py B.py")
    for line in format_diff(diff_files(argv[1], argv[2])):
      print(line)

  cli.run_cli(body)


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=cli.parse_flags)
