"""Training: the pure train step, the loop around it, and its command line.

  python -m research.train --config=configs/gpt_shakespeare_char.py --workdir=runs/x \
      [--config.model.num_layers=6 ...]

Running the same command on a workdir that holds checkpoints resumes from the latest one.
What a run is built from lives beside it: research/experiment.py (mesh, data, model, loss),
research/train_state.py (the state, the optimizer), research/init_from.py (a pretrained start),
research/load.py (reading workdirs) and research/cli.py (flags and `error:` lines).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from etils import epath
from ml_collections import config_flags
from tqdm import tqdm

from research import checkpoint as ckpt_lib
from research import cli
from research import flops as flops_lib
from research import machine as machine_lib
from research import metrics as metrics_lib
from research import lora as lora_lib
from research import models, objectives, paths, sharding, splash
from research import workdir as workdir_lib
from research.config import ConfigError, ExperimentConfig, UserError
from research.experiment import (Experiment, WithBase, build_experiment, evaluate_split,
                                 make_eval_fn)
from research.init_from import copy_pretrained_tokenizer, inherit_pretrained, init_from_pretrained
from research.load import pretrained_params, saved_config
from research.train_state import TrainState, create_state, learning_rate_schedule

# Older callers import these from here; new code takes them from the modules that define them.
# pylint: disable=unused-import,g-bad-import-order
from research.cli import (Interrupted, check_utf8, parse_flags, quiet_logs,
                          reject_positional_args, run_cli)
from research.experiment import eval_step, resolve_vocab
from research.init_from import RUN_FIELDS, TOKENIZER_FIELDS
from research.load import (load_experiment_config, load_lora_base, merge_pretrained, pretrained_config,
                           pretrained_kind, restore_params)
from research.train_state import (base_shardings, build_model_and_loss, build_optimizer,
                                  init_params, init_trainable, state_shardings,
                                  weight_decay_mask)
# pylint: enable=unused-import,g-bad-import-order

Array = jax.Array


def train_step(state: TrainState, batch: dict[str, Array], *, model: nn.Module,
               tx: optax.GradientTransformation, loss_fn: Callable, base_rng: Array,
               accum_steps: int = 1,
               skip_nonfinite: bool = False) -> tuple[TrainState, dict[str, Array]]:
  """One optimizer update on `batch` (split into `accum_steps` microbatches). Pure.

  metrics['nonfinite'] is 1.0 when the loss or the gradient norm is NaN/Inf; with
  skip_nonfinite the state is then left as it was (only the step counter moves on).
  """
  step_rng = jax.random.fold_in(base_rng, state.step)

  def loss_and_grads(params, microbatch, rng):
    def summed_loss(p):
      sums = loss_fn(model, p, microbatch, rngs={"dropout": rng}, deterministic=False)
      return sums["loss_sum"], sums
    return jax.grad(summed_loss, has_aux=True)(params)

  if accum_steps == 1:
    grads, sums = loss_and_grads(state.params, batch, step_rng)
  else:
    micro = jax.tree.map(lambda x: x.reshape((accum_steps, -1) + x.shape[1:]), batch)

    def accumulate(carry, inputs):
      i, microbatch = inputs
      grads, sums = loss_and_grads(state.params, microbatch, jax.random.fold_in(step_rng, i))
      return jax.tree.map(jnp.add, carry, (grads, sums)), None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
        loss_and_grads, state.params, jax.tree.map(lambda x: x[0], micro), step_rng))
    (grads, sums), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(accum_steps), micro))

  # The loss is a sum over target tokens; dividing once gives the mean over the whole batch.
  grads = jax.tree.map(lambda g: g / jnp.maximum(sums["weight_sum"], 1.0), grads)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(sums["loss_sum"]) & jnp.isfinite(grad_norm)
  if skip_nonfinite:
    keep_old = lambda new, old: jnp.where(finite, new, old)
    params = jax.tree.map(keep_old, params, state.params)
    opt_state = jax.tree.map(keep_old, opt_state, state.opt_state)
    sums = jax.tree.map(lambda v: jnp.where(finite, v, 0.0), sums)  # logged means skip it
  metrics = dict(sums, grad_norm=grad_norm, nonfinite=1.0 - finite.astype(jnp.float32))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def check_resumable(workdir: epath.Path, config: ExperimentConfig,
                    sections: tuple[str, ...] = ("model", "data"),
                    ignore: tuple[str, ...] = ()) -> None:
  """Refuses to reuse a workdir that holds a run of another model (before anything is written)."""
  saved = saved_config(workdir)
  if saved is None:
    return
  want = config.to_dict()
  # The precision policy, the attention kernel, remat and dropout are how a run computes, not
  # what its parameters are: a run may resume with others (matmul_dtype="auto" resolves
  # differently on another machine), and record_start says which settings changed.
  precision = ("matmul_dtype", "activation_dtype", "attention", "remat", "dropout_rate",
               "logits_chunk")
  for section in sections:
    keys = (("tokenizer", "seq_len", "dataset") if section == "data" else
            [k for k in want[section] if k not in precision])
    # A key the saved config lacks was added to the code later: the run used its default.
    before = {**ExperimentConfig.from_config_dict({}).to_dict()[section], **saved.get(section, {})}
    diffs = [f"{section}.{k}: {before.get(k)!r} -> {want[section][k]!r}"
             for k in keys if before.get(k) != want[section][k] and k not in ignore]
    if diffs:
      raise UserError(f"workdir {workdir} holds a run of a different model ({'; '.join(diffs)}); "
                      "use a new --workdir, or the config it was trained with")


def make_step_fns(exp: Experiment):
  """(step(state, batch), evaluate(params, batch)), jitted. With LoRA both take the state's
  trainable tree; the frozen base (loaded here) goes in as an argument of its own, never
  donated and never differentiated."""
  cfg = exp.config
  batch_sharding = sharding.batch_sharding(exp.mesh, cfg.rules)
  replicated = sharding.replicated(exp.mesh)
  step_kw = dict(model=exp.model, tx=exp.tx, base_rng=jax.random.key(cfg.train.seed + 1),
                 accum_steps=cfg.optimizer.grad_accum_steps,
                 skip_nonfinite=cfg.train.nonfinite == "skip")
  if not cfg.lora.rank:
    step = jax.jit(functools.partial(train_step, loss_fn=exp.loss_fn, **step_kw),
                   in_shardings=(exp.shardings, batch_sharding),
                   out_shardings=(exp.shardings, replicated), donate_argnums=(0,))
    return step, make_eval_fn(exp)
  base = exp.base_params()
  on_base = lora_lib.loss_on_base(exp.loss_fn, cfg.lora)

  def lora_step(state, batch, frozen):
    return train_step(state, batch, loss_fn=functools.partial(on_base, base=frozen), **step_kw)

  step = jax.jit(lora_step, in_shardings=(exp.shardings, batch_sharding, exp.frozen_shardings),
                 out_shardings=(exp.shardings, replicated), donate_argnums=(0,))
  return WithBase(step, base), make_eval_fn(exp)


def _progress(total: int, initial: int):
  return tqdm(total=total, initial=initial, disable=jax.process_index() != 0, unit="step",
              dynamic_ncols=True, mininterval=1.0)


def train_and_evaluate(config: ExperimentConfig, workdir: str,
                       overrides: Iterable[str] = ()) -> dict[str, float]:
  """Trains (or resumes) the run in `workdir`; returns the final evaluation metrics.
  `overrides`: the keys the command line set ("model.attention"), which init_from keeps.

  One run per workdir (a second one stops at once, naming the holder); a start that fails
  before training begins leaves the workdir as it found it."""
  workdir = paths.workdir_path(workdir)  # a local path made absolute; gs://... as it is
  paths.check_bucket(workdir)  # a missing or refused bucket: one line, nothing written
  workdir_lib.check_writable(workdir)
  config = inherit_pretrained(config, overrides)  # checked before anything is written
  check_attention_runs(config)
  undo = workdir_lib.FailedStartUndo(workdir)  # notes what is there before anything is written
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lib.lock(workdir, "research.train"):
    try:
      return _start_and_train(config, workdir, undo)
    except BaseException:
      undo.undo()
      raise


def check_attention_runs(config: ExperimentConfig, platform: str | None = None) -> None:
  """model.attention=splash on devices that are not TPUs, where the kernel would really be asked
  to run (a variant it cannot express falls back to XLA with a note, and runs): ConfigError,
  before the workdir is made, rather than a Mosaic compile error at the first step."""
  m = config.model
  platform = platform or jax.devices()[0].platform
  if m.attention != "splash" or platform == "tpu":
    return
  prefix = not config.task.name and objectives.objective_of(config.objective).prefix
  reason = splash.unsupported_reason(
      q_len=config.data.seq_len, kv_len=config.data.seq_len, num_heads=m.num_heads,
      num_kv_heads=m.resolved_kv_heads, head_dim=m.resolved_head_dim,
      causal=models.family_of(m).decoder_only, window=m.attention_window,
      has_bias=m.position == "relative",
      has_prefix=prefix, dropout=m.dropout_rate > 0, decode=False)
  if reason is None:
    raise ConfigError(f"model.attention='splash' is a TPU kernel and these devices are "
                      f"{platform.upper()}s; use --config.model.attention=auto (the devices' "
                      "own: XLA on CPUs, cuDNN on GPUs) or xla")


def _start_and_train(config: ExperimentConfig, workdir: epath.Path,
                     undo: workdir_lib.FailedStartUndo) -> dict[str, float]:
  if config.init_from:
    copy_pretrained_tokenizer(config.init_from, workdir)
  # Another model is said as such, before the tokenizer is found not to fit it.
  # (model.vocab_size is checked against the tokenizer first, once it is loaded.)
  check_resumable(workdir, config, sections=("model", "lora"), ignore=("vocab_size",))
  # Other data than the run started with is refused before any of it is read or prepared.
  data_record = workdir_lib.check_data(workdir, config)
  exp = build_experiment(config, workdir)  # bad data is said here, with its own message
  cfg = exp.config
  check_resumable(workdir, cfg)
  warmup, steps = cfg.optimizer.warmup_steps, cfg.train.steps
  if warmup >= steps:
    last = cfg.optimizer.learning_rate * steps / (warmup + 1)
    print(f"note: optimizer.warmup_steps={warmup} is not shorter than the run's {steps} steps: "
          f"the learning rate only rises, to {last:.3g} at the last step, below the peak "
          f"optimizer.learning_rate={cfg.optimizer.learning_rate:g}; lower "
          "optimizer.warmup_steps to reach it", file=sys.stderr)
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=cfg.train.keep_checkpoints,
                                       async_save=cfg.train.async_checkpoints)
  train_iter = iter(exp.train_batches())
  program = OneRun(exp)  # (with LoRA it loads the frozen base)
  latest = checkpointer.latest_step()
  # Read before entering the run's mesh: restore_params builds a one-device mesh of its own.
  # (LoRA's base was loaded by make_step_fns; the state holds only what trains.)
  full_init = cfg.init_from and not cfg.lora.rank
  pretrained = pretrained_params(cfg.init_from) if full_init and latest is None else None
  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(cfg.rules):
    if latest is not None:
      state = checkpointer.restore(latest, ckpt_lib.abstract_like(exp.abstract_state,
                                                                  exp.shardings), train_iter)
      print(f"resumed from {checkpointer.directory / str(latest)}", file=sys.stderr)
    elif full_init:
      state = init_from_pretrained(exp, jax.random.key(cfg.train.seed), pretrained)
    else:
      state = create_state(exp.model, exp.tx, cfg, exp.shardings, jax.random.key(cfg.train.seed))
    if cfg.lora.rank and latest is None:
      print(f"LoRA rank {cfg.lora.rank} on {cfg.init_from}: "
            f"{lora_lib.num_bytes(state.params) / 2**20:.1f} MiB trained (adapters and any "
            f"head), {lora_lib.num_bytes(exp.frozen) / 2**20:.1f} MiB of base frozen",
            file=sys.stderr)
    if exp.is_task and latest is None:  # from the model it starts from (DPO's reference)
      exp.data.kind.prepare(exp, state.params, workdir)
    if jax.process_index() == 0:  # only once the run has really started
      record_start(workdir, cfg, data_record, latest)
    undo.started()
    try:
      (result,) = train_loop(program, [Run(exp, workdir, train_iter, checkpointer)], state)
    finally:
      checkpointer.close()  # waits for an asynchronous save in flight, even on an error
  return result


def record_start(workdir: epath.Path, config: ExperimentConfig, data_record: dict | None,
                 latest: int | None) -> None:
  """What a run records in its workdir once it has really started: data.json, config.json
  (the previous one kept in the history when settings changed, and said) and precision.json
  ("auto" resolves per machine: said when a resume computes in another precision)."""
  if data_record is not None:
    paths.write_atomic(workdir / workdir_lib.DATA_FILE, json.dumps(data_record, indent=1))
  changes = workdir_lib.record_config(workdir, config.to_json())
  # (At or past train.steps the loop's own line says that nothing is trained.)
  if changes and latest is not None and latest < config.train.steps:
    print(f"resuming step {latest} with changed settings ({'; '.join(changes)}): the run "
          f"continues with the new values; the previous config is kept in "
          f"{workdir / workdir_lib.HISTORY_FILE}", file=sys.stderr)
  note = workdir_lib.record_precision(
      workdir, machine_lib.precision_policy(config.model.matmul_dtype,
                                            config.model.activation_dtype),
      machine_lib.summary(machine_lib.describe()), latest or 0)
  if note:
    print(note, file=sys.stderr)


class PreemptionWatcher:
  """Turns SIGTERM and SIGINT (Ctrl-C) into a request to checkpoint and stop after the current
  step; a second Ctrl-C stops at once.

  With several processes, JAX's preemption sync point (through orbax) makes every process stop
  at the same step; alone, the signal handler is enough.
  """

  def __init__(self):
    self.requested = False
    self.signal = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = True
    self.signal = self.signal or signum

  def should_stop(self, step: int, checkpointer: ckpt_lib.Checkpointer) -> bool:
    return self.requested or checkpointer.reached_preemption(step)

  def close(self) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}


class MetricsWindow:
  """Per-step metrics kept on device and fetched once per log interval (the only host sync).
  A program of K seeds gives each step's metrics a leading seed axis; `program.seed_metrics`
  takes one seed's out."""

  def __init__(self, num_runs: int = 1):
    self.pending: list[tuple[int, dict]] = []
    self.started = time.perf_counter()
    self.skipped = [0] * num_runs  # non-finite steps skipped so far, per run

  def add(self, step: int, metrics: dict) -> None:
    self.pending.append((step, metrics))

  def flush(self, program, runs: list[Run], stop_on_nonfinite: bool):
    """([(summed metrics, last step's metrics)] per run, steps, seconds) of the window; raises
    on a non-finite step if asked."""
    fetched = jax.device_get([m for _, m in self.pending])
    steps = [s for s, _ in self.pending]
    elapsed = time.perf_counter() - self.started
    self.pending, self.started = [], time.perf_counter()
    per_run = []
    for i, run in enumerate(runs):
      mine = [program.seed_metrics(m, i) for m in fetched]
      for step, m in zip(steps, mine):
        if m["nonfinite"] and stop_on_nonfinite:
          latest = run.checkpointer.latest_step()
          kept = (f"the latest checkpoint (step {latest}) is intact" if latest is not None
                  else "no checkpoint had been written")
          seed = f" of seed {run.exp.config.train.seed}" if len(runs) > 1 else ""
          raise FloatingPointError(
              f"non-finite loss or gradient at step {step}{seed}; stopped, {kept}. Lower the "
              "learning rate, or set --config.train.nonfinite=skip to skip such steps")
      self.skipped[i] += int(sum(m["nonfinite"] for m in mine))
      sums = None
      for m in mine:
        sums = metrics_lib.add_sums(sums, {k: v for k, v in m.items() if k.endswith("_sum")})
      per_run.append((sums, mine[-1]))
    return per_run, len(steps), elapsed


