"""The results tables, regenerated per kind of machine: each row's config trained (and
evaluated) for every seed, with the machine (CPU model and ISA: AMX, AVX-512+bf16, AVX2, or the
accelerator), the precision policy and the library versions it ran with.

  python -m experiments.results --seeds=0,1,2                  # the task rows, on this machine
  python -m experiments.results --seeds=0,1,2 --only=sst2_minilm
  python -m experiments.results --only=all                     # every row (see --list)
  python -m experiments.results --only=sst2_minilm --steps=20  # the machinery in minutes
  python -m experiments.results --readme     # docs/results.md and the README's table again

The task rows (GOALS: sst2_bert, sst2_minilm, spa_eng_t5_continued, squad_minilm) are judged
against their goals on the mean of 3 seeds of one kind of machine; a goal met or missed is
stated per kind. --out defaults to runs/results/<machine tag>; a full run is then filed under
experiments/results_published/<tag>/ (merged with the rows measured there before) and
docs/results.md (every kind so far, and the figures recorded by hand before this runner, in
experiments/results_published/earlier.json) and the README's generated block are rewritten.
Runs shortened by --steps are never filed.

A row is a README command: `research.train` on a repository config with
`--config.train.seed=K` (plus `research.evaluate` on the row's split for a fine-tuning task).
The training is a run of experiments/executor.py (that config, resolved, and its workdir): a
fresh worker process on this machine, as the command would be, or with --executor=ray a task on
a Ray cluster (docs/ray.md); research.evaluate runs here as a subprocess, exactly as a user types
it. OUT/<row>/seed<K>/workdir is the workdir (its output in workdir.log); its
result.json is written when the row has finished for that seed, and OUT/results.json and
OUT/results.md are rewritten after every row. Running the command again skips finished rows
and resumes an interrupted one from its last checkpoint (research.train resumes by itself).
Rows that start from another row's weights (`spa_eng_t5_continued` from `spa_eng_t5`, the same
seed) run it first; the MiniLM rows import all-MiniLM-L6-v2 once, into OUT/minilm.

The machine tag (intel-avx512, intel-amx, amd-avx512, amd-avx2, ...; research/machine.py)
names the CPU kind, since the same seed gives other figures on another kind.
tests/test_results.py fails when docs/results.md or the README's table differ from the
committed files.

Per row results.md gives the metric as mean ± sd over the seeds (sample sd), each seed's
figure, the steps, the wall time per seed (training + evaluation), and the resolved precision
policy; its header names the machine (CPU model and kind: AMX, AVX-512 or AVX2 only, or the
accelerator) and the jax / flax versions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
import numpy as np
from absl import app, flags
from etils import epath

from experiments import executor as executor_lib
from experiments.executor import format_seconds
from research import machine as machine_lib
from research import paths
from research.config import UserError
from research.paths import REPO_ROOT
# pylint: enable=wrong-import-position

COMMITTED = REPO_ROOT / "experiments" / "results_published"
README = REPO_ROOT / "README.md"


@dataclasses.dataclass(frozen=True)
class Metric:
  key: str  # of research.evaluate's JSON (fine-tuning) or of metrics.jsonl without "eval/"
  label: str
  scale: float = 1.0  # accuracy 0.853 stays 0.853; scale 100 would print 85.3
  digits: int = 3


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  table: str  # "pretraining" or "fine-tuning"
  config: str  # configs/<file>
  what: str
  metrics: tuple[Metric, ...]
  split: str = ""  # fine-tuning: research.evaluate's --split ("": the config's eval split)
  overrides: tuple[str, ...] = ()  # extra --config.* flags
  after: str = ""  # the row (same seed) whose workdir is this one's init_from
  minilm: bool = False  # init_from the imported all-MiniLM-L6-v2
  minutes: float = 1.0  # wall time on the AMX CPU (README), for the estimate of time left

  @property
  def pretraining(self) -> bool:
    return self.table == "pretraining"


LOSS = Metric("loss", "val loss")
ACCURACY = Metric("accuracy", "dev accuracy")
BLEU = Metric("bleu", "test BLEU", digits=2)
ROUGE = (Metric("rouge1", "ROUGE-1", digits=2), Metric("rouge2", "ROUGE-2", digits=2),
         Metric("rougeL", "ROUGE-L", digits=2))
SQUAD = (Metric("exact_match", "EM", digits=2), Metric("f1", "F1", digits=2))

# The rows whose goals the project set; judged on the 3-seed mean of each kind of machine.
GOALS = {"sst2_bert": (ACCURACY, 0.80, "SST-2 from scratch"),
         "sst2_minilm": (ACCURACY, 0.85, "SST-2, MiniLM fine-tuned"),
         "spa_eng_t5_continued": (BLEU, 20.0, "Spanish → English"),
         "squad_minilm": (SQUAD[1], 45.0, "SQuAD, MiniLM fine-tuned")}
TASK_ROWS = tuple(GOALS)
GOAL_SEEDS = 3

ROWS = {row.name: row for row in (
    Row("gpt_shakespeare_char", "pretraining", "gpt_shakespeare_char.py",
        "decoder, causal LM, 0.80M params (the default config)", (LOSS,), minutes=1.2),
    Row("gpt_shakespeare_char_nanogpt", "pretraining", "gpt_shakespeare_char_nanogpt.py",
        "nanoGPT's CPU recipe, choice for choice", (LOSS,), minutes=1.4),
    Row("gpt_shakespeare_prefixlm", "pretraining", "gpt_shakespeare_prefixlm.py",
        "the default GPT, prefix-LM objective", (LOSS,), minutes=1.5),
    Row("bert_shakespeare_mlm", "pretraining", "bert_shakespeare_mlm.py",
        "encoder, masked LM, 0.82M params", (LOSS, Metric("accuracy", "masked accuracy")),
        minutes=5),
    Row("t5_shakespeare_span", "pretraining", "t5_shakespeare_span.py",
        "encoder-decoder, span corruption, 1.86M params",
        (LOSS, Metric("accuracy", "target accuracy")), minutes=6.5),
    Row("sst2_bert", "fine-tuning", "sst2_bert.py", "encoder from scratch (goal >= 0.80)",
        (ACCURACY,), minutes=65),
    Row("sst2_gpt", "fine-tuning", "sst2_gpt.py", "decoder from scratch, last-token head",
        (ACCURACY,), minutes=24),
    Row("sst2_minilm", "fine-tuning", "sst2_minilm.py",
        "all-MiniLM-L6-v2 imported, fine-tuned (goal >= 0.85)", (ACCURACY,), minilm=True,
        minutes=22),
    Row("sst2_t5", "fine-tuning", "sst2_t5.py", "encoder-decoder 2+2, text-to-text",
        (ACCURACY,), minutes=2.5),
    Row("spa_eng_t5", "fine-tuning", "spa_eng_t5.py", "encoder-decoder 3+3, beam 4",
        (BLEU,), split="test", minutes=105),
    Row("spa_eng_t5_continued", "fine-tuning", "spa_eng_t5_continued.py",
        "spa_eng_t5 + a second cosine cycle (goal >= 20)", (BLEU,), split="test",
        after="spa_eng_t5", minutes=28),
    Row("spa_eng_gpt", "fine-tuning", "spa_eng_gpt.py", "decoder 6 layers, prompt format",
        (BLEU,), split="test", minutes=15),
    Row("squad_bert", "fine-tuning", "squad_bert.py", "encoder from scratch, span head",
        SQUAD, minutes=14),
    Row("squad_minilm", "fine-tuning", "squad_minilm.py", "all-MiniLM-L6-v2, span head",
        SQUAD, minilm=True, minutes=53),
    Row("squad_minilm_continued", "fine-tuning", "squad_minilm.py",
        "squad_minilm + 200 steps at lr 5e-5 (goal F1 >= 40)", SQUAD, after="squad_minilm",
        overrides=("optimizer.learning_rate=5e-5", "optimizer.warmup_steps=10",
                   "train.steps=200", "train.eval_every=200", "train.checkpoint_every=200"),
        minutes=23),
    Row("squad_t5", "fine-tuning", "squad_t5.py", "encoder-decoder, writes the answer", SQUAD,
        minutes=12),
    Row("scitldr_t5", "fine-tuning", "scitldr_t5.py", "encoder-decoder 3+3, greedy", ROUGE,
        minutes=7.5),
    Row("scitldr_gpt", "fine-tuning", "scitldr_gpt.py", "decoder 6 layers", ROUGE, minutes=18),
    Row("alpaca_gpt", "fine-tuning", "alpaca_gpt.py", "decoder, chat template",
        (Metric("loss", "response loss"), ROUGE[2]), minutes=9),
)}


# ---------------------------------------------------------------------------------------------
# Running rows
# ---------------------------------------------------------------------------------------------


def read_json(path: pathlib.Path) -> Any:
  return json.loads(path.read_text())


def write_json(path: pathlib.Path, value: Any) -> None:
  paths.write_atomic(epath.Path(path), json.dumps(value, indent=1, sort_keys=True) + "\n")


class Progress:
  """The progress line: row, seed, stage and the time left. Time left scales each row's AMX
  wall time (Row.minutes) by how fast the rows finished so far ran against theirs."""

  def __init__(self, todo: list[tuple[Row, int]], steps: int = 0):
    self.todo = list(todo)
    self.steps = steps  # --steps: each row's share of its config's steps
    self._config_steps: dict[str, int] = {}
    self.done_nominal = 0.0
    self.done_seconds = 0.0
    self.started = time.monotonic()
    self.running_speed: float | None = None

  def minutes(self, row: Row) -> float:
    """The row's AMX wall time, for the steps it runs."""
    if not self.steps:
      return row.minutes
    if row.name not in self._config_steps:
      self._config_steps[row.name] = executor_lib.config_with_overrides(
          REPO_ROOT / "configs" / row.config, list(row.overrides)).train.steps
    return row.minutes * min(1.0, self.steps / self._config_steps[row.name])

  def speed(self) -> float:
    """Seconds here per second on the AMX CPU, from the rows finished so far (else from the
    running row's progress, else 1)."""
    if self.done_nominal:
      return self.done_seconds / (60 * self.done_nominal)
    return self.running_speed or 1.0

  def finished(self, row: Row, seconds: float) -> None:
    self.todo.remove(next(t for t in self.todo if t[0] is row))
    self.done_nominal += self.minutes(row)
    self.done_seconds += seconds
    self.running_speed = None

  def say(self, row: Row, seed: int, stage: str, fraction: float = 0.0,
          elapsed: float = 0.0) -> None:
    """fraction: of the running row done, after `elapsed` seconds."""
    if fraction > 0.05:
      self.running_speed = elapsed / (fraction * self.minutes(row) * 60)
    left = ((sum(self.minutes(r) for r, _ in self.todo) - self.minutes(row) * fraction) * 60
            * self.speed())
    print(f"[results] {row.name} seed {seed}: {stage}; {len(self.todo)} row-seeds to go, about "
          f"{format_seconds(max(left, 0))} left ({format_seconds(time.monotonic() - self.started)}"
          " so far)", file=sys.stderr, flush=True)


