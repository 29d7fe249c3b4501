"""research.multiseed: K seeds of one config, trained as one vmapped program, train exactly as
K research.train runs of those seeds, and leave workdirs that read as theirs."""

import dataclasses
import json
import pathlib
import types

import jax
import numpy as np
import pytest

from research import bench, multiseed, train
from research.config import ConfigError, ExperimentConfig, load_config_file
from research.paths import REPO_ROOT
from research.train_state import state_initializer

ARMS = {"decoder": "experiments/ablation/decoder_lm.py",
        "encoder_decoder": "experiments/ablation/encdec_span.py"}
# The ablation's arms, shrunk; dropout on, so that each seed's dropout keys are checked too.
SHRINK = {"model.num_layers": 1, "model.num_decoder_layers": 1, "model.embed_dim": 32,
          "model.mlp_dim": 64, "model.num_heads": 2, "model.max_len": 32, "model.dropout_rate": 0.1,
          "data.seq_len": 32, "data.batch_size": 8, "train.log_every": 1, "train.eval_batches": 2,
          "train.eval_every": 0, "train.checkpoint_every": 2, "optimizer.warmup_steps": 1,
          "optimizer.decay_steps": 8}
SEEDS = (0, 1)
STEPS = 4


def tiny_config(arm: str, steps: int = STEPS, **overrides) -> ExperimentConfig:
  config = load_config_file(str(REPO_ROOT / ARMS[arm]))
  for key, value in {**SHRINK, "train.steps": steps, **overrides}.items():
    *section, name = key.split(".")
    (config[section[0]] if section else config)[name] = value
  return ExperimentConfig.from_config_dict(config)


def records(workdir) -> list[dict]:
  return [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def train_losses(workdir) -> dict[int, float]:
  return {r["step"]: r["train/loss"] for r in records(workdir) if "train/loss" in r}


@pytest.fixture(scope="module", params=[
    "decoder", pytest.param("encoder_decoder", marks=pytest.mark.slow)])
def runs(request, tmp_path_factory):
  """Two seeds trained in one program, and each trained alone by research.train."""
  root = tmp_path_factory.mktemp(request.param)
  config = tiny_config(request.param)
  together = [root / f"together{s}" for s in SEEDS]
  alone = [root / f"alone{s}" for s in SEEDS]
  results = multiseed.train_and_evaluate(config, SEEDS, together)
  alone_results = [train.train_and_evaluate(multiseed.seed_config(config, s), w)
                   for s, w in zip(SEEDS, alone)]
  return types.SimpleNamespace(arm=request.param, config=config, together=together, alone=alone,
                               results=results, alone_results=alone_results)


def test_each_seed_trains_as_it_would_alone(runs):
  for together, alone in zip(runs.together, runs.alone):
    a, b = train_losses(together), train_losses(alone)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([a[s] for s in sorted(a)], [b[s] for s in sorted(b)], rtol=1e-5)
  # The seeds are really different runs (initialisation, data order, noise).
  assert train_losses(runs.together[0])[1] != train_losses(runs.together[1])[1]
  for got, want in zip(runs.results, runs.alone_results):
    assert sorted(got) == sorted(want)
    np.testing.assert_allclose([got[k] for k in sorted(got)], [want[k] for k in sorted(want)],
                               rtol=1e-5)


def test_each_workdir_reads_as_a_research_train_run(runs):
  for together, alone in zip(runs.together, runs.alone):
    names = lambda w: sorted(p.name for p in pathlib.Path(w).iterdir() if p.name != ".lock")
    assert names(together) == names(alone)
    assert (together / "config.json").read_text() == (alone / "config.json").read_text()
    assert sorted(p.name for p in (together / "checkpoints").iterdir()) == ["2", "4"]
    config, _, params = train.restore_params(together)
    assert config == train.load_experiment_config(alone)
    _, _, want = train.restore_params(alone)
    # Adam divides by the root of tiny second moments: float rounding shows at ~1e-6.
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5),
                 params, want)


# init_from reads a workdir with train.restore_params, which the test above checks; this runs it.
@pytest.mark.slow
def test_fine_tuning_starts_from_a_seed_workdir(runs, tmp_path, capfd):
  if runs.arm != "decoder":
    pytest.skip("one family is enough: init_from reads the workdir as research.train's")
  config = dataclasses.replace(tiny_config("decoder", steps=1, **{"train.eval_batches": 1}),
                               init_from=str(runs.together[1]))
  result = train.train_and_evaluate(config, tmp_path / "finetune")
  assert np.isfinite(result["eval/loss"])
  assert f"initialised from {runs.together[1]}" in capfd.readouterr().err


@pytest.mark.slow
def test_a_stopped_program_resumes_every_seed(runs, tmp_path):
  workdirs = [tmp_path / f"seed{s}" for s in SEEDS]
  multiseed.train_and_evaluate(tiny_config(runs.arm, steps=2), SEEDS, workdirs)
  multiseed.train_and_evaluate(tiny_config(runs.arm, steps=STEPS), SEEDS, workdirs)
  for resumed, alone in zip(workdirs, runs.alone):
    a, b = train_losses(resumed), train_losses(alone)
    np.testing.assert_allclose([a[s] for s in range(1, STEPS + 1)],
                               [b[s] for s in range(1, STEPS + 1)], rtol=1e-5)


def test_init_stack_and_unstack_are_each_seeds_own_bit_for_bit():
  config = tiny_config("decoder", **{"model.vocab_size": 70})
  exp = bench.synthetic_experiment(config)
  program = multiseed.build_program(exp, len(SEEDS))
  with jax.set_mesh(exp.mesh):
    init = state_initializer(exp.model, exp.tx, exp.config, exp.shardings)
    states = [init(jax.random.key(s)) for s in SEEDS]
    back = program.unstack(program.stack(states))
    alone = train.create_state(exp.model, exp.tx, config, exp.shardings, jax.random.key(SEEDS[1]))
  same = lambda a, b: jax.tree.map(np.testing.assert_array_equal, jax.device_get(a),
                                   jax.device_get(b))
  same(states[1], alone)
  for got, want in zip(back, states):
    same(got, want)
    assert jax.tree.map(lambda x: x.sharding, got) == exp.shardings


@pytest.mark.parametrize("overrides, seeds, match", [
    ({"mesh.fsdp": 2}, SEEDS, "replicates parameters"),
    ({"task.name": "sst2"}, SEEDS, "from scratch only"),
    ({"init_from": "/somewhere"}, SEEDS, "from scratch only"),
    ({}, (3, 3), "repeat a seed"),
    ({}, (0,), "one workdir per seed"),
])
def test_what_it_does_not_do_is_refused_in_one_line(tmp_path, overrides, seeds, match):
  config = tiny_config("decoder", **overrides)
  with pytest.raises(ConfigError, match=match):
    multiseed.train_and_evaluate(config, seeds, [tmp_path / "a", tmp_path / "b"])
  assert not (tmp_path / "a").exists()


def test_configs_of_one_seed_each_split_into_the_shared_config_and_seeds():
  config = tiny_config("decoder")
  configs = [multiseed.seed_config(config, s) for s in (3, 5)]
  shared, seeds = multiseed.split_seeds(configs)
  assert seeds == [3, 5] and [multiseed.seed_config(shared, s) for s in seeds] == configs
  other = tiny_config("decoder", **{"optimizer.learning_rate": 1e-3})
  with pytest.raises(ConfigError, match="differ beyond"):
    multiseed.split_seeds([configs[0], multiseed.seed_config(other, 5)])
