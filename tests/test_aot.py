"""research.aot: research.train's programs compiled for a TPU slice described by libtpu."""

import dataclasses
import importlib.util

import jax
import pytest

from research import aot, bench, hlo, layers, models, sharding, splash
from research.config import ExperimentConfig, load_config_file
from research.paths import REPO_ROOT
from xla_flags import cli_env
from tests import cli

FAMILY_CONFIGS = {"decoder": "configs/gpt_shakespeare_char.py",
                  "encoder": "configs/bert_shakespeare_mlm.py",
                  "encoder_decoder": "configs/t5_shakespeare_span.py"}
V5E_4 = aot.parse_topology("v5e:2x2")


def config_of(path: str, **sections) -> ExperimentConfig:
  raw = load_config_file(str(REPO_ROOT / path)).to_dict()
  for section, values in sections.items():
    raw[section].update(values)
  return ExperimentConfig.from_config_dict(raw)


@pytest.mark.parametrize("name, generation, topology, chips", [
    ("v5e:2x2", "v5e", "v5e:2x2", 4),
    ("v5p:4x4x4", "v5p", "v5p:4x4x4", 64),
    ("v5litepod-16", "v5e", "v5e:4x4", 16),
    ("v5litepod-32", "v5e", "v5e:4x8", 32),
    ("v5p-128", "v5p", "v5p:4x4x4", 64),  # v5p types count TensorCores, two per chip
    ("v4-32", "v4", "v4:2x2x4", 16),
    ("v6e-8", "v6e", "v6e:2x4", 8),
])
def test_topology_names_and_accelerator_types(name, generation, topology, chips):
  parsed = aot.parse_topology(name)
  assert (parsed.generation, parsed.name, parsed.chips) == (generation, topology, chips)


@pytest.mark.parametrize("name", ["v7x:2x2", "v5e-16x", "v5p-3", "v5e:2x2x2", "tpu"])
def test_an_unknown_topology_lists_the_valid_names(name):
  with pytest.raises(aot.TopologyError, match="valid: JAX topology names"):
    aot.parse_topology(name)


def test_collectives_inside_loops_count_once_per_iteration():
  text = """HloModule m

%body (p: (f32[8], s32[])) -> (f32[8], s32[]) {
  %p = (f32[8]{0}, s32[]) parameter(0)
  %x = f32[8]{0} get-tuple-element(%p), index=0
  %ar = f32[8]{0} all-reduce(%x), replica_groups={{0,1,2,3}}, to_apply=%add
  %i = s32[] get-tuple-element(%p), index=1
  ROOT %t = (f32[8]{0}, s32[]) tuple(%ar, %i)
}

%cond (q: (f32[8], s32[])) -> pred[] {
  %q = (f32[8]{0}, s32[]) parameter(0)
  %n = s32[]{:T(128)} constant(5)
  %j = s32[] get-tuple-element(%q), index=1
  ROOT %lt = pred[] compare(%j, %n), direction=LT
}

ENTRY %main (a: f32[8]) -> f32[32] {
  %a = f32[8]{0} parameter(0)
  %w = (f32[8]{0}, s32[]) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %scan = (f32[8]{0}, s32[]) while(%init), condition=%cond, body=%body
  ROOT %ag = f32[32]{0} all-gather(%a), replica_groups=[2,4]<=[8], dimensions={0}
}
"""
  # The second loop has no known trip count: its condition's bound (i < 5) gives it.
  costs = hlo.Costs.of(text, flops_per_device=0.0, num_devices=8)
  reduce, gather = costs.collectives["all-reduce"], costs.collectives["all-gather"]
  assert reduce["count"] == 3 + 5 and reduce["bytes"] == 8 * 32
  assert reduce["wire_bytes"] == pytest.approx(8 * 2 * 3 / 4 * 32)  # ring over groups of 4
  assert gather["count"] == 1 and gather["bytes"] == 128
  assert gather["wire_bytes"] == pytest.approx(3 / 4 * 128)
  # HBM traffic: the all-reduce reads and writes 32 bytes per iteration, the all-gather 32 + 128.
  assert costs.hbm_bytes == 8 * (32 + 32) + (32 + 128)