def train_steps_done(workdir: pathlib.Path) -> tuple[int, int]:
  """(last logged step, train.steps) of a workdir's run, from metrics.jsonl and config.json."""
  try:
    total = read_json(workdir / "config.json")["train"]["steps"]
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return (json.loads(lines[-1])["step"] if lines else 0), total
  except (OSError, ValueError, KeyError):
    return 0, 0


def run_command(command: list[str], log: pathlib.Path, on_wait=None) -> None:
  """Runs a README command (output to `log`); a failure is one line naming the log."""
  with open(log, "a", encoding="utf-8") as f:
    f.write(f"$ {' '.join(command)}\n")
    f.flush()
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT)
    try:
      while process.poll() is None:
        try:
          process.wait(timeout=60)
        except subprocess.TimeoutExpired:
          if on_wait:
            on_wait()
    except BaseException:
      process.terminate()  # research.train checkpoints on SIGTERM; a rerun resumes
      process.wait()
      raise
  if process.returncode:
    tail = log.read_text().strip().splitlines()[-1:] or [""]
    raise UserError(f"{command[2]} exited with {process.returncode} ({tail[0][:200]}); "
                    f"see {log}")


def final_eval(workdir: pathlib.Path, steps: int) -> dict[str, float]:
  """The evaluation research.train logged at its last step (pretraining rows)."""
  for line in reversed((workdir / "metrics.jsonl").read_text().splitlines()):
    record = json.loads(line)
    if record.get("step") == steps and "eval/loss" in record:
      return {k.removeprefix("eval/"): v for k, v in record.items() if k.startswith("eval/")}
  raise UserError(f"{workdir / 'metrics.jsonl'} has no evaluation at step {steps}")