@dataclasses.dataclass
class Run:
  """One run's share of the training loop: its experiment, its checkpointable iterator of
  training batches, its checkpoints and its workdir (metrics.jsonl, TensorBoard)."""
  exp: Experiment
  workdir: epath.Path
  batches: Iterator
  checkpointer: ckpt_lib.Checkpointer


class OneRun:
  """The program of one run: make_step_fns' jitted step and evaluation, called as the loop
  calls a program of several seeds (research/multiseed.py's SeedProgram): a batch per run in,
  metrics, states and evaluations per run out."""

  def __init__(self, exp: Experiment):
    self.exp = exp
    self.step_fn, self.eval_fn = make_step_fns(exp)

  def advance(self, state: TrainState, local_batches: list[dict]) -> tuple[TrainState, dict]:
    (local_batch,) = local_batches
    return self.step_fn(state, sharding.shard_batch(local_batch, self.exp.mesh,
                                                     self.exp.config.rules))

  def seed_metrics(self, metrics: dict, index: int) -> dict:
    del index
    return metrics

  def states(self, state: TrainState) -> list[TrainState]:
    return [state]

  def evaluations(self, params: Any, max_batches: int) -> list[dict[str, Any]]:
    return [evaluate_split(self.exp, self.eval_fn, params, max_batches)]