def test_hbm_traffic_leaves_out_on_chip_buffers_and_counts_each_buffer_once():
  # What the TPU compiler writes: S(1) layouts live in on-chip memory (VMEM), asynchronous
  # copies and slices return (source, destination, context), an asynchronous fusion passes
  # buffers through to its result untouched.
  text = """HloModule m

%fused (p0: f32[1024], p1: bf16[256], p2: f32[1024]) -> (f32[1024], bf16[256]) {
  %p0 = f32[1024]{0:T(1024)} parameter(0)
  %p1 = bf16[256]{0:T(256)S(1)} parameter(1)
  %p2 = f32[1024]{0:T(1024)} parameter(2)
  %a = f32[1024]{0:T(1024)} add(%p0, %p2)
  ROOT %t = (f32[1024]{0:T(1024)}, bf16[256]{0:T(256)S(1)}) tuple(%a, %p1)
}

ENTRY %main (x: f32[1024], y: f32[4096]) -> f32[1024] {
  %x = f32[1024]{0:T(1024)} parameter(0)
  %y = f32[4096]{0:T(1024)} parameter(1)
  %cs = (f32[1024]{0:T(1024)}, f32[1024]{0:T(1024)S(1)}, u32[]{:S(2)}) copy-start(%x)
  %cd = f32[1024]{0:T(1024)S(1)} copy-done(%cs)
  %ss = ((f32[4096]{0:T(1024)}), f32[1024]{0:T(1024)S(1)}, s32[]{:S(2)}) slice-start(%y), slice={[0:1024]}
  %sd = f32[1024]{0:T(1024)S(1)} slice-done(%ss)
  %w = bf16[256]{0:T(256)S(1)} convert(%cd)
  %f = (f32[1024]{0:T(1024)}, bf16[256]{0:T(256)S(1)}) fusion(%x, %w, %x), kind=kLoop, calls=%fused
  %v = f32[1024]{0:T(1024)} add(%sd, %cd)
  ROOT %r = f32[1024]{0:T(1024)} add(%v, %x)
}
"""
  costs = hlo.Costs.of(text, flops_per_device=0.0, num_devices=1)
  kib = 4096
  # copy: reads x once (4 KiB); slice: reads its 4 KiB of y; convert: nothing (on chip);
  # fusion: reads x twice, writes its float32 result (12 KiB; the bf16 buffer passes through);
  # the add of two on-chip operands writes 4 KiB; the last add 12 KiB.
  assert costs.hbm_bytes == kib + kib + 3 * kib + kib + 3 * kib


SCALE = REPO_ROOT / "configs" / "scale"
# Published parameter counts (model cards, papers; Gemma 3: the report's embedding plus
# non-embedding parameters of the text model), the shapes configs/scale/ gives.
PUBLISHED_PARAMETERS = {
    "bert_base": 110e6, "bert_large": 335e6, "gpt2_small": 124e6, "gpt_1_3b": 1.3e9,
    "llama2_7b": 6.74e9, "t5_base": 223e6, "t5_xl": 2.85e9, "llama3_1_8b": 8.03e9,
    "gemma3_1b": 302e6 + 698e6, "gemma3_4b": 675e6 + 3209e6, "gemma3_12b": 1012e6 + 10759e6,
    "gemma3_27b": 1416e6 + 25600e6, "gemma3_27b_lora": 1416e6 + 25600e6}


def test_every_scale_config_has_a_published_parameter_count():
  assert {f.stem for f in SCALE.glob("*.py")} == set(PUBLISHED_PARAMETERS)