def ensure_minilm(out: pathlib.Path) -> pathlib.Path:
  from research import hf  # pylint: disable=import-outside-toplevel
  workdir = out / "minilm"
  if not (workdir / "config.json").exists():
    shutil.rmtree(workdir, ignore_errors=True)  # an import cut short
    run_command([sys.executable, "-m", "research.convert", f"--from_hf={hf.minilm_dir()}",
                 f"--workdir={workdir}"], out / "minilm.log")
  return workdir


def shortened_overrides(steps: int) -> tuple[str, ...]:
  """--steps=N: every row trains N steps, evaluated and checkpointed at the last one. This
  proves the machinery in minutes; its figures are no results and are never published."""
  return (f"train.steps={steps}", f"train.eval_every={steps}",
          f"train.checkpoint_every={steps}", f"optimizer.warmup_steps={max(1, steps // 10)}")


def run_row(row: Row, seed: int, out: pathlib.Path, progress: Progress,
            executor: executor_lib.Executor | None = None,
            resources: executor_lib.Resources = executor_lib.Resources(),
            steps: int = 0) -> dict:
  """Trains (and evaluates) one row for one seed; returns its record. steps > 0 shortens the
  row's training to that many steps (shortened_overrides)."""
  directory = out / row.name / f"seed{seed}"
  workdir = directory / "workdir"
  directory.mkdir(parents=True, exist_ok=True)
  overrides = [f"--config.train.seed={seed}"] + [
      f"--config.{o}" for o in row.overrides + (shortened_overrides(steps) if steps else ())]
  if row.after:
    overrides.append(f"--config.init_from={out / row.after / f'seed{seed}' / 'workdir'}")
  elif row.minilm:
    overrides.append(f"--config.init_from={ensure_minilm(out)}")
  train = [sys.executable, "-m", "research.train", f"--config=configs/{row.config}",
           f"--workdir={workdir}", *overrides]
  resumed = (workdir / "metrics.jsonl").exists()

  loads = [os.getloadavg()[0]]  # other work on the machine slows the row: said in the table

  def on_wait():
    loads.append(os.getloadavg()[0])
    step, total = train_steps_done(workdir)
    progress.say(row, seed, f"training, step {step}/{total or '?'}",
                 step / total if total else 0.0, time.monotonic() - started)

  started = time.monotonic()
  progress.say(row, seed, "training" + (" (resuming)" if resumed else ""))
  if executor is None:
    run_command(train, directory / "log.txt", on_wait)
  else:  # the same config resolved here, trained where the executor puts it
    config = executor_lib.config_with_overrides(
        REPO_ROOT / "configs" / row.config, [o.removeprefix("--config.") for o in overrides]
    ).to_dict()
    run = executor_lib.Run(f"{row.name} seed{seed}", config, str(workdir),
                           resources.for_config(config), root=str(out),
                           overrides=tuple(o.removeprefix("--config.").split("=")[0]
                                           for o in overrides))
    outcome = executor.run(run)
    if outcome.status == "interrupted":
      raise KeyboardInterrupt  # the run checkpointed; run_cli exits 130
    if not outcome.ok:
      raise UserError(f"{row.name} seed {seed}: {outcome.status.replace('_', ' ')}: "
                      f"{outcome.error}; see {run.log}")
  train_seconds = time.monotonic() - started
  config = read_json(workdir / "config.json")
  steps = config["train"]["steps"]
  commands = [train]
  if row.pretraining:
    metrics = final_eval(workdir, steps)
    eval_seconds = 0.0
  else:
    progress.say(row, seed, f"evaluating on {row.split or config['data']['eval_split']}")
    started = time.monotonic()
    evaluate = [sys.executable, "-m", "research.evaluate", f"--workdir={workdir}",
                f"--output={directory / 'eval.json'}"] + ([f"--split={row.split}"]
                                                            if row.split else [])
    run_command(evaluate, directory / "log.txt")
    eval_seconds = time.monotonic() - started
    metrics = read_json(directory / "eval.json")
    commands.append(evaluate)
  precision = read_json(workdir / "precision.json")["stretches"]
  return {
      "row": row.name, "seed": seed, "steps": steps, "batch_size": config["data"]["batch_size"],
      "metrics": {m.key: metrics[m.key] for m in row.metrics},
      "extra": {k: v for k, v in metrics.items() if isinstance(v, str)},  # e.g. BLEU signature
      "train_seconds": train_seconds, "eval_seconds": eval_seconds, "resumed": resumed,
      "shortened_to_steps": steps or None,
      "cores": os.cpu_count(),
      "load_average": round(float(np.median(loads)), 1),  # 1-minute, sampled each minute
      "precision": {k: precision[-1][k] for k in ("matmul_dtype", "activation_dtype")},
      "precision_stretches": len(precision),
      "commands": [f"python -m {' '.join(c[2:])}".replace(str(out), "OUT") for c in commands],
  }


