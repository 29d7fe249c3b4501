"""The README's "Real-size configs on TPU" table: research.aot over every configs/scale/ config.

  .venv/bin/python benchmarks/aot_scale.py [--only=gpt2_small,llama2_7b] [--out=DIR]

Each config names its slice in a module-level TOPOLOGY; each row is one
`python -m research.aot --config=configs/scale/NAME.py --topology=TOPOLOGY --json=...` run in its
own process (its wall time is the compile time here). Prints the markdown table; per-config JSON
and logs go to --out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the config files import research.config


def topology_of(config_file: pathlib.Path) -> str:
  spec = importlib.util.spec_from_file_location(f"_scale_{config_file.stem}", config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.TOPOLOGY


def row(name: str, topology: str, report: dict, wall: float) -> str:
  train = report["programs"]["train"]
  mem, roof = train["memory"], train["roofline"]
  gib = mem["total bytes"] / 2**30
  return (f"| [`{name}`](configs/scale/{name}.py) | {report['parameters'] / 1e6:,.0f}M | "
          f"`{topology}` ({report['chips']} chips), mesh {report['mesh']} | {gib:.2f} of "
          f"{mem['hbm bytes'] / 2**30:.0f} GiB | {'yes' if mem['fits'] else '**no**'} | "
          f"{1e3 * roof['step_s_lower_bound']:,.0f} ms ({roof['limited_by']}) | "
          f"{100 * roof.get('mfu_upper_bound', 0):.0f}% | {wall:.0f} s |")


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--only", default="")
  parser.add_argument("--out", default="/tmp/aot_scale")
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  files = sorted((REPO / "configs" / "scale").glob("*.py"))
  wanted = set(filter(None, args.only.split(",")))
  rows = []
  for file in files:
    if wanted and file.stem not in wanted:
      continue
    topology = topology_of(file)
    command = [sys.executable, "-m", "research.aot", f"--config={file}",
               f"--topology={topology}", f"--json={out / (file.stem + '.json')}"]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    (out / f"{file.stem}.log").write_text(result.stdout + result.stderr)
    print(f"{file.stem}: exit {result.returncode} in {wall:.0f} s", file=sys.stderr, flush=True)
    if not (out / f"{file.stem}.json").exists():
      print(result.stderr[-2000:], file=sys.stderr)
      continue
    report = json.loads((out / f"{file.stem}.json").read_text())
    rows.append(row(file.stem, topology, report, wall))
  print("| config | parameters | slice | train step per device | fits | roofline step "
        "(estimate) | MFU bound | compile here |")
  print("|---|---|---|---|---|---|---|---|")
  print("\n".join(rows))


if __name__ == "__main__":
  main()
