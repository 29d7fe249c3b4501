"""DPO preference tuning (research/kinds/preference.py): on a fixture whose chosen answers start
"sure, ..." and rejected ones "no. ...", a few steps of a tiny decoder from scratch raise the
reward margin and accuracy; the reference log-probabilities are computed once, before the first
step, equal the starting model's, and a resumed run and research.evaluate read them back; a
malformed line is a one-line error naming its file and line."""

import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import bench, evaluate, gguf_io, kinds, models, objectives, tasks, train
from research.config import (ConfigError, DataError, ExperimentConfig, ModelConfig, TaskConfig,
                             load_config_file)
from research.data import tokenizers
from research.experiment import build_experiment
from research.kinds import preference
from research.kinds.instruction import GEMMA
from research.paths import REPO_ROOT
from research.train_state import create_state
from research.workdir import REFERENCE_FILE

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "preference"


def dpo_config(tmp_path, steps: int, **task) -> ExperimentConfig:
  """A tiny decoder from scratch (char tokenizer) tuned by DPO on the fixture's pairs."""
  config = load_config_file(str(REPO_ROOT / "configs" / "alpaca_gpt.py"))
  config.model.update(num_layers=1, num_heads=2, embed_dim=32, mlp_dim=64, max_len=96,
                      dropout_rate=0.0)
  config.data.update(tokenizer="char", batch_size=8, seq_len=96, train_split="train",
                     data_dir=str(tmp_path / "tfds"))
  config.optimizer.update(learning_rate=3e-3, end_learning_rate=3e-3, warmup_steps=1,
                          weight_decay=0.0)
  config.train.update(steps=steps, eval_every=0, checkpoint_every=2, log_every=1,
                      eval_batches=0, async_checkpoints=False)
  config.task.update(**{"kind": "preference", "train_files": str(FIXTURE / "train.jsonl"),
                        "eval_files": str(FIXTURE / "dev.jsonl"), "max_target_len": 40,
                        "eval_batch_size": 8, "dpo_beta": 0.5, **task})
  return ExperimentConfig.from_config_dict(config)


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
  """Two DPO steps, then a resume to four, then research.evaluate, counting how often the
  reference model runs: (workdir, counts, reference file bytes after each stage, results)."""
  tmp_path = tmp_path_factory.mktemp("dpo")
  workdir = tmp_path / "run"
  calls = []
  original = preference.Preference.reference_logprobs

  def counted(self, *args, **kwargs):
    calls.append(1)
    return original(self, *args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(preference.Preference, "reference_logprobs", counted)
    first = train.train_and_evaluate(dpo_config(tmp_path, 2), str(workdir))
    after_start = (len(calls), (workdir / REFERENCE_FILE).read_bytes())
    resumed = train.train_and_evaluate(dpo_config(tmp_path, 4), str(workdir))
    evaluated = evaluate.evaluate_workdir(str(workdir))
    after_resume = (len(calls), (workdir / REFERENCE_FILE).read_bytes())
  return tmp_path, workdir, after_start, after_resume, first, resumed, evaluated


def test_dpo_raises_the_reward_margin_and_accuracy(dpo_run):  # ~14 s, shared by the module
  _, workdir, _, _, first, resumed, evaluated = dpo_run
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_steps = {r["step"]: r for r in records if "train/reward_margin" in r}
  assert sorted(train_steps) == [1, 2, 3, 4]
  # Step 1 scores the starting model, the reference itself: no margin, loss log 2.
  assert train_steps[1]["train/reward_margin"] == pytest.approx(0.0, abs=1e-4)
  assert train_steps[1]["train/loss"] == pytest.approx(np.log(2), abs=1e-4)
  assert train_steps[1]["train/reward_accuracy"] == 0.0
  margins = [train_steps[s]["train/reward_margin"] for s in (1, 2, 3, 4)]
  assert margins == sorted(margins) and margins[-1] > 0.5, margins
  assert train_steps[4]["train/reward_accuracy"] >= 0.75
  assert train_steps[4]["train/loss"] < train_steps[1]["train/loss"] - 0.2
  # On the held-out pairs: the margin grows from step 2 to 4, the chosen answer preferred.
  assert 0 < first["eval/reward_margin"] < resumed["eval/reward_margin"]
  assert resumed["eval/reward_accuracy"] >= 5 / 6
  assert resumed["eval/chosen_reward"] > 0 > resumed["eval/rejected_reward"]
  # The task's accuracy counts the examples whose predicted preference is the chosen one.
  assert evaluated["step"] == 4 and evaluated["examples"] == 6
  assert evaluated["accuracy"] == pytest.approx(resumed["eval/reward_accuracy"])
  assert evaluated["reward_margin"] == pytest.approx(resumed["eval/reward_margin"], rel=1e-5)


def test_reference_is_computed_once_and_is_the_starting_models(dpo_run):
  tmp_path, workdir, after_start, after_resume, _, _, _ = dpo_run
  assert after_start[0] == 1  # before the first step
  assert after_resume == after_start  # neither the resume nor the evaluation ran it again
  # The starting model, built again from the seed, and each pair's log-probabilities summed
  # over its response tokens and EOS, one sequence at a time (no batching, no pair layout).
  config = dpo_config(tmp_path, 4)
  exp = build_experiment(config, str(workdir))
  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(exp.config.rules):
    state = create_state(exp.model, exp.tx, exp.config, exp.shardings,
                         jax.random.key(config.train.seed))
  params = jax.device_get(state.params)
  kind = exp.data.kind
  features = kind.features(exp.data.records("train") + exp.data.records("validation"))
  assert len(kind.reference) == len(features) == 22
  rows, spans = [], []
  for f in features:
    for response in ("chosen", "rejected"):
      rows.append(np.concatenate([f["prompt"], f[response]]))
      spans.append((len(f["prompt"]), len(rows[-1])))
  width = max(len(r) for r in rows)
  tokens = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r  # causal: what follows a row's end changes none of its positions
  logits = jax.jit(lambda p, x: exp.model.apply({"params": p}, x))(params, tokens)
  logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)))
  expected = np.array([sum(logp[i, t - 1, tokens[i, t]] for t in range(start, end))
                       for i, (start, end) in enumerate(spans)]).reshape(-1, 2)
  saved = np.stack([kind.reference[f["key"]] for f in features])
  np.testing.assert_allclose(saved, expected, rtol=1e-5, atol=1e-4)
  assert np.all(saved < 0) and not np.allclose(saved[:, 0], saved[:, 1])


