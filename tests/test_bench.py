"""research.bench and experiments/accelerator_benchmark.py on shrunk configs: the figures are
all there and sane (the speeds themselves are benchmarks, not tests)."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from research import bench, flops, models
from research.config import ConfigError, ExperimentConfig, load_config_file
from research.paths import REPO_ROOT
from xla_flags import cli_env
from tests import cli

SHRINK = {"model.num_layers": 1, "model.num_decoder_layers": 1, "model.embed_dim": 32,
          "model.mlp_dim": 64, "model.num_heads": 2, "model.max_len": 32, "data.seq_len": 32,
          "data.batch_size": 8}


def run_module(*args):
  return cli.run(args[0], args[1:], env=cli_env(), timeout=300)


def test_bench_cli_prints_a_table_and_writes_json(tmp_path):
  out = tmp_path / "bench.json"
  result = run_module("research.bench", "--config=configs/gpt_shakespeare_char.py",
                      *[f"--config.{k}={v}" for k, v in SHRINK.items()], "--steps=4",
                      "--warmup=1", "--decode_tokens=16", "--pipeline_batches=5",
                      f"--workdir={tmp_path / 'work'}", f"--out={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  for row in ("step time", "tokens/s", "MFU", "memory/device", "input pipeline", "decode"):
    assert row in result.stdout
  r = json.loads(out.read_text())
  # The figures are the shrunk config's, derived from one another as the table states them
  # (how fast they are is a benchmark's business: benchmarks/kv_cache_speed.py and the like).
  train = r["train"]
  step = train["step_ms"]
  assert 0 < step["p10"] <= step["median"] <= step["p90"]
  assert train["steps"] == 4 and train["warmup"] == 1
  batch, seq = SHRINK["data.batch_size"], SHRINK["data.seq_len"]
  seconds = step["median"] / 1e3
  assert train["tokens_per_s"] == pytest.approx(batch * seq / seconds)
  assert r["pipeline"]["step_examples_per_s"] == pytest.approx(batch / seconds)
  ran = ExperimentConfig.from_config_dict(r["config"])
  assert (ran.model.num_layers, ran.model.embed_dim, ran.data.batch_size) == (1, 32, batch)
  analytic = flops.training_flops_per_step(ran)  # tests/test_flops.py: within 10% of XLA's
  assert train["flops_per_step"] == pytest.approx(analytic)
  assert train["model_flops_per_s"] == pytest.approx(analytic / seconds)
  assert np.isfinite(train["final_loss"])
  assert train["memory_per_device"]["argument"] > 4 * r["parameters"]  # params + Adam moments
  assert r["peaks"]["published"] is None and r["mfu"]["vs_published"] is None  # a CPU
  # Timed before and after the step; the faster is the peak, and MFU is against it.
  assert r["peaks"]["measured_float32"] == max(r["peaks"]["measured_float32_timings"])
  assert len(r["peaks"]["measured_float32_timings"]) == 2
  assert r["mfu"]["vs_measured_float32"] == pytest.approx(
      train["model_flops_per_s"] / r["peaks"]["measured_float32"])
  assert r["pipeline"]["headroom"] == pytest.approx(
      r["pipeline"]["examples_per_s"] / r["pipeline"]["step_examples_per_s"])
  d = r["decode"]
  assert d["family"] == "decoder" and d["new_tokens"] == 16
  assert d["speedup"] == pytest.approx(d["cached_tokens_per_s"] / d["recompute_tokens_per_s"])
  assert d["same_tokens"] == 1.0  # the cache and the recomputation agree


def test_encoder_decoder_decoding_with_and_without_cache_agree():
  config = load_config_file(str(REPO_ROOT / "configs/t5_shakespeare_span.py"))
  for key, value in {**SHRINK, "model.vocab_size": 48}.items():
    section, name = key.split(".")
    config[section][name] = value
  config = ExperimentConfig.from_config_dict(config)
  model = models.build_model(config.model)
  shapes = nn.unbox(jax.eval_shape(lambda: model.init(
      jax.random.key(0), *models.dummy_inputs(config.model, 8))["params"]))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: 0.5 * rng.standard_normal(s.shape).astype(s.dtype), shapes)
  # 40 new tokens: longer than max_len=32, which the benchmark raises for the cache.
  d = bench.bench_decode(config, params, new_tokens=40, batch_size=2, repeats=1)
  assert d["family"] == "encoder_decoder" and d["max_len"] == 40 and d["input_len"] == 32
  assert d["speedup"] == pytest.approx(d["cached_tokens_per_s"] / d["recompute_tokens_per_s"])
  assert d["same_tokens"] == 1.0


def test_the_peak_is_the_fastest_of_its_timings_and_a_spread_is_flagged():
  config = ExperimentConfig.from_config_dict({})
  slow_phase = {"float32": 27e9, "bfloat16": 20e9}
  quiet = {"float32": 70e9, "bfloat16": 43e9}
  peak = bench.peaks(config, slow_phase, quiet)
  assert peak["measured_float32"] == 70e9 and peak["measured_bfloat16"] == 43e9
  assert peak["measured_float32_timings"] == [27e9, 70e9]
  assert bench.peak_spread(peak) == pytest.approx(70 / 27)
  assert bench.peak_spread(bench.peaks(config, quiet, quiet)) == 1.0
  measured = bench.peaks(config)  # timed now when no timing is given
  assert len(measured["measured_float32_timings"]) == 1 and measured["measured_float32"] > 1e8


def test_bench_refuses_what_it_cannot_run():
  config = ExperimentConfig.from_config_dict({"model": {"vocab_size": 0}})
  with pytest.raises(ConfigError, match="vocab_size"):
    bench.synthetic_experiment(config)
  with pytest.raises(ConfigError, match="skip"):
    bench.run(config, skip=("train",))


def test_accelerator_benchmark_runs_tiny_on_cpu(tmp_path):
  out = tmp_path / "accelerator.json"
  # One family keeps the test short; the encoder-decoder step is benchmarked above.
  result = run_module("experiments.accelerator_benchmark", "--tiny", "--families=decoder",
                      f"--out={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(out.read_text())
  assert [r["family"] for r in rows] == ["decoder"]
  for r in rows:
    seconds = r["step_ms"]["median"] / 1e3
    # A decoder's tokens are its input positions: batch x input_len per step.
    assert r["tokens_per_s"] == pytest.approx(r["batch_size"] * r["input_len"] / seconds)
    assert r["mfu"] == pytest.approx(r["model_flops_per_s"] / r["peak_flops"])
    assert r["peak_source"] == "measured bf16 matmul" and np.isfinite(r["final_loss"])
  assert "MFU" in result.stdout
