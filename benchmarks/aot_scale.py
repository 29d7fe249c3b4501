"""docs/tpu.md's table of real-size configs: research.aot over every configs/scale/ config.

  .venv/bin/python benchmarks/aot_scale.py [--only=gpt2_small,llama2_7b] [--out=DIR] \
      [--programs=train] [--reuse]

Each config names its slice in a module-level TOPOLOGY (and XLA TPU options in LIBTPU_INIT_ARGS,
which research.aot applies); each row is one
`python -m research.aot --config=configs/scale/NAME.py --topology=TOPOLOGY --json=...` run in its
own process (its wall time is the compile time here). Prints the markdown table; per-config JSON
and logs go to --out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
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
  mesh = ", ".join(f"{k}={v}" for k, v in report["mesh"].items() if v > 1) or "1 device"
  terms = " / ".join(f"{1e3 * roof[k]:,.0f}" for k in ("compute_s", "hbm_s", "collective_s"))
  params = f"{report['parameters'] / 1e6:,.0f}M"
  if report.get("lora_rank"):  # the optimizer trains only the adapters
    params += f" (LoRA r={report['lora_rank']}: {report['trained_parameters'] / 1e6:,.1f}M trained)"
  return (f"| [`{name}`](../configs/scale/{name}.py) | {params} | "
          f"`{topology}` ({report['chips']} chips), {mesh} | {gib:.2f} of "
          f"{mem['hbm bytes'] / 2**30:.0f} GiB | {'yes' if mem['fits'] else '**no**'} | "
          f"{1e3 * roof['step_s_lower_bound']:,.0f} ms ({terms}) | {roof['limited_by']} | "
          f"{100 * roof.get('mfu_upper_bound', 0):.0f}% | {wall:.0f} s |")


def host() -> str:
  """This machine's CPU, as research.machine names it, without starting JAX."""
  from research import machine  # pylint: disable=import-outside-toplevel
  info = machine._cpuinfo()  # pylint: disable=protected-access
  kind = machine.cpu_kind(set(info.get("flags", "").split()))
  return (f"{info.get('model name', 'unknown CPU')} (family {info.get('cpu family', '?')}, model "
          f"{info.get('model', '?')}; {kind}), {os.cpu_count()} cores")


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--only", default="")
  parser.add_argument("--out", default="/tmp/aot_scale")
  parser.add_argument("--reuse", action="store_true",
                      help="take a row from --out where its JSON is newer than its config")
  parser.add_argument("--programs", default="train,eval,decode",
                      help="research.aot's --programs (the table shows the train step)")
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
    json_file, wall_file = out / f"{file.stem}.json", out / f"{file.stem}.wall"
    if args.reuse and json_file.exists() and wall_file.exists() and (
        json_file.stat().st_mtime > file.stat().st_mtime):
      rows.append(row(file.stem, topology, json.loads(json_file.read_text()),
                      float(wall_file.read_text())))
      continue
    json_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "research.aot", f"--config={file}",
               f"--topology={topology}", f"--json={json_file}", f"--programs={args.programs}"]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    (out / f"{file.stem}.log").write_text(result.stdout + result.stderr)
    print(f"{file.stem}: exit {result.returncode} in {wall:.0f} s", file=sys.stderr, flush=True)
    if not json_file.exists():
      print(result.stderr[-2000:], file=sys.stderr)
      continue
    wall_file.write_text(f"{wall:.1f}")
    rows.append(row(file.stem, topology, json.loads(json_file.read_text()), wall))
  print("| config | parameters | slice, mesh | train step per chip | fits | roofline step "
        "(compute / HBM / collectives ms) | bound by | MFU bound | compile here |")
  print("|---|---|---|---|---|---|---|---|---|")
  print("\n".join(rows))
  print(f"\nCompiled on {host()}, {time.strftime('%Y-%m-%d')}, one config at a time.")


if __name__ == "__main__":
  main()
