"""Training-step speed of ~125M, ~350M and ~1B models on one GPU or TPU host, in bfloat16.

  python -m experiments.accelerator_benchmark [--sizes=125m,350m,1b] \
      [--families=decoder,encoder_decoder] [--steps=20] [--batch_size=0] [--out=FILE.json]
  python -m experiments.accelerator_benchmark --tiny     # tiny shapes: any CPU, in seconds

For each family and size: research.train's step on random token batches (no dataset needed),
data-parallel over every local device, with the mixed-precision policy float32 master weights,
bfloat16 activations and bfloat16 matmul operands (float32 accumulation), and attention through
jax.nn.dot_product_attention with model.attention="auto" (cuDNN's fused kernel on a GPU, XLA's
elsewhere). Prints compile time, step time (median of --steps), tokens/s, model TFLOP/s and MFU
against the chip's published bf16 peak (research/flops.py; on a CPU, against a bf16 matmul
measured in this process).

  family           size   layers    width  heads  mlp    tokens per row     parameters
  decoder          125m   12        768    12     3072   1024               111M
  decoder          350m   24        1024   16     4096   1024               337M
  decoder          1b     20        2048   16     8192   1024               1.08B
  encoder_decoder  125m   6 + 6     768    12     3072   512 in, 104 out    149M
  encoder_decoder  350m   10 + 10   1024   16     4096   512 in, 104 out    361M
  encoder_decoder  1b     8 + 8     2048   16     8192   512 in, 104 out    1.07B
(32768-token vocabulary; tied embeddings in decoders, an untied LM head in encoder-decoders.)
Decoders are GPT-2 style (learned positions, LayerNorm, GELU, biases); encoder-decoders are
T5 style (relative position bias, RMSNorm, GELU, no biases), trained with span corruption.
"""

from __future__ import annotations

import json
import pathlib
import sys

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=wrong-import-position

from research import bench, cli, flops, models, train  # pylint: disable=wrong-import-position
from research.config import ConfigError, ExperimentConfig  # pylint: disable=wrong-import-position

VOCAB = 32768
SHAPES = {  # (encoder/decoder layers, decoder layers, width, heads, mlp)
    "decoder": {"125m": (12, 0, 768, 12, 3072), "350m": (24, 0, 1024, 16, 4096),
                "1b": (20, 0, 2048, 16, 8192)},
    "encoder_decoder": {"125m": (6, 6, 768, 12, 3072), "350m": (10, 10, 1024, 16, 4096),
                        "1b": (8, 8, 2048, 16, 8192)},
}
TINY_SHAPE = (1, 1, 64, 4, 128)
FAMILY_STYLE = {
    "decoder": dict(position="learned", norm="layernorm", mlp_activation="gelu", use_bias=True,
                    tie_embeddings=True),
    "encoder_decoder": dict(position="relative", norm="rmsnorm", mlp_activation="gelu_tanh",
                            use_bias=False, tie_embeddings=False),
}
SEQ_LEN = {"decoder": 1024, "encoder_decoder": 512}


def make_config(family: str, size: str, *, tiny: bool = False, batch_size: int = 0,
                scan_layers: bool = False, remat: str = "none",
                precision: str = "bfloat16") -> ExperimentConfig:
  """The benchmark config of one family and size (tiny: a few-second CPU stand-in)."""
  layers, decoder_layers, width, heads, mlp = TINY_SHAPE if tiny else SHAPES[family][size]
  seq_len = 32 if tiny else SEQ_LEN[family]
  per_device = 2 if tiny else 8
  activation = "bfloat16" if precision == "bfloat16" else "float32"
  return ExperimentConfig.from_config_dict({
      "model": dict(family=family, vocab_size=512 if tiny else VOCAB, num_layers=layers,
                    num_decoder_layers=decoder_layers, num_heads=heads, embed_dim=width,
                    mlp_dim=mlp, max_len=seq_len, dropout_rate=0.0, param_dtype="float32",
                    activation_dtype=activation, matmul_dtype=precision,
                    scan_layers=scan_layers, remat=remat, attention="auto",
                    **FAMILY_STYLE[family]),
      "objective": dict(name=models.FAMILIES[family].objective),
      "data": dict(seq_len=seq_len, batch_size=batch_size or per_device * jax.device_count()),
      "optimizer": dict(learning_rate=1e-4, warmup_steps=10),
      "mesh": dict(data=-1, fsdp=1, tensor=1),
  })