def order_rows(names: list[str]) -> list[Row]:
  """The rows asked for, each after the row it starts from."""
  ordered: list[Row] = []

  def add(name: str) -> None:
    row = ROWS[name]
    if row.after:
      add(row.after)
    if row not in ordered:
      ordered.append(row)

  for name in names:
    add(name)
  return ordered


def run(out: pathlib.Path, names: list[str], seeds: list[int],
        executor: executor_lib.Executor | None = None,
        resources: executor_lib.Resources = executor_lib.Resources(), steps: int = 0) -> dict:
  out.mkdir(parents=True, exist_ok=True)
  results_path = out / "results.json"
  results = read_json(results_path) if results_path.exists() else {"rows": {}}
  machine = machine_lib.describe()
  if results.get("machine") and results["machine"]["tag"] != machine["tag"]:
    raise UserError(f"{out} holds results measured on {results['machine']['tag']} "
                    f"({machine_lib.summary(results['machine'])}); this is {machine['tag']}: "
                    "use another --out, since figures of two kinds of machine do not mix")
  if results["rows"] and results.get("shortened_to_steps") != (steps or None):
    held = results.get("shortened_to_steps")
    raise UserError(f"{out} holds {f'runs shortened to {held} steps' if held else 'full runs'}"
                    f"; this is {f'--steps={steps}' if steps else 'a full run'}: use another "
                    "--out")
  results["machine"] = machine
  results["shortened_to_steps"] = steps or None
  todo = [(row, seed) for row in order_rows(names) for seed in seeds
          if not (out / row.name / f"seed{seed}" / "result.json").exists()]
  progress = Progress(todo, steps)
  if executor is not None:
    executor.board.expect(len(todo))
  for row, seed in todo:
    started = time.monotonic()
    record = run_row(row, seed, out, progress, executor, resources, steps)
    # Each record names its machine too: a kind's published file gathers rows run at other times.
    record["machine"] = {"tag": machine["tag"], "cpu": machine["cpu"], "isa": isa(machine),
                         "jax": machine["jax"], "flax": machine["flax"]}
    write_json(out / row.name / f"seed{seed}" / "result.json", record)
    progress.finished(row, time.monotonic() - started)
  for row in ROWS.values():  # every finished row and seed in OUT, this run's and earlier ones'
    for seed_dir in sorted((out / row.name).glob("seed*/result.json")):
      record = read_json(seed_dir)
      results["rows"].setdefault(row.name, {})[str(record["seed"])] = record
  write_json(results_path, results)
  (out / "results.md").write_text(render(results))
  print(f"wrote {out / 'results.md'}", file=sys.stderr)
  return results


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def mean_sd(values: list[float], digits: int) -> str:
  if len(values) == 1:
    return f"{values[0]:.{digits}f}"
  return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def row_cells(row: Row, records: dict[str, dict]) -> list[str]:
  seeds = sorted(records, key=int)
  cells = []
  for metric in row.metrics:
    values = [records[s]["metrics"][metric.key] * metric.scale for s in seeds]
    each = ", ".join(f"{v:.{metric.digits}f}" for v in values)
    cells.append(f"{metric.label} **{mean_sd(values, metric.digits)}** ({each})")
  first = records[seeds[0]]
  walls = [records[s]["train_seconds"] + records[s]["eval_seconds"] for s in seeds]
  resumed = any(records[s]["resumed"] for s in seeds)
  # More runnable processes than cores: the wall time is that of a shared machine.
  load = max(records[s].get("load_average", 0.0) for s in seeds)
  cores = records[seeds[0]].get("cores") or 2
  shared = f", shared cores (load {load:.1f})" if load > cores + 0.5 else ""
  return [f"[`{row.name}`](configs/{row.config})", row.what, "; ".join(cells),
          ", ".join(seeds), f"{first['steps']} × {first['batch_size']}",
          f"{format_seconds(float(np.median(walls)))}{' (resumed)' if resumed else ''}{shared}",
          f"{first['precision']['matmul_dtype']} matmuls"]