def test_malformed_pairs_and_configs_are_one_line_errors(tmp_path):
  bad = tmp_path / "pairs.jsonl"
  bad.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
                 + json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
  config = dpo_config(tmp_path, 1, train_files=str(bad), eval_files=str(bad))
  with pytest.raises(DataError) as error:
    tasks.records(kinds.task_of(config), "train", str(tmp_path / "tfds"))
  message = str(error.value)
  assert f"{bad}:2: field 'rejected' is missing" in message and "\n" not in message
  with pytest.raises(ConfigError, match=r"task.dpo_beta=0.0 must be > 0"):
    dpo_config(tmp_path, 1, dpo_beta=0.0)
  with pytest.raises(ConfigError, match=r"kind=preference is scored by accuracy"):
    dpo_config(tmp_path, 1, metric="rouge")
  with pytest.raises(ConfigError, match=r"kind preference\) does not fit model.family='encoder'"):
    cfg = load_config_file(str(REPO_ROOT / "configs" / "sst2_bert.py"))
    cfg.task.update(kind="preference", train_files="a.jsonl", eval_files="b.jsonl")
    ExperimentConfig.from_config_dict(cfg)
  # A batch padded to its shape: padding rows weigh nothing, the pair's rows share the prompt.
  tokenizer = tokenizers.CharTokenizer("abcdefghijklmnopqrstuvwxyz :\nUA")
  kind = tasks.kind_of(dpo_config(tmp_path, 1), tokenizer)
  (feature,) = kind.features([{"prompt": "hi", "chosen": "yes", "rejected": "no"}])
  kind.reference = {feature["key"]: np.array([-1.0, -2.0], np.float32)}
  batch = kind.collate([feature, None])
  assert batch["inputs"].shape == (2, 2, 96) and batch["pair_weights"].tolist() == [1, 0]
  assert batch["reference"].tolist() == [[-1.0, -2.0], [0.0, 0.0]]
  assert batch["weights"][0].sum(-1).tolist() == [4, 3] and batch["weights"][1].sum() == 0
  with pytest.raises(DataError, match="has no reference log-probabilities"):
    kind.collate([{**feature, "key": "another pair"}])
  # research.bench and research.aot time and compile the step on batches of the same layout.
  synthetic = bench.synthetic_batch(dataclasses.replace(
      kind.config, model=dataclasses.replace(kind.config.model, vocab_size=40)), batch_size=2)
  assert {k: (v.shape, v.dtype) for k, v in synthetic.items()} == {
      k: (v.shape, v.dtype) for k, v in batch.items()}