def _module(path):
  spec = importlib.util.spec_from_file_location(f"_scale_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_scale_configs_have_their_published_sizes_and_name_a_slice(name):
  module = _module(SCALE / f"{name}.py")
  topology = aot.parse_topology(module.TOPOLOGY)
  assert topology.name == module.TOPOLOGY
  assert all(arg.startswith("--xla_") for arg in module.LIBTPU_INIT_ARGS.split())
  config = ExperimentConfig.from_config_dict(module.get_config())
  m = config.model
  assert m.scan_layers
  assert config.data.batch_size % topology.chips == 0  # whole sequences per chip
  shapes = jax.eval_shape(lambda: models.build_model(m).init(
      jax.random.key(0), *models.dummy_inputs(m, 8))["params"])
  count = models.parameter_count(shapes)
  assert count == pytest.approx(PUBLISHED_PARAMETERS[name], rel=0.02), count


# The decoder runs in the default suite; the encoder's and the encoder-decoder's programs take
# 70-80 s each to compile here (the suite's slowest items after the tiny ablation), and the
# default suite still compiles each family's train step for a TPU slice (the splash test below)
# and checks fsdp sharding of every family on a CPU mesh (tests/test_sharding.py).
@pytest.mark.parametrize("family", [
    "decoder",
    pytest.param("encoder", marks=pytest.mark.slow),
    pytest.param("encoder_decoder", marks=pytest.mark.slow)])
def test_each_family_compiles_for_four_tpu_chips_with_fsdp(family):
  # Widths that fill the TPU's (8, 128) tiles: XLA pads narrower minor dimensions (the
  # configs' width 128 with 32-wide heads would hold 2x their bytes per chip).
  config = config_of(FAMILY_CONFIGS[family], mesh=dict(data=1, fsdp=4, tensor=1),
                     model=dict(vocab_size=512, num_layers=2, embed_dim=512, num_heads=4,
                                mlp_dim=1024, matmul_dtype="auto"))
  report = aot.compile_report(config, V5E_4)
  assert report["chips"] == 4 and report["devices"] == 4
  assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  # matmul_dtype="auto" follows the mesh's devices (TPU: bf16), not this CPU host.
  assert report["matmul_dtype"] == "bfloat16"
  expected = {"train", "eval"} | ({"decode"} if family != "encoder" else set())
  assert set(report["programs"]) == expected
  train = report["programs"]["train"]
  mem = train["memory"]
  assert mem["fits"] and 0 < mem["total bytes"] < mem["hbm bytes"] == 16 * 2**30
  # FSDP: each chip holds about a quarter of the parameters and optimizer state. From XLA's
  # buffer assignment: the arguments less the batch and the step counter.
  state_per_device = mem["argument bytes"] - mem["batch bytes"]
  state_total = 3 * 4 * report["parameters"]  # float32 parameters and AdamW's two moments
  assert state_per_device <= 1.15 * state_total / 4, (state_per_device, state_total)
  # XLA's FLOPs agree with research/flops.py (which leaves out element-wise work).
  assert 0.95 < train["xla_flops"] / train["analytic_flops"] < 1.25
  roof = train["roofline"]
  assert roof["step_s_lower_bound"] == max(roof["compute_s"], roof["hbm_s"], roof["collective_s"])
  assert 0 < roof["mfu_upper_bound"] <= 1
  # FSDP gathers parameters and reduces gradients across the four chips.
  assert train["collectives"], train["collectives"]


def test_scanned_layers_are_counted_once_per_layer():
  config = config_of(FAMILY_CONFIGS["decoder"], mesh=dict(data=1, fsdp=4, tensor=1),
                     model=dict(vocab_size=96, num_layers=3))
  scanned = dataclasses.replace(config, model=dataclasses.replace(config.model, scan_layers=True))
  plain = aot.compile_report(config, V5E_4, programs=("train",))["programs"]["train"]
  looped = aot.compile_report(scanned, V5E_4, programs=("train",))["programs"]["train"]
  assert looped["xla_flops"] == pytest.approx(plain["xla_flops"], rel=0.02)
  # A scan reads and writes one layer of its stacked buffers per iteration; it also stacks the
  # residuals the backward pass needs, which the unscanned program keeps apart: a little more.
  assert 0.9 < looped["hbm_bytes_accessed"] / plain["hbm_bytes_accessed"] < 1.5


def test_auto_precision_follows_the_mesh_devices():
  devices = aot.tpu_devices(V5E_4)
  mesh = jax.make_mesh((4,), ("data",), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))
  with jax.set_mesh(mesh):
    assert layers.target_platform() == "tpu"
    assert layers.resolve_matmul_dtype("auto") == "bfloat16"
    assert layers.resolve_matmul_dtype("float32") == "float32"
  assert layers.target_platform() == "cpu"