HEADER = ["row", "what", "metric: mean ± sd over seeds (each seed)", "seeds", "steps × batch",
          "wall per seed (median)", "precision"]


def render_tables(results: dict) -> str:
  """The tables (markdown) of a results.json: the part the README holds."""
  machine = results["machine"]
  lines = [f"Measured on {machine_lib.summary(machine)}; jax {machine['jax']}, flax "
           f"{machine['flax']}. Rows: `python -m experiments.results --out=DIR "
           "--only=ROW --seeds=0,1,2`.", ""]
  for table in ("pretraining", "fine-tuning"):
    rows = [row for row in ROWS.values() if row.table == table and row.name in results["rows"]]
    if not rows:
      continue
    lines += [f"**{table.capitalize()}**", "", "| " + " | ".join(HEADER) + " |",
              "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row_cells(row, results["rows"][row.name])) + " |"
              for row in rows]
    lines.append("")
  return "\n".join(lines).rstrip() + "\n"


def render(results: dict) -> str:
  shortened = results.get("shortened_to_steps")
  warning = (f"**Shortened by --steps={shortened}: these figures show that the runner works; "
             "they are no results and are never published.**\n\n" if shortened else "")
  return (f"# Results ({results['machine']['tag']})\n\nWritten by `python -m "
          f"experiments.results`; docs/results.md gathers every kind.\n\n{warning}"
          + render_tables(results))


