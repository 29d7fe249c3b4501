#!/usr/bin/env bash
# Quick start: set up, train the default GPT on Tiny Shakespeare, print samples.
# Usage: bash scripts/quickstart.sh [WORKDIR]   (default: runs/gpt_shakespeare_char)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
workdir=${1:-runs/gpt_shakespeare_char}
.venv/bin/python -m research.train --config=configs/gpt_shakespeare_char.py --workdir="$workdir"
.venv/bin/python -m research.generate --workdir="$workdir" --prompt="ROMEO:" --max_new_tokens=300