def _aot(*args):
  return cli.run("research.aot", args, env=cli_env(1), timeout=600)


def test_a_config_too_large_for_the_slice_is_refused_in_one_line(tmp_path):
  result = _aot(f"--config={REPO_ROOT / FAMILY_CONFIGS['decoder']}", "--topology=v5litepod-4",
                "--programs=train", f"--json={tmp_path / 'aot.json'}",
                "--config.model.num_layers=2", "--config.model.embed_dim=8192",
                "--config.model.num_heads=64", "--config.model.mlp_dim=32768",
                "--config.model.vocab_size=256")
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: the train step needs ") and "of HBM" in last, last
  assert "--config.mesh.fsdp" in last and "remat" in last
  assert "DOES NOT FIT" in result.stdout
  assert (tmp_path / "aot.json").exists()


def test_an_unknown_topology_is_one_line_with_exit_2():
  result = _aot(f"--config={REPO_ROOT / FAMILY_CONFIGS['decoder']}", "--topology=v9z:2x2")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: unknown TPU topology 'v9z:2x2'")


def test_two_slices_put_only_the_data_axis_across_slices():
  config = config_of(FAMILY_CONFIGS["decoder"], mesh=dict(data=2, fsdp=4, tensor=1),
                     data=dict(batch_size=16))
  devices = aot.tpu_devices(V5E_4, num_slices=2)
  assert len(devices) == 8 and {d.slice_index for d in devices} == {0, 1}
  mesh = sharding.make_mesh(config, devices)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  for row in range(2):  # each data-parallel replica lies within one slice
    assert {d.slice_index for d in mesh.devices[row].flat} == {row}


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_each_family_trains_with_splash_attention_on_a_tpu_slice(family):
  # Rows of 128 tokens (the kernel's block) and no T5 relative bias: every attention of the
  # train step (the encoder's, the decoder's, cross-attention) runs in the Pallas kernel, inside
  # shard_map: forward, dq and dkv kernels per attention.
  model = dict(vocab_size=512, num_layers=1, num_decoder_layers=1, embed_dim=256, num_heads=2,
               mlp_dim=512, max_len=128, attention="auto", position="learned")
  # (Encoder-decoder: prefix LM, whose targets are 128 long too; span corruption's are not.)
  objective = dict(name="prefix_lm") if family == "encoder_decoder" else {}
  config = config_of(FAMILY_CONFIGS[family], mesh=dict(data=2, fsdp=2, tensor=1), model=model,
                     data=dict(seq_len=128, batch_size=8), objective=objective)
  train = aot.compile_report(config, V5E_4, programs=("train",))["programs"]["train"]
  attentions = {"decoder": 1, "encoder": 1, "encoder_decoder": 3}[family]
  assert train["pallas_kernel_calls"] == 3 * attentions
  assert train["memory"]["fits"]


def test_local_layers_run_splash_with_their_window(monkeypatch):
  # Gemma 3's pattern (configs/scale/gemma3_*.py), scanned in groups of six with one layer left
  # over, lowered for a TPU slice: every layer's attention is a splash kernel, the local ones
  # with their sliding window, the global ones causal over the whole row.
  built = []
  kernel = splash._kernel

  def recording(*args, **kwargs):
    built.append(kwargs["window"])
    return kernel(*args, **kwargs)

  monkeypatch.setattr(splash, "_kernel", recording)
  model = dict(vocab_size=512, num_layers=7, embed_dim=256, num_heads=2, num_kv_heads=1,
               head_dim=128, mlp_dim=512, max_len=512, position="rope", norm="rmsnorm",
               mlp_activation="geglu", use_bias=False, qk_norm=True, post_norms=True,
               layer_pattern="LLLLLG", local_window=128, scan_layers=True, remat="full",
               attention="auto")
  config = config_of(FAMILY_CONFIGS["decoder"], mesh=dict(data=1, fsdp=4, tensor=1), model=model,
                     data=dict(seq_len=512, batch_size=8))
  exp = bench.synthetic_experiment(config, aot.tpu_devices(V5E_4))
  aot.lower_programs(exp, ("train",))
  # Forward (and its rematerialised copy) and backward kernels of one local and one global
  # layer body in the scan, and of the seventh (local) layer outside it.
  assert set(built) == {0, 128}, built
  assert built.count(128) > built.count(0)


