"""Locations inside the repository, resolved from this file so any working directory works."""

import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA_ROOT = REPO_ROOT / "data"
TFDS_DATA_DIR = DATA_ROOT / "tfds"  # prepared ArrayRecord files (git-ignored, rebuilt on demand)