DOCS = REPO_ROOT / "docs" / "results.md"
EARLIER = COMMITTED / "earlier.json"


def isa(machine: dict) -> str:
  """The instruction set that decides matmul speed and precision: AMX, AVX-512+bf16, AVX-512,
  AVX2, or the accelerator."""
  if machine.get("accelerator"):
    return machine["accelerator"]
  if machine.get("isa"):  # earlier.json names it directly
    return machine["isa"]
  kind = machine["cpu_kind"]
  return f"{kind}+bf16" if kind == "AVX-512" and "avx512_bf16" in machine["cpu_flags"] else kind


def measured_kinds() -> dict[str, dict]:
  """{machine tag: results.json} of every kind filed under experiments/results_published/."""
  return {path.parent.name: read_json(path) for path in sorted(COMMITTED.glob("*/results.json"))}


def earlier_figures() -> dict:
  return read_json(EARLIER) if EARLIER.exists() else {"about": "", "kinds": {}, "rows": []}


def goal_verdict(values: list[float], threshold: float, digits: int) -> str:
  """A goal is judged on the mean of GOAL_SEEDS seeds or more; fewer seeds are reported, not
  judged."""
  figure = mean_sd(values, digits)
  if len(values) < GOAL_SEEDS:
    side = "at or above" if np.mean(values) >= threshold else "below"
    return (f"{figure} ({len(values)} seed{'s' if len(values) > 1 else ''}, {side} the goal: "
            f"not judged, {GOAL_SEEDS} needed)")
  return f"{figure}: **{'met' if np.mean(values) >= threshold else 'missed'}**"


def goal_values(results: dict, row: str, key: str) -> list[float]:
  return [record["metrics"][key] for _, record in
          sorted(results["rows"].get(row, {}).items(), key=lambda item: int(item[0]))]