def _eval_line(final: dict[str, Any]) -> str:
  return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in final.items())


def train_loop(program, runs: list[Run], state: TrainState) -> list[dict[str, Any]]:
  """Trains `state` from its step to train.steps, logging, checkpointing and evaluating each run
  as research.train does; returns each run's final evaluation. One run (OneRun), or K seeds of
  one config whose states `program` stacks (research/multiseed.py): the same loop."""
  cfg = runs[0].exp.config
  num_runs = len(runs)
  total_steps = cfg.train.steps
  start = int(np.asarray(jax.device_get(state.step)).flat[0])
  # Each writer drops the records after `start` that a run stopped before its checkpoint wrote.
  writers = [metrics_lib.MetricWriter(run.workdir, start_step=start) for run in runs]
  tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
  # Model FLOPs utilisation: analytic FLOPs of a step over the peak (measured once on CPUs).
  flops_per_step = flops_lib.training_flops_per_step(
      cfg, getattr(runs[0].exp.data, "row_lengths", None))
  peak_flops, _ = flops_lib.peak_flops(cfg)
  schedule = learning_rate_schedule(cfg)
  stop_on_nonfinite = cfg.train.nonfinite == "stop"
  bar = _progress(total_steps, start)
  window = MetricsWindow(num_runs)
  preemption = PreemptionWatcher()
  several = num_runs > 1
  finals: list[dict[str, Any]] = [{} for _ in runs]
  if start >= total_steps:
    print(f"{f'the {num_runs} seeds are' if several else 'the run is'} at step {start}, "
          f"train.steps={total_steps}: nothing to train; evaluating the checkpoint"
          f"{'s' if several else ''} (raise train.steps to train on)", file=sys.stderr)
    finals = program.evaluations(state.params, cfg.train.eval_batches)
  done = start
  try:
    for step in range(start, total_steps):
      state, step_metrics = program.advance(state, [next(run.batches) for run in runs])
      done = step + 1
      window.add(done, step_metrics)
      preempted = preemption.should_stop(done, runs[0].checkpointer)
      save = done % cfg.train.checkpoint_every == 0 or done == total_steps or preempted
      if done % cfg.train.log_every == 0 or save:  # a checkpoint follows only checked steps
        per_run, n, elapsed = window.flush(program, runs, stop_on_nonfinite)
        for i, ((sums, last), writer) in enumerate(zip(per_run, writers)):
          scalars = metrics_lib.summarize(sums, prefix="train/")
          # Throughput counts this run's tokens; with K seeds a program does K times as many.
          scalars.update({"train/grad_norm": float(last["grad_norm"]),
                          "train/learning_rate": float(schedule(step)),
                          "train/skipped_steps": window.skipped[i],
                          "train/tokens_per_second": n * tokens_per_step / elapsed,
                          "train/steps_per_second": n / elapsed,
                          "train/model_flops_per_second": n * flops_per_step / elapsed,
                          "train/mfu": n * flops_per_step / elapsed / peak_flops})
          if several:
            scalars["train/seeds_per_program"] = num_runs
          writer.write(done, scalars)
        bar.set_postfix(loss=f"{scalars.get('train/loss', float('nan')):.4f}",
                        tok_s=f"{scalars['train/tokens_per_second']:,.0f}",
                        **({"seeds": num_runs} if several else {}), refresh=False)
      bar.update(1)
      if save:  # before the evaluation: a failing evaluation never costs the step's checkpoint
        for run, one in zip(runs, program.states(state)):
          run.checkpointer.save(done, one, run.batches, run.exp.config.to_dict(), force=True)
      if (cfg.train.eval_every and done % cfg.train.eval_every == 0) or done == total_steps:
        finals = program.evaluations(state.params, cfg.train.eval_batches)
        for writer, final in zip(writers, finals):
          writer.write(done, {k: v for k, v in final.items() if isinstance(v, (int, float))})
        bar.write(f"step {done}: " + "; ".join(
            (f"seed {run.exp.config.train.seed}: " if several else "") + _eval_line(final)
            for run, final in zip(runs, finals)))
        window.started = time.perf_counter()  # evaluation time is not training throughput
      if preempted:
        for run in runs:
          run.checkpointer.wait()
        bar.write(f"{'interrupted' if preemption.signal == signal.SIGINT else 'preempted'}: "
                  f"checkpoint{'s' if several else ''} of step {done} written; rerun the same "
                  "command to continue")
        if preemption.signal == signal.SIGINT:
          raise cli.Interrupted
        break
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
    # A log write found the disk full (often filled by a checkpoint saving in the background):
    # one line naming the save that failed, or the step, and the last complete checkpoint.
    raise runs[0].checkpointer.disk_full(e, done) from None
  finally:
    failing = sys.exc_info()[1]
    preemption.close()
    bar.close()
    for writer in writers:
      try:
        writer.close()
      except OSError:
        if failing is None:
          raise
        # The loop's own error says what went wrong (a full disk fails the last flush too).
  return finals


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def main(argv) -> None:
  cli.quiet_logs()
  cli.reject_positional_args(argv)
  flags_ = flags.FLAGS

  def body():
    notes = []  # entries derived from the rest of the config, a line each
    config = ExperimentConfig.from_config_dict(flags_.config, notes)  # before any device work
    for note in notes:
      print(note, file=sys.stderr)
    cli.initialize_distributed(flags_.coordinator_address, flags_.num_processes,
                               flags_.process_id, flags_.distributed)
    train_and_evaluate(config, flags_.workdir,
                       overrides=config_flags.get_override_values(flags_["config"]))

  cli.run_cli(body)


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config()).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the tokenizer.")
  flags.DEFINE_string("coordinator_address", "", "host:port of process 0, to run as one of "
                      "--num_processes processes (jax.distributed).")
  flags.DEFINE_integer("num_processes", 1, "Processes in the run (with --coordinator_address).")
  flags.DEFINE_integer("process_id", 0, "This process's index (with --coordinator_address).")
  flags.DEFINE_bool("distributed", False, "Join a multi-process run found by JAX itself (TPU "
                    "pod slices, SLURM).")
  flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