def benchmark(config: ExperimentConfig, steps: int, warmup: int) -> dict:
  exp = bench.synthetic_experiment(config)
  batches = [bench.synthetic_batch(config, seed) for seed in range(2)]
  before = bench.measure_peaks()
  step = bench.bench_train_step(exp, batches, steps, warmup)
  step.pop("state")
  peak = bench.peaks(config, before, bench.measure_peaks())
  if peak["published"]:
    reference, source = peak["published"], "published"
  else:
    reference, source = peak["measured_bfloat16"] * jax.process_count(), "measured bf16 matmul"
  return {
      "family": config.model.family,
      "parameters": models.parameter_count(exp.abstract_state.params),
      "input_len": flops.sequence_lengths(config)[0],
      "target_len": flops.sequence_lengths(config)[1],
      "batch_size": config.data.batch_size, "devices": jax.device_count(),
      "device_kind": jax.devices()[0].device_kind,
      "compile_s": step["compile_s"], "step_ms": step["step_ms"],
      "tokens_per_s": step["tokens_per_s"], "model_flops_per_s": step["model_flops_per_s"],
      "peak_flops": reference, "peak_source": source,
      "mfu": step["model_flops_per_s"] / reference,
      "memory_per_device": step["memory_per_device"], "final_loss": step["final_loss"],
  }


def format_rows(results: list[dict]) -> str:
  header = (f"{'family':<16} {'size':<6} {'params':>8} {'batch':>6} {'compile s':>9} "
            f"{'step ms':>9} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6}")
  lines = [header, "-" * len(header)]
  for r in results:
    lines.append(f"{r['family']:<16} {r['size']:<6} {r['parameters'] / 1e6:>7.0f}M "
                 f"{r['batch_size']:>6} {r['compile_s']:>9.1f} {r['step_ms']['median']:>9.1f} "
                 f"{r['tokens_per_s']:>10,.0f} {r['model_flops_per_s'] / 1e12:>8.2f} "
                 f"{100 * r['mfu']:>5.1f}%")
  if results:
    lines.append(f"MFU against: {results[0]['peak_source']} peak "
                 f"{results[0]['peak_flops'] / 1e12:.1f} TFLOP/s ({results[0]['devices']} x "
                 f"{results[0]['device_kind']})")
  return "\n".join(lines)


def main(argv) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  cli.quiet_logs()
  cli.reject_positional_args(argv)
  f = flags.FLAGS

  def body():
    families = f.families
    for family in families:
      if family not in SHAPES:
        raise ConfigError(f"--families: {family!r} is not one of {sorted(SHAPES)}")
    sizes = ["tiny"] if f.tiny else f.sizes
    for size in sizes:
      if not f.tiny and size not in SHAPES["decoder"]:
        raise ConfigError(f"--sizes: {size!r} is not one of {sorted(SHAPES['decoder'])}")
    steps, warmup = (f.steps or 3, 1) if f.tiny else (f.steps or 20, 3)
    results = []
    for family in families:
      for size in sizes:
        config = make_config(family, size, tiny=f.tiny, batch_size=f.batch_size,
                             scan_layers=f.scan_layers, remat=f.remat, precision=f.precision)
        result = benchmark(config, steps, warmup)
        result["size"] = size
        results.append(result)
        print(f"{family} {size}: {result['step_ms']['median']:.1f} ms/step, "
              f"MFU {100 * result['mfu']:.1f}%", file=sys.stderr)
    print(format_rows(results))
    if f.out:
      pathlib.Path(f.out).write_text(json.dumps(results, indent=2, default=float) + "\n")

  cli.run_cli(body)


def define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_list("sizes", ["125m", "350m", "1b"], "Model sizes to run.")
  flags.DEFINE_list("families", ["decoder", "encoder_decoder"], "Families to run.")
  flags.DEFINE_bool("tiny", False, "Tiny shapes and a few steps (runs on a CPU in seconds).")
  flags.DEFINE_integer("steps", 0, "Timed steps (0: 20, or 3 with --tiny).")
  flags.DEFINE_integer("batch_size", 0, "Global batch (0: 8 rows per device).")
  flags.DEFINE_bool("scan_layers", False, "Scan over layers (compiles faster).")
  flags.DEFINE_enum("remat", "none", ["none", "full", "dots_saveable"], "Rematerialisation.")
  flags.DEFINE_enum("precision", "bfloat16", ["bfloat16", "float32"], "Matmul operands.")
  flags.DEFINE_string("out", "", "Write the results to this JSON file.")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