def goals_table() -> str:
  """Each goal against every kind of machine measured so far: the mean over seeds, and met or
  missed where 3 seeds (or more) ran there. Runs and hand-recorded earlier figures."""
  kinds = measured_kinds()
  earlier = earlier_figures()
  columns = [(tag, f"{tag} ({isa(results['machine'])})") for tag, results in kinds.items()]
  columns += [(tag, f"{tag} ({kind['isa']}, earlier, by hand)")
              for tag, kind in earlier["kinds"].items() if tag not in kinds]
  lines = ["| goal | " + " | ".join(label for _, label in columns) + " |",
           "|---|" + "---|" * len(columns)]
  for row, (metric, threshold, what) in GOALS.items():
    cells = []
    for tag, _ in columns:
      values = goal_values(kinds[tag], row, metric.key) if tag in kinds else []
      if not values:
        values = [v for e in earlier["rows"] if e["row"] == row and e["kind"] == tag
                  for v in e["metrics"][metric.key]]
      cells.append(goal_verdict(values, threshold, metric.digits) if values else "not run")
    lines.append(f"| {what}: [`{row}`](configs/{ROWS[row].config}) {metric.label} ≥ "
                 f"{threshold:.{metric.digits if threshold < 1 else 0}f} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def earlier_table() -> str:
  earlier = earlier_figures()
  lines = [earlier["about"], "",
           "| row | kind | figure (each seed) | seeds | steps × batch | wall | precision | note |",
           "|---|---|---|---|---|---|---|---|"]
  for entry in earlier["rows"]:
    row = ROWS[entry["row"]]
    figures = "; ".join(
        f"{m.label} " + ", ".join(f"{v:.{m.digits}f}" for v in entry["metrics"][m.key])
        for m in row.metrics if m.key in entry["metrics"])
    kind = entry["kind"] + ("" if entry["kind_stated"] else " (assumed)")
    lines.append(f"| [`{row.name}`](../configs/{row.config}) | {kind} | {figures} | "
                 f"{', '.join(map(str, entry['seeds']))} | {entry['steps']} | {entry['wall']} | "
                 f"{entry['precision']} | {entry['note']} |")
  return "\n".join(lines) + "\n"


def render_docs() -> str:
  """docs/results.md: the goals per kind, every kind's tables, and the earlier figures."""
  parts = ["# Results per kind of machine", "",
           "Written by `python -m experiments.results` from `experiments/results_published/` "
           "(rerun `python -m experiments.results --readme` after editing those files; "
           "`tests/test_results.py` fails when this file differs). The same seed gives other "
           "figures on another kind of machine (`matmul_dtype=auto` and XLA's kernels differ "
           "with the instruction set), so each kind has its own tables, and a goal is judged "
           f"on the mean of {GOAL_SEEDS} seeds on the kind where they ran.", "",
           "Run on this machine (its kind is detected; finished rows are skipped, an "
           "interrupted one resumes):", "", "```bash",
           "python -m experiments.results --seeds=0,1,2                    # the task rows below",
           "python -m experiments.results --seeds=0,1,2 --only=sst2_minilm # one row",
           "python -m experiments.results --only=all                       # every row",
           "```", "", "## Task goals", "",
           goals_table().replace("](configs/", "](../configs/").rstrip()]
  for tag, results in measured_kinds().items():
    parts += ["", f"## {tag}: {isa(results['machine'])}", "",
              render_tables(results).replace("](configs/", "](../configs/").rstrip()]
  if earlier_figures()["rows"]:
    parts += ["", "## Earlier figures, recorded by hand", "", earlier_table().rstrip()]
  return "\n".join(parts) + "\n"


def readme_table() -> str:
  """The README's generated block: the goals per kind, and where the rest is."""
  return (goals_table() + "\nEvery row on every kind, with seeds, steps, wall times and "
          "precision: [docs/results.md](docs/results.md).\n")


BEGIN = "<!-- results: {} -->"
END = "<!-- end of results -->"


def readme_blocks(text: str) -> list[tuple[str, int, int]]:
  """(results file, start, end) of each generated block in the README's text."""
  blocks, position = [], 0
  prefix = BEGIN.split("{}")[0]
  while (start := text.find(prefix, position)) >= 0:
    name_end = text.index(" -->", start)
    end = text.index(END, name_end)
    blocks.append((text[start + len(prefix):name_end], name_end + len(" -->\n"), end))
    position = end
  return blocks


def block_text(name: str) -> str:
  """A generated README block: `docs/results.md` (the goals per kind) or a kind's
  results.json (its tables)."""
  if name == "docs/results.md":
    return readme_table()
  return render_tables(read_json(REPO_ROOT / name))


def readme_with_tables(text: str) -> str:
  """The README's text with each generated block made anew."""
  for name, start, end in reversed(readme_blocks(text)):
    text = text[:start] + block_text(name) + text[end:]
  return text


def publish(out: pathlib.Path) -> pathlib.Path:
  results = read_json(out / "results.json")
  if results.get("shortened_to_steps"):
    raise UserError(f"{out} holds runs shortened to {results['shortened_to_steps']} steps: "
                    "only full runs are published")
  target = COMMITTED / results["machine"]["tag"]
  target.mkdir(parents=True, exist_ok=True)
  if (target / "results.json").exists():  # keep rows measured earlier on this kind of machine
    committed = read_json(target / "results.json")
    for name, seeds in committed["rows"].items():
      results["rows"].setdefault(name, {})
      for seed, record in seeds.items():
        results["rows"][name].setdefault(seed, record)
  write_json(target / "results.json", results)
  (target / "results.md").write_text(render(results))
  update_readme()
  return target


def update_readme() -> None:
  """Rewrites docs/results.md and the README's generated blocks from the committed files."""
  DOCS.parent.mkdir(exist_ok=True)
  if not DOCS.exists() or DOCS.read_text() != render_docs():
    DOCS.write_text(render_docs())
    print(f"rewrote {DOCS}", file=sys.stderr)
  text = README.read_text()
  new = readme_with_tables(text)
  if new != text:
    README.write_text(new)
    print(f"rewrote the results tables in {README}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def define_flags() -> None:
  flags.DEFINE_string("out", "", "Folder of the runs and of results.json / results.md (default: "
                      "runs/results/<machine tag>, e.g. runs/results/amd-avx512).")
  flags.DEFINE_list("only", list(TASK_ROWS), "Rows to run (default: the task rows whose goals "
                    f"are judged, {', '.join(TASK_ROWS)}; 'all': all {len(ROWS)}; see --list).")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds, each a run of every row.")
  flags.DEFINE_integer("steps", 0, "Shorten every row to this many training steps: proves the "
                       "machinery in minutes; such runs are never published (default: the "
                       "configs' own steps).")
  flags.DEFINE_bool("publish", True, "After the runs, file OUT's results under "
                    "experiments/results_published/<machine tag>/ and rewrite docs/results.md "
                    "and the README's table (--nopublish: OUT only). --out=DIR --publish with "
                    "neither --only nor --seeds files what DIR holds and runs nothing.")
  flags.DEFINE_bool("readme", False, "Only rewrite the README's tables from the committed "
                    "results files.")
  flags.DEFINE_bool("list", False, "Print the rows and exit.")
  executor_lib.define_flags()


def main(argv) -> None:
  from research import cli, train  # pylint: disable=import-outside-toplevel
  cli.reject_positional_args(argv)
  f = flags.FLAGS

  def body():
    if f.list:
      for row in ROWS.values():
        print(f"{row.name:30s} {row.table:12s} configs/{row.config}  (~{row.minutes:g} min "
              "per seed on the AMX CPU)")
      return
    if f.readme:
      update_readme()
      return
    if f.steps < 0:
      raise UserError(f"--steps={f.steps}: give a number of steps > 0, or 0 for the configs' own")
    names = list(ROWS) if list(f.only) == ["all"] else list(f.only)
    unknown = [name for name in names if name not in ROWS]
    if unknown:
      raise UserError(f"unknown row(s) {', '.join(unknown)} in --only; the rows are: "
                      f"{', '.join(ROWS)} (or all)")
    try:
      seeds = sorted({int(s) for s in f.seeds})
    except ValueError:
      raise UserError(f"--seeds={','.join(f.seeds)}: give integers, e.g. --seeds=0,1,2") \
          from None
    tag = machine_lib.describe()["tag"]
    out = pathlib.Path(f.out or REPO_ROOT / "runs" / "results" /
                       (f"{tag}-steps{f.steps}" if f.steps else tag)).absolute()
    from research import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
    workdir_lib.check_out_folder(out)  # a file or a training workdir: one line, nothing written
    resources = executor_lib.parse_resources(f.run_resources)
    if f.dry_run:
      for row in order_rows(names):
        for seed in seeds:
          state = ("finished" if (out / row.name / f"seed{seed}" / "result.json").exists()
                   else "to run")
          print(f"{row.name} seed{seed}: {state}; {resources.describe()}; "
                f"{row.name}/seed{seed}/workdir")
      return
    # `--out=DIR --publish` alone files what DIR holds, running nothing.
    publish_only = (f["publish"].present and not f["only"].present and not f["seeds"].present
                    and (out / "results.json").exists())
    # One row at a time, each in a fresh process as its README command would be: the
    # tables' wall times are those of a run alone on its machine.
    executor = (None if publish_only else
                executor_lib.LocalPool(1, in_process=False, runs_per_process=1)
                if f.executor == "local" else executor_lib.RayExecutor(f.ray_address))
    if executor is not None:
      try:
        with executor_lib.StopOnSignal(executor):
          run(out, names, seeds, executor, resources, f.steps)
      finally:
        executor.close()
    if f.publish and f.steps:
      print(f"note: runs shortened by --steps={f.steps} are not published; their figures are "
            f"in {out / 'results.md'}", file=sys.stderr)
    elif f.publish:
      print(f"published to {publish(out)}", file=sys.stderr)

  cli.run_cli(body)


if __name__ == "__main__":
  define_flags()
  app.run(main)