def test_pairs_on_a_gemma_vocabulary_are_written_as_instruction_tuning_writes_them(tmp_path):
  """On a vocabulary with Gemma's turn markers the prompt is the instruction kind's (the chat
  template research.chat writes) and each response ends in <end_of_turn>, as an SFT target."""
  import tokenizers as hf_tokenizers  # pylint: disable=import-outside-toplevel
  gguf = gguf_io.read_gguf(REPO_ROOT / "tests" / "fixtures" / "gguf" / "tiny_llama.gguf")
  vocabulary = hf_tokenizers.Tokenizer.from_str(
      gguf_io.make_tokenizer(gguf.metadata).tokenizer_json)
  vocabulary.add_special_tokens(["<start_of_turn>", "<end_of_turn>"])
  tokenizer = tokenizers.HFTokenizer(vocabulary.to_str())
  pairs = tasks.kind_of(dpo_config(tmp_path, 1), tokenizer)
  sft = tasks.kind_of(dataclasses.replace(dpo_config(tmp_path, 1), task=TaskConfig(
      name="alpaca", max_target_len=40)), tokenizer)
  record = {"prompt": "¿Cuál es la capital de España?", "chosen": "Madrid.", "rejected": "No sé."}
  (pair,) = pairs.features([record])
  (example,) = sft.features([{"instruction": record["prompt"], "input": "", "output": "Madrid."}])
  eos = tokenizer.eos_id  # instruction tuning ends a Gemma reply with EOS (research/kinds/instruction.py)
  assert pairs.template is sft.template is GEMMA and pairs.end_id == sft.end_id == eos
  np.testing.assert_array_equal(pair["prompt"], example["prompt"])
  np.testing.assert_array_equal(pair["chosen"], example["target"])
  assert list(pair["rejected"]) == [*tokenizer.encode("No sé."), eos]


def test_row_logprobs_in_chunks_equal_those_of_the_full_logits():  # ~2 s
  """What DPO compares, each row's summed log-probability of its weighted targets: with
  model.logits_chunk (Gemma's configs), the same values and gradients as from every logit."""
  cfg = ModelConfig(family="decoder", vocab_size=48, num_layers=1, num_heads=2, embed_dim=16,
                    mlp_dim=32, max_len=16, tie_embeddings=False)
  model = models.build_model(cfg)
  chunked = models.build_model(dataclasses.replace(cfg, logits_chunk=4))
  tokens = jax.random.randint(jax.random.key(0), (3, 13), 1, cfg.vocab_size)
  weights = np.zeros((3, 12), np.float32)
  weights[0, 7:] = 1.0  # a response at the end; row 1 carries none; row 2 one in the middle
  weights[2, 3:9] = 1.0
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": jnp.asarray(weights)}
  params = nn.unbox(jax.jit(model.init)(jax.random.key(1), batch["inputs"])["params"])
  scale = jnp.array([1.0, 2.0, -1.0])

  @jax.jit
  def computed(p):  # (logits, then each model's rows and their gradient), one compilation
    out = [model.apply({"params": p}, batch["inputs"])]
    for m in (model, chunked):
      rows = lambda q, m=m: objectives.decoder_row_logprobs(m, q, batch)
      out.append((rows(p), jax.grad(lambda q, f=rows: jnp.sum(scale * f(q)))(p)))
    return out

  logits, (full, full_grads), (part, part_grads) = computed(params)
  picked = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32))),
                              np.asarray(batch["targets"])[..., None], axis=-1)[..., 0]
  expected = np.sum(picked * weights, axis=1)
  np.testing.assert_allclose(full, expected, rtol=1e-5)
  np.testing.assert_allclose(part, expected, rtol=1e-5)
  assert full[1] == part[1] == 0.0
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6), part_grads,
               full_grads)