def _lora_decoder(**lora):
  """A small decoder with LoRA (init_from is only named: nothing is loaded to lower a step)."""
  raw = load_config_file(str(REPO_ROOT / FAMILY_CONFIGS["decoder"])).to_dict()
  raw["mesh"].update(data=1, fsdp=4, tensor=1)
  raw["model"].update(vocab_size=512, num_layers=2, embed_dim=256, num_heads=2, mlp_dim=512,
                      scan_layers=True)
  raw.update(lora=dict(rank=4, **lora), init_from="base.gguf")
  return ExperimentConfig.from_config_dict(raw)


def test_a_lora_train_step_takes_the_frozen_base_as_an_argument_it_does_not_donate():
  # (~4 s here: lowered, not compiled.)
  config = _lora_decoder()
  devices = aot.tpu_devices(V5E_4)
  exp = bench.synthetic_experiment(config, devices)
  lowered, parts = aot.lower_programs(exp, ("train",))["train"]
  assert set(parts) == {"trained parameters", "frozen base", "optimizer state", "batch"}
  state_info, _, base_info = lowered.args_info[0]
  assert all(a.donated for a in jax.tree.leaves(state_info))
  assert not any(a.donated for a in jax.tree.leaves(base_info))
  # The base is sharded as full fine-tuning shards the same model's parameters.
  full = bench.synthetic_experiment(dataclasses.replace(
      config, lora=dataclasses.replace(config.lora, rank=0)), devices)
  spec = lambda tree: jax.tree.map(lambda s: tuple(s.spec), tree)
  assert spec(exp.frozen_shardings) == spec(full.shardings.params)
  # Only the adapters have optimizer state: AdamW's two moments of each, plus counters.
  trained = models.parameter_count(exp.abstract_state.params)
  assert 0 < trained < models.parameter_count(exp.frozen) / 20
  opt = sum(x.size for x in jax.tree.leaves(exp.abstract_state.opt_state))
  assert 2 * trained <= opt <= 2 * trained + 4


def test_the_lora_scale_config_trains_rank_16_adapters_on_every_projection():
  # configs/scale/gemma3_27b_lora.py on its slice, abstract (~10 s here: no compile). The
  # adapter count from the published shape: A (in, r) and B (r, out) per projection and layer.
  module = _module(SCALE / "gemma3_27b_lora.py")
  config = ExperimentConfig.from_config_dict(module.get_config())
  m, r = config.model, config.lora.rank
  e, q, kv = m.embed_dim, m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
  per_layer = r * ((e + q) * 2 + (e + kv) * 2 + (e + m.mlp_dim) * 3)  # q, out; k, v; the MLP
  topology = aot.parse_topology(module.TOPOLOGY)
  exp = bench.synthetic_experiment(config, aot.tpu_devices(topology))
  assert models.parameter_count(exp.abstract_state.params) == m.num_layers * per_layer
  opt = sum(x.size for x in jax.tree.leaves(exp.abstract_state.opt_state))
  assert opt <= 2 * m.num_layers * per_layer + 4  # no state for the 27B base
  # Full fine-tuning of the same model is compiled for a larger slice (docs/tpu.md).
  assert topology.chips < aot.parse_topology(_module(SCALE / "gemma3_27b.py").TOPOLOGY).chips
  # The frozen base is spread over the slice's chips (fsdp), not replicated.
  base = aot.abstract_base(exp)
  total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(base))
  assert aot.per_device_bytes(base) <= 1.05 * total / topology.chips


def test_a_base_not_on_this_machine_is_compiled_from_the_configs_own_shapes():
  config = _lora_decoder()  # init_from="base.gguf", which is nowhere
  same, note = aot.pretrained_architecture(config)
  assert same == config and "init_from=base.gguf is not on this machine" in note
  plain = dataclasses.replace(config, init_from="", lora=dataclasses.replace(config.lora, rank=0))
  assert aot.pretrained_architecture(plain) == (plain, "")
