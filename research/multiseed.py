"""Several seeds of one config trained as one compiled program.

  results = multiseed.train_and_evaluate(config, seeds=[0, 1, 2, 3],
                                         workdirs=["runs/s0", "runs/s1", "runs/s2", "runs/s3"])

Seed k trains `seed_config(config, seeds[k])` (train.seed and data.shuffle_seed set to the seed,
as the ablation runner sets them) exactly as `research.train.train_and_evaluate` would alone:
the same initialisation, data order, objective noise and dropout keys, so the same losses. The
K training states are stacked along a new leading axis and one `jax.vmap` of research.train's
`train_step` updates them all; on an accelerator that a small model leaves mostly idle, K seeds
cost little more than one. Evaluation is vmapped the same way. The loop around the step is
research.train's own (`train.train_loop`): the same schedule, metrics, checkpoints, evaluation,
preemption and non-finite handling, with a program that steps K seeds at once.

Each workdir receives what research.train writes for a run (tokenizer, data.json, config.json,
metrics.jsonl, TensorBoard events and orbax checkpoints of that seed alone), so fine-tuning
(`config.init_from=<workdir>`), `research.evaluate` and a plain `research.train` resume read it
as an ordinary run. Running the same call again resumes when every workdir's latest checkpoint
is at the same step. Throughput figures in a seed's metrics (tokens/s, MFU) count that seed's
tokens only; `train/seeds_per_program` says how many shared the program.

Not supported (refused with one ConfigError line): fine-tuning tasks (task.name), init_from,
several processes, and meshes with fsdp or tensor > 1 (parameters are replicated, each seed's
batch split over the data axis).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from research import checkpoint as ckpt_lib
from research import metrics as metrics_lib
from research import paths, sharding, train
from research import workdir as workdir_lib
from research.config import ConfigError, ExperimentConfig
from research.train_state import state_initializer


def seed_config(config: ExperimentConfig, seed: int) -> ExperimentConfig:
  """The config of one seed: initialisation, dropout and objective noise (train.seed) and
  data order (data.shuffle_seed)."""
  return dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed),
                             data=dataclasses.replace(config.data, shuffle_seed=seed))


def split_seeds(configs: Sequence[ExperimentConfig]) -> tuple[ExperimentConfig, list[int]]:
  """(the shared config, the seeds) of configs that differ only in their seed, each with
  data.shuffle_seed equal to train.seed (as seed_config makes them); ConfigError otherwise."""
  seeds = [c.train.seed for c in configs]
  if not configs or any(c != seed_config(configs[0], s) for c, s in zip(configs, seeds)):
    raise ConfigError("one program trains seeds of one config: these configs differ beyond "
                      "train.seed (with data.shuffle_seed equal to it); train them one by one")
  return configs[0], seeds


def check_supported(config: ExperimentConfig, seeds: Sequence[int],
                    workdirs: Sequence[Any]) -> None:
  """ConfigError (one line) for what several seeds per program does not do."""
  if not seeds or len(seeds) != len(workdirs):
    raise ConfigError(f"{len(seeds)} seeds and {len(workdirs)} workdirs: give one workdir per "
                      "seed, and at least one seed")
  if len(set(seeds)) != len(seeds):
    raise ConfigError(f"seeds {list(seeds)} repeat a seed; each seed trains once")
  if len({os.fspath(paths.workdir_path(w)) for w in workdirs}) != len(workdirs):
    raise ConfigError("two seeds share a workdir; give each seed its own")
  if config.task.name or config.init_from:
    raise ConfigError("several seeds per program trains pretraining objectives from scratch "
                      "only (no task.name, no init_from); fine-tune each seed with research.train")
  if jax.process_count() > 1:
    raise ConfigError("several seeds per program runs in one process; use research.train per "
                      "seed on several hosts")
  if config.mesh.fsdp != 1 or config.mesh.tensor != 1:
    raise ConfigError(f"several seeds per program replicates parameters (mesh.fsdp=1, "
                      f"mesh.tensor=1), not fsdp={config.mesh.fsdp}, tensor={config.mesh.tensor}")


# ---------------------------------------------------------------------------------------------
# The program: research.train's steps with a leading seed axis
# ---------------------------------------------------------------------------------------------


def _stacked(tree_of_shardings: Any) -> Any:
  """The same shardings with an unsharded leading (seed) axis."""
  return jax.tree.map(lambda s: NamedSharding(s.mesh, P(None, *s.spec)), tree_of_shardings)


@dataclasses.dataclass
class SeedProgram:
  """research.train's train and eval steps for `num_seeds` seeds of one experiment, vmapped over
  a leading seed axis of the state, the batch and the seeds (arrays of train.seed values).
  With `exps` (each seed's experiment) it is a program of train.train_loop, as train.OneRun
  is for one run."""

  exp: train.Experiment  # any one seed's: model, optimizer and shardings are every seed's
  num_seeds: int
  shardings: train.TrainState  # of the stacked state
  batch_sharding: NamedSharding  # of a stacked batch (seeds, batch, ...)
  seed_sharding: NamedSharding  # of per-seed values: the seeds, metrics
  step: Callable  # (state, batch, seeds) -> (state, metrics), state donated
  evaluate: Callable  # (params, batch) -> sums
  exps: Sequence[train.Experiment] = ()  # each seed's (its data and objective noise)

  @property
  def abstract_state(self) -> train.TrainState:
    """The stacked state as ShapeDtypeStructs carrying its shardings (to lower the step)."""
    add_axis = lambda x, s: jax.ShapeDtypeStruct((self.num_seeds,) + x.shape, x.dtype, sharding=s)
    return jax.tree.map(add_axis, self.exp.abstract_state, self.shardings)

  def stack(self, states: Sequence[train.TrainState]) -> train.TrainState:
    stack = jax.jit(lambda *s: jax.tree.map(lambda *x: jnp.stack(x), *s),
                    out_shardings=self.shardings)
    return stack(*states)

  def unstack(self, state: train.TrainState) -> list[train.TrainState]:
    """Each seed's state on research.train's shardings (what its checkpoint holds)."""
    split = jax.jit(lambda s: [jax.tree.map(lambda x, k=k: x[k], s) for k in range(self.num_seeds)],
                    out_shardings=[self.exp.shardings] * self.num_seeds)
    return split(state)

  def seed_array(self, seeds: Sequence[int]) -> jax.Array:
    """The `seeds` argument of `step`: each seed's train.seed."""
    return jax.device_put(np.asarray(seeds, np.int32), self.seed_sharding)

  def shard_batch(self, local_batches: Sequence[dict[str, np.ndarray]]) -> dict[str, jax.Array]:
    """Each seed's batch, stacked along a new leading axis and placed on the mesh."""
    return {k: jax.device_put(np.stack([b[k] for b in local_batches]), self.batch_sharding)
            for k in local_batches[0]}

  # What train.train_loop asks of a program.

  def advance(self, state: train.TrainState, local_batches: Sequence[dict]):
    seeds = self.seed_array([e.config.train.seed for e in self.exps])
    return self.step(state, self.shard_batch(local_batches), seeds)

  def seed_metrics(self, metrics: dict, index: int) -> dict:
    return {k: v[index] for k, v in metrics.items()}

  def states(self, state: train.TrainState) -> list[train.TrainState]:
    return self.unstack(state)

  def evaluations(self, params: Any, max_batches: int) -> list[dict[str, Any]]:
    return evaluate_seeds(self, self.exps, params, max_batches)


def build_program(exp: train.Experiment, num_seeds: int,
                  exps: Sequence[train.Experiment] = ()) -> SeedProgram:
  cfg = exp.config
  shardings = _stacked(exp.shardings)
  batch_sharding = _stacked(sharding.batch_sharding(exp.mesh, cfg.rules))
  per_seed = _stacked(sharding.replicated(exp.mesh))
  one_step = functools.partial(train.train_step, model=exp.model, tx=exp.tx,
                               loss_fn=exp.loss_fn, accum_steps=cfg.optimizer.grad_accum_steps,
                               skip_nonfinite=cfg.train.nonfinite == "skip")

  def step(state, batch, seed):
    # The dropout keys research.train.make_step_fns gives a run of this seed.
    return one_step(state, batch, base_rng=jax.random.key(seed + 1))

  step_fn = jax.jit(jax.vmap(step), in_shardings=(shardings, batch_sharding, per_seed),
                    out_shardings=(shardings, per_seed), donate_argnums=(0,))
  eval_fn = jax.jit(jax.vmap(functools.partial(train.eval_step, model=exp.model,
                                               loss_fn=exp.loss_fn)),
                    in_shardings=(shardings.params, batch_sharding), out_shardings=per_seed)
  return SeedProgram(exp, num_seeds, shardings, batch_sharding, per_seed, step_fn, eval_fn,
                     tuple(exps))


def evaluate_seeds(program: SeedProgram, exps: Sequence[train.Experiment], params: Any,
                   max_batches: int = 0) -> list[dict[str, Any]]:
  """research.train.evaluate_split's loss/perplexity/accuracy for every seed: each seed's own
  evaluation batches (its objective noise), one vmapped call per batch."""
  totals = [None] * len(exps)
  for local_batches in zip(*(e.eval_batches(max_batches) for e in exps), strict=True):
    sums = jax.device_get(program.evaluate(params, program.shard_batch(local_batches)))
    totals = [metrics_lib.add_sums(t, {k: v[i] for k, v in sums.items()})
              for i, t in enumerate(totals)]
  return [metrics_lib.summarize(t or {}, prefix="eval/") for t in totals]


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def train_and_evaluate(config: ExperimentConfig, seeds: Sequence[int],
                       workdirs: Sequence[str | os.PathLike]) -> list[dict[str, float]]:
  """Trains (or resumes) seed k of `config` in workdirs[k], all seeds in one program; returns
  each seed's final evaluation metrics, as research.train.train_and_evaluate returns a run's."""
  check_supported(config, seeds, workdirs)
  dirs = [paths.workdir_path(w) for w in workdirs]
  for workdir in dirs:
    paths.check_bucket(workdir)
    workdir_lib.check_writable(workdir)
  undos = [workdir_lib.FailedStartUndo(w) for w in dirs]
  with contextlib.ExitStack() as locks:
    for workdir in dirs:
      workdir.mkdir(parents=True, exist_ok=True)
      locks.enter_context(workdir_lib.lock(workdir, "research.multiseed"))
    try:
      return _start_and_train([seed_config(config, s) for s in seeds], dirs, undos)
    except BaseException:
      for undo in undos:
        undo.undo()
      raise


def _start_and_train(configs: list[ExperimentConfig], dirs: list,
                     undos: list[workdir_lib.FailedStartUndo]) -> list[dict[str, float]]:
  exps, records = [], []
  for config, workdir in zip(configs, dirs):  # research.train's checks and data, per seed
    train.check_resumable(workdir, config, sections=("model",), ignore=("vocab_size",))
    records.append(workdir_lib.check_data(workdir, config))
    exps.append(train.build_experiment(config, workdir))
    train.check_resumable(workdir, exps[-1].config)
  same = lambda e: seed_config(e.config, 0).to_json()
  if len({same(e) for e in exps}) != 1:  # e.g. a tokenizer another seed's workdir already held
    raise ConfigError("the seeds' resolved configs differ beyond their seeds; use new workdirs")
  cfg = exps[0].config
  checkpointers = [ckpt_lib.Checkpointer(w, keep=cfg.train.keep_checkpoints,
                                         async_save=cfg.train.async_checkpoints) for w in dirs]
  try:
    iters = [iter(e.train_batches()) for e in exps]
    latest = _common_latest_step(checkpointers)
    program = build_program(exps[0], len(exps), exps)
    with jax.set_mesh(exps[0].mesh), nn.logical_axis_rules(cfg.rules):
      if latest is None:
        # One compiled init called with each seed's key: each seed's research.train init.
        exp = exps[0]
        init = state_initializer(exp.model, exp.tx, exp.config, exp.shardings)
        states = [init(jax.random.key(e.config.train.seed)) for e in exps]
      else:
        target = ckpt_lib.abstract_like(exps[0].abstract_state, exps[0].shardings)
        states = [c.restore(latest, target, it) for c, it in zip(checkpointers, iters)]
        print(f"resumed {len(exps)} seeds from step {latest}", file=sys.stderr)
      state = program.stack(states)
      del states
      for exp, workdir, record, undo in zip(exps, dirs, records, undos):
        train.record_start(workdir, exp.config, record, latest)
        undo.started()
      runs = [train.Run(e, w, it, c) for e, w, it, c in zip(exps, dirs, iters, checkpointers)]
      return train.train_loop(program, runs, state)
  finally:
    for checkpointer in checkpointers:
      checkpointer.close()


def _common_latest_step(checkpointers: list[ckpt_lib.Checkpointer]) -> int | None:
  steps = {c.latest_step() for c in checkpointers}
  if len(steps) > 1 and _drop_a_round_cut_short(checkpointers):
    steps = {c.latest_step() for c in checkpointers}
  if len(steps) > 1:
    found = ", ".join(f"{c.directory.parent}: {c.latest_step()}" for c in checkpointers)
    raise ConfigError(f"the seeds' workdirs hold checkpoints of different steps ({found}); "
                      "resume them with research.train one by one, or use new workdirs")
  return steps.pop()


def _drop_a_round_cut_short(checkpointers: list[ckpt_lib.Checkpointer]) -> bool:
  """The seeds save one after another: a run stopped among them (a second Ctrl-C, a kill)
  leaves the newest step in some workdirs only. That step is deleted, with a note, so every
  seed resumes from the last step all of them hold (training it again gives the same bytes).
  Returns False, deleting nothing, for any other difference."""
  held = [set(c.all_steps()) for c in checkpointers]
  common = set.intersection(*held)
  last = max(common) if common else -1
  newer = {s for s in set().union(*held) if s > last}  # (older ones differ by garbage collection)
  if len(newer) != 1:
    return False
  (cut,) = newer
  for checkpointer, steps in zip(checkpointers, held):
    if cut in steps:
      checkpointer.delete(cut)
  resumed = f"step {last}" if common else "the start"
  print(f"note: the save of step {cut} was cut short among the seeds (some workdirs hold it, "
        f"others not); deleted it where it was, and every seed resumes from {resumed}",
        file=sys.stderr)
  return True
