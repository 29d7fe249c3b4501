"""Fine-tuning tasks: TFDS builders, formats, the SFT loss mask, span QA windows, padded
decoding, init_from, and every task config end to end on a shrunk model."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from research import decode, kinds, models, paths, tasks, train
from research.config import ConfigError, DataError, ExperimentConfig, load_config_file
from research.data import tasks as task_data
from research.data import tokenizers

CONFIGS = paths.REPO_ROOT / "configs"
TASK_CONFIGS = ["sst2_bert", "sst2_gpt", "sst2_t5", "squad_bert", "squad_t5", "spa_eng_t5",
                "spa_eng_gpt", "scitldr_t5", "scitldr_gpt", "alpaca_gpt"]
TINY_MODEL = dict(num_layers=1, num_decoder_layers=1, num_heads=2, embed_dim=32, mlp_dim=64)


def shrunk(name: str, **task) -> ExperimentConfig:
  config = load_config_file(str(CONFIGS / f"{name}.py"))
  config.model.update(**TINY_MODEL)
  config.data.update(tokenizer="char", batch_size=8, train_split="train[:64]")
  config.train.update(steps=2, eval_every=0, checkpoint_every=2, log_every=1,
                      async_checkpoints=False)
  config.task.update(**{"eval_examples": 6, "eval_batch_size": 4, **task})
  return ExperimentConfig.from_config_dict(config)


# ------------------------------------------------------------------------------------------
# Builders and malformed data
# ------------------------------------------------------------------------------------------


def test_builders_read_every_bundled_row():
  data_dir = str(paths.TFDS_DATA_DIR)
  assert len(task_data.load_records("sst2", "validation", data_dir)) == 872
  assert len(task_data.load_records("spa_eng", "test", data_dir)) == 2000
  squad = task_data.load_records("squad", "validation", data_dir)
  assert len(squad) == 526
  for r in squad[:50]:
    for text, start in zip(r["answers"], r["answer_starts"]):
      assert r["context"][start:start + len(text)] == text
  tldr = task_data.load_records("scitldr", "test", data_dir)
  assert len(tldr) == 618 and all(isinstance(s, str) for s in tldr[0]["all_summaries"])
  assert len(tldr[0]["all_summaries"]) > 1  # the test split has several references
  assert set(task_data.load_records("alpaca", "validation", data_dir)[0]) == {
      "instruction", "input", "output"}


@pytest.mark.parametrize("task,files,message", [
    ("sst2", {"train.tsv": "sentence\tlabel\ngood\t1\nmissing a column\n",
              "dev.tsv": "sentence\tlabel\nok\t1\n"}, r"train.tsv:3: expected 2 tab-separated"),
    ("sst2", {"train.tsv": "sentence\tlabel\ngood\t7\n", "dev.tsv": "sentence\tlabel\n"},
     r"train.tsv:2: label '7' is not 0 or 1"),
    ("spa_eng", {"train.tsv": "es\ten\nHola\n", "validation.tsv": "es\ten\n",
                 "test.tsv": "es\ten\n"}, r"train.tsv:2: expected 2"),
    ("squad", {"train.jsonl": json.dumps({"id": "q", "context": "short", "question": "?",
                                          "answers": [{"text": "long", "answer_start": 40}]}),
               "validation.jsonl": ""}, r"train.jsonl:1: answer 'long' at answer_start=40"),
    ("scitldr", {"train.jsonl": json.dumps({"id": "a", "document": "  ", "summary": "s"}),
                 "validation.jsonl": "", "test.jsonl": ""}, r"train.jsonl:1: empty 'document'"),
    ("alpaca", {"train.jsonl": '{"instruction": "x"}', "validation.jsonl": ""},
     r"train.jsonl:1: field 'input' is missing"),
])
def test_malformed_rows_name_file_and_line(tmp_path, task, files, message):
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  with pytest.raises(DataError, match=message):
    task_data.prepared_builder(task, str(tmp_path / "tfds"), folder=str(tmp_path))
  assert not list((tmp_path / "tfds").glob("*/*/dataset_info.json"))  # nothing was written


# ------------------------------------------------------------------------------------------
# Formats
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def char_tokenizer():
  return tokenizers.CharTokenizer("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ :;,.!?\n")


def test_sft_loss_mask_covers_exactly_the_response(char_tokenizer):
  config = shrunk("alpaca_gpt", max_target_len=16)
  config = dataclasses.replace(config, data=dataclasses.replace(config.data, seq_len=64))
  featurizer = tasks.kind_of(config, char_tokenizer)
  records = [{"instruction": "Name a color.", "input": "", "output": "Blue."},
             {"instruction": "Add.", "input": "one and two", "output": "three"}]
  batch = featurizer.collate(featurizer.features(records) + [None])
  for row, record in enumerate(records):
    response = list(char_tokenizer.encode(record["output"])) + [char_tokenizer.eos_id]
    weighted = batch["targets"][row][batch["weights"][row] == 1]
    assert list(weighted) == response  # the response and its EOS, nothing else
    prompt = tasks.USER_PREFIX + tasks.instruction_text(record) + tasks.ASSISTANT_PREFIX
    unweighted = batch["inputs"][row][:len(prompt)]
    assert char_tokenizer.decode(unweighted) == prompt
  assert batch["weights"][2].sum() == 0  # a padding row carries no loss


def test_span_windows_label_the_answer_and_best_span_finds_it(char_tokenizer):
  config = shrunk("squad_bert", doc_stride=8, max_answer_len=10)
  config = dataclasses.replace(config, data=dataclasses.replace(config.data, seq_len=40))
  featurizer = tasks.kind_of(config, char_tokenizer)
  context = "the quick brown fox jumps over the lazy dog and runs far away"
  start = context.index("lazy dog")
  record = {"question": "who?", "context": context, "answers": ["lazy dog"],
            "answer_starts": [start]}
  windows = featurizer.span_features(record, 0)
  assert len(windows) > 1  # the context needs several overlapping windows
  covered = [w for w in windows if w["start"] > 0]
  assert covered
  for w in covered:
    text = char_tokenizer.decode(w["tokens"][w["start"]:w["end"] + 1])
    assert text == "lazy dog"
    scores_start = np.full(len(w["tokens"]), -5.0)
    scores_end = np.full(len(w["tokens"]), -5.0)
    scores_start[w["start"]], scores_end[w["end"]] = 3.0, 3.0
    first = int(np.argmax(w["token_types"]))
    _, i, j = tasks.best_span(scores_start, scores_end, first, len(w["tokens"]) - 2, 10)
    assert (i, j) == (w["start"], w["end"])
  # A window without the answer points at the lead token.
  assert any(w["start"] == 0 and w["end"] == 0 for w in windows)


def test_sentencepiece_offsets_are_character_offsets():
  sp = tokenizers.SentencePieceTokenizer.train(["Kenya (/ˈkɛnjə/) is in Africa."] * 50, 282)
  text = "Kenya (/ˈkɛnjə/) is in Africa."
  ids, offsets = tasks.encode_with_offsets(sp, text)
  assert list(ids) == list(sp.encode(text))
  assert "".join(text[a:b] for a, b in offsets) == text


# ------------------------------------------------------------------------------------------
# Decoding prompts of different lengths
# ------------------------------------------------------------------------------------------


def test_padded_prompts_decode_like_each_prompt_alone():
  cfg = models.ModelConfig(family="decoder", vocab_size=23, num_layers=2, num_heads=2,
                           embed_dim=32, mlp_dim=64, max_len=32, position="rope")
  model = models.Decoder(cfg)
  params = model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]
  prompts = [np.array([3, 4, 5, 6, 7]), np.array([9, 10]), np.array([11, 12, 13, 14, 15, 16])]
  width = max(len(p) for p in prompts)
  padded = np.zeros((3, width), np.int32)
  for i, p in enumerate(prompts):
    padded[i, :len(p)] = p
  lengths = np.array([len(p) for p in prompts])
  together = decode.generate_padded(model, params, padded, lengths, 6)
  beams, _, _ = decode.beam_search(model, params, padded, 1, 6, eos_id=22,
                                   prompt_lengths=lengths)
  for i, p in enumerate(prompts):
    alone = decode.generate(model, params, p[None], 6, jax.random.key(0),
                            decode.SamplingConfig(temperature=0.0))[0, len(p):]
    np.testing.assert_array_equal(together[i], alone)
    np.testing.assert_array_equal(beams[i, 0], alone)  # beam size 1 is greedy


# ------------------------------------------------------------------------------------------
# Every task config, end to end (shrunk)
# ------------------------------------------------------------------------------------------


# Every task and every family in the default suite (sst2 and squad on the encoder, spa_eng on the
# encoder-decoder, scitldr and alpaca on the decoder); the other pairs go through the same task
# code and are marked slow (they kept the suite over 15 minutes on an AVX2-only CPU).
SLOW_TASK_CONFIGS = ("sst2_gpt", "sst2_t5", "squad_t5", "spa_eng_gpt", "scitldr_t5")


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TASK_CONFIGS else n for n in TASK_CONFIGS])
def test_task_config_trains_and_evaluates(tmp_path, name):
  config = shrunk(name)
  result = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(result["eval/loss"])
  metric = {"sst2": "eval/accuracy", "squad": "eval/f1", "spa_eng": "eval/bleu",
            "scitldr": "eval/rougeL", "alpaca": "eval/rougeL"}[config.task.name]
  assert result["eval/examples"] == 6 and 0 <= result[metric] <= 100
  if config.task.name == "spa_eng":
    assert result["eval/bleu_signature"].startswith("nrefs:1|")
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert any(metric in l for l in lines)  # the periodic evaluation is logged


def test_evaluate_entry_point_scores_the_whole_split(tmp_path):
  from research import evaluate  # pylint: disable=import-outside-toplevel
  config = shrunk("sst2_gpt", eval_batch_size=32)  # 872 examples: 28 batches (the last padded)
  train.train_and_evaluate(config, str(tmp_path))
  result = evaluate.evaluate_workdir(str(tmp_path))
  assert result["task"] == "sst2" and result["examples"] == 872 and result["tokens"] == 872
  assert 0 <= result["accuracy"] <= 1


# ------------------------------------------------------------------------------------------
# Metrics on fixtures whose right answer is known
# ------------------------------------------------------------------------------------------


def test_each_metric_on_a_known_answer():
  metric = lambda name, p, r: kinds.METRICS[name][0](p, r)
  assert metric("accuracy", ["a", " b ", "c"], [["a"], ["b"], ["x"]]) == {"accuracy": 2 / 3}
  # SQuAD normalisation drops case, punctuation and articles; the best reference counts.
  assert metric("exact_match", ["The Cat!", "dog"], [["cat"], ["a bird", "dog"]]) == {
      "exact_match": 100.0}
  # "the cat sat" vs "a cat sat down": 2 shared tokens, precision 1, recall 2/3 -> F1 0.8.
  squad = metric("squad_f1", ["the cat sat", "nothing"], [["a cat sat down"], ["x"]])
  assert squad["exact_match"] == 0.0 and squad["f1"] == pytest.approx(40.0)
  assert metric("bleu", ["the cat sat on the mat"], [["the cat sat on the mat"]])["bleu"] == (
      pytest.approx(100.0))
  assert metric("bleu", ["one two three four"], [["five six seven eight"]])["bleu"] == 0.0
  # ROUGE-1 of "alpha beta gamma delta" vs "alpha beta x y": precision = recall = 1/2.
  rouge = metric("rouge", ["alpha beta gamma delta"], [["alpha beta x y"]])
  assert rouge["rouge1"] == pytest.approx(50.0) and rouge["rouge2"] == pytest.approx(100 / 3)
  # The per-example scores of the predictions file agree.
  assert kinds.METRICS["squad_f1"][1]("the cat sat", ["a cat sat down"]) == {
      "correct": False, "score": pytest.approx(80.0)}
  assert kinds.METRICS["accuracy"][1]("b", ["b"]) == {"correct": True}


# What the committed code before task kinds (commit 9b36d51) gave for these fixed predictions on
# the first 40 examples of each task's evaluation split.
FIXED_PREDICTION_METRICS = {
    "sst2": {"accuracy": 0.475},
    "squad": {"exact_match": 40.0, "f1": 71.98412698412697},
    "spa_eng": {"bleu": 52.103727136575195},
    "eng_spa": {"bleu": 50.56967074374726},  # the same pairs the other way (dataset spa_eng)
    "scitldr": {"rouge1": 77.66041766135329, "rouge2": 75.59315928884253,
                "rougeL": 77.66041766135329},
    "alpaca": {"rouge1": 78.39717597684029, "rouge2": 66.97397568961338,
               "rougeL": 78.39717597684029},
}


@pytest.mark.parametrize("name", sorted(kinds.TASKS))
def test_bundled_task_metrics_on_fixed_predictions_are_unchanged(name):
  config = shrunk("spa_eng_t5")  # every bundled task runs on the encoder-decoder, by its text
  task = kinds.TASKS[name]
  kind = kinds.KINDS[task.kind](task, config, labels=task.labels)
  records = task_data.load_records(task.dataset_name, task.eval_split,
                                   str(paths.TFDS_DATA_DIR))[:40]
  refs = [kind.references(r) for r in records]
  preds = [r[0] if i % 3 == 0 else " ".join(r[0].split()[:max(1, len(r[0].split()) // 2)])
           for i, r in enumerate(refs)]
  if name == "sst2":
    preds = ["positive" if i % 2 else "negative" for i in range(len(refs))]
  result = kind.metric(preds, refs)
  for key, value in FIXED_PREDICTION_METRICS[name].items():
    assert result[key] == pytest.approx(value, abs=1e-9), key
  # The references themselves score perfectly; an answer no reference holds scores nothing.
  best = kind.metric([r[0] for r in refs], refs)
  worst = kind.metric(["zzzz qqqq"] * len(refs), refs)
  key = next(iter(FIXED_PREDICTION_METRICS[name]))
  top = 1.0 if key == "accuracy" else 100.0
  assert best[key] == pytest.approx(top) and worst[key] == 0.0


# ------------------------------------------------------------------------------------------
# A user's task from files, without code
# ------------------------------------------------------------------------------------------

PAIRS = [("a man plays a guitar", "a person makes music", "entailment"),
         ("a man plays a guitar", "nobody plays anything", "contradiction"),
         ("a man plays a guitar", "the man is famous", "neutral"),
         ("two dogs run in a park", "animals are outside", "entailment"),
         ("two dogs run in a park", "the dogs sleep at home", "contradiction"),
         ("two dogs run in a park", "the dogs chase a ball", "neutral")]


def write_pair_task(folder):
  folder.mkdir(parents=True, exist_ok=True)
  rows = lambda n: "".join(json.dumps({"premise": p, "hypothesis": h, "label": l}) + "\n"
                           for p, h, l in (PAIRS * n))
  (folder / "train.jsonl").write_text(rows(4))
  (folder / "dev.jsonl").write_text(rows(1))
  return dict(kind="classification", train_files=str(folder / "train.jsonl"),
              eval_files=str(folder / "dev.jsonl"), text_fields="premise,hypothesis",
              label_field="label")


def user_config(name: str, tmp_path, **task) -> ExperimentConfig:
  config = shrunk(name, **task)
  return dataclasses.replace(config, data=dataclasses.replace(
      config.data, data_dir=str(tmp_path / "tfds"), train_split="train"))


@pytest.mark.parametrize("name", ["sst2_bert", "sst2_gpt", "sst2_t5"])
def test_user_sentence_pair_task_trains_evaluates_and_writes_predictions(tmp_path, name):
  from research import evaluate  # pylint: disable=import-outside-toplevel
  config = user_config(name, tmp_path, **write_pair_task(tmp_path / "nli"))
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["eval/examples"] == 6 and 0 <= result["eval/accuracy"] <= 1
  labels = json.loads((tmp_path / "run" / "labels.json").read_text())["labels"]
  assert labels == ["contradiction", "entailment", "neutral"]
  out = tmp_path / "predictions.jsonl"
  metrics = evaluate.evaluate_workdir(str(tmp_path / "run"), predictions=str(out))
  assert metrics["task"] == "user (classification)" and metrics["examples"] == 6
  lines = [json.loads(l) for l in out.read_text().splitlines()]
  assert [(l["input"]["premise"], l["input"]["hypothesis"], l["reference"])
          for l in lines] == PAIRS
  assert metrics["accuracy"] == pytest.approx(np.mean([l["correct"] for l in lines]))
  if config.model.family != "encoder_decoder":  # a classifier predicts one of the labels
    assert all(l["prediction"] in labels for l in lines)


def test_pair_features_carry_token_types_and_labels(tmp_path, char_tokenizer):
  config = user_config("sst2_bert", tmp_path, **write_pair_task(tmp_path / "nli"))
  kind = tasks.kind_of(config, char_tokenizer)
  assert kind.labels == ("contradiction", "entailment", "neutral")
  record = {"premise": "ab", "hypothesis": "cde", "label": "neutral"}
  (feature,) = kind.features([record])
  eos, lead = char_tokenizer.eos_id, tasks.lead_id(char_tokenizer)
  assert list(feature["tokens"]) == [lead, *char_tokenizer.encode("ab"), eos,
                                     *char_tokenizer.encode("cde"), eos]
  assert list(feature["token_types"]) == [0, 0, 0, 0, 1, 1, 1, 1] and feature["label"] == 2
  batch = kind.collate([feature, None])
  assert batch["token_types"][0, :8].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
  assert batch["labels"].tolist() == [2, 0] and batch["weights"].tolist() == [1, 0]


def test_user_text_to_text_task_from_tsv(tmp_path):
  folder = tmp_path / "qa"
  folder.mkdir()
  rows = [("what is one plus one", "two"), ("what is two plus two", "four"),
          ("what colour is the sky", "blue"), ("what is the capital of france", "paris")]
  tsv = "question\tanswer\n" + "".join(f"{q}\t{a}\n" for q, a in rows)
  (folder / "train.tsv").write_text(tsv * 4)
  (folder / "dev.tsv").write_text(tsv)
  task = dict(kind="text_to_text", train_files=str(folder / "train.tsv"),
              eval_files=str(folder / "dev.tsv"), input_field="question", target_field="answer",
              metric="exact_match", eval_examples=4)
  result = train.train_and_evaluate(user_config("spa_eng_t5", tmp_path, **task),
                                    str(tmp_path / "run"))
  assert result["eval/examples"] == 4 and 0 <= result["eval/exact_match"] <= 100
  # On a decoder the input and a newline are the prompt; the loss is on the target only.
  tokenizer = tokenizers.CharTokenizer("abcdefghijklmnopqrstuvwxyz \n")
  kind = tasks.kind_of(user_config("scitldr_gpt", tmp_path, **task), tokenizer)
  batch = kind.collate(kind.features([{"question": "what", "answer": "two"}]))
  assert tokenizer.decode(batch["inputs"][0][:5]) == "what\n"
  assert list(batch["targets"][0][batch["weights"][0] == 1]) == [
      *tokenizer.encode("two"), tokenizer.eos_id]


def test_user_span_task_from_jsonl(tmp_path):
  folder = tmp_path / "spans"
  folder.mkdir()
  contexts = ["the cat sat on the mat near the door", "paris is the capital of france"]
  qa = [(contexts[0], "where did the cat sit", "on the mat"),
        (contexts[1], "what is the capital of france", "paris")]
  lines = "".join(json.dumps({"id": str(i), "context": c, "question": q,
                              "answers": [{"text": a, "answer_start": c.index(a)}]}) + "\n"
                  for i, (c, q, a) in enumerate(qa))
  (folder / "train.jsonl").write_text(lines * 8)
  (folder / "dev.jsonl").write_text(lines)
  config = user_config("squad_bert", tmp_path, kind="span_qa",
                       train_files=str(folder / "train.jsonl"),
                       eval_files=str(folder / "dev.jsonl"), eval_examples=2)
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["eval/examples"] == 2 and 0 <= result["eval/f1"] <= 100


@pytest.mark.parametrize("files,task,message", [
    ({"train.jsonl": '{"premise": "a", "hypothesis": "b", "label": "yes"}\n',
      "dev.jsonl": '{"premise": "a", "hypothesis": "b", "label": "maybe"}\n'},
     dict(text_fields="premise,hypothesis"),
     r"dev.jsonl:1: label 'maybe' does not occur in the training files \(labels \['yes'\]\)"),
    ({"train.csv": "premise,label\n\"a, quoted\",1\nshort\n", "dev.csv": "premise,label\n"},
     dict(text_fields="premise"), r"train.csv:3: expected 2 comma-separated columns"),
    ({"train.jsonl": '{"premise": "a"}\n', "dev.jsonl": ""}, dict(text_fields="premise"),
     r"train.jsonl:1: field 'label' is missing"),
    ({"train.txt": "x\n", "dev.txt": ""}, dict(text_fields="premise"),
     r"train.txt: task files are .jsonl, .tsv or .csv"),
])
def test_malformed_user_rows_name_file_and_line(tmp_path, files, task, message):
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  train_file, dev_file = (str(tmp_path / n) for n in files)
  config = user_config("sst2_bert", tmp_path, kind="classification", train_files=train_file,
                       eval_files=dev_file, **task)
  with pytest.raises(DataError, match=message):
    tasks.kind_of(config)


def test_user_dataset_is_rebuilt_when_a_file_changes(tmp_path):
  config = user_config("sst2_bert", tmp_path, **write_pair_task(tmp_path / "nli"))
  task = kinds.task_of(config)
  first = task_data.user_data_dir(task, str(tmp_path / "tfds"))
  assert len(tasks.records(task, "validation", str(tmp_path / "tfds"))) == 6
  assert task_data.user_data_dir(task, str(tmp_path / "tfds")) == first  # built once
  with open(tmp_path / "nli" / "dev.jsonl", "a") as f:
    f.write(json.dumps({"premise": "p", "hypothesis": "h", "label": "neutral"}) + "\n")
  assert task_data.user_data_dir(task, str(tmp_path / "tfds")) != first
  assert len(tasks.records(task, "validation", str(tmp_path / "tfds"))) == 7


def test_user_task_config_errors():
  with pytest.raises(ConfigError, match="needs task.text_fields"):
    shrunk("sst2_bert", kind="classification", train_files="a.jsonl", eval_files="b.jsonl")
  with pytest.raises(ConfigError, match="task.kind='ranking' is not one of"):
    shrunk("sst2_bert", kind="ranking", train_files="a.jsonl", eval_files="b.jsonl")
  with pytest.raises(ConfigError, match="kind text_to_text\\) does not fit model.family='encoder'"):
    shrunk("sst2_bert", kind="text_to_text", train_files="a.tsv", eval_files="b.tsv",
           input_field="q", target_field="a", metric="bleu")
  with pytest.raises(ConfigError, match="task.metric='meteor' is not one of"):
    shrunk("sst2_t5", kind="text_to_text", train_files="a.tsv", eval_files="b.tsv",
           input_field="q", target_field="a", metric="meteor")


# ------------------------------------------------------------------------------------------
# Fine-tuning from a pretrained workdir
# ------------------------------------------------------------------------------------------


def test_init_from_loads_the_encoder_adds_the_head_and_rejects_other_families(tmp_path):
  from tests.test_train import shrunk_config  # pylint: disable=import-outside-toplevel
  pretrain = shrunk_config(2, "configs/bert_shakespeare_mlm.py")
  train.train_and_evaluate(pretrain, str(tmp_path / "mlm"))
  _, _, pretrained = train.restore_params(tmp_path / "mlm")

  config = dataclasses.replace(shrunk("sst2_bert"), init_from=str(tmp_path / "mlm"))
  # The pretrained rotary encoder was built for 32 positions (config.py refuses longer inputs).
  config = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=1),
                               data=dataclasses.replace(config.data, seq_len=32))
  train.train_and_evaluate(config, str(tmp_path / "sst2"))
  tuned_config, _, tuned = train.restore_params(tmp_path / "sst2")
  # The architecture is the pretrained one; dropout is the task config's.
  pretrained_config = train.load_experiment_config(tmp_path / "mlm")
  assert tuned_config.model == dataclasses.replace(pretrained_config.model, dropout_rate=0.1)
  assert set(tuned) == {"encoder", "pooler", "classifier"}
  # The tokenizer is the pretrained run's (characters of Shakespeare, with <mask>).
  assert (tmp_path / "sst2" / "tokenizer" / "manifest.json").read_text() == (
      tmp_path / "mlm" / "tokenizer" / "manifest.json").read_text()
  # One step moved the encoder from the pretrained values, but only a little.
  before = jax.tree.leaves(pretrained["encoder"])
  after = jax.tree.leaves(tuned["encoder"])
  assert all(a.shape == b.shape for a, b in zip(after, before))
  assert max(float(np.abs(a - b).max()) for a, b in zip(after, before)) < 0.05

  wrong = dataclasses.replace(shrunk("sst2_gpt"), init_from=str(tmp_path / "mlm"))
  with pytest.raises(ConfigError, match="holds a encoder model but this config is model.family"
                                        "=decoder"):
    train.train_and_evaluate(wrong, str(tmp_path / "wrong"))
  assert not (tmp_path / "wrong").exists()


def test_merge_rejects_a_shape_mismatch():
  params = {"encoder": {"w": np.zeros((4, 8))}, "head": np.zeros(2)}
  merged, new, unused = train.merge_pretrained(
      params, {"encoder": {"w": np.ones((4, 8))}, "mlm": np.ones(3)}, "src")
  assert merged["encoder"]["w"].sum() == 32 and new == ["['head']"] and unused == ["['mlm']"]
  with pytest.raises(ConfigError, match=r"shape \(4, 9\) there but \(4, 8\)"):
    train.merge_pretrained(params, {"encoder": {"w": np.ones((4, 9))}}, "src")
  with pytest.raises(ConfigError, match="no parameter"):
    train.merge_pretrained(params, {"other": np.ones(1)}, "src")


# ------------------------------------------------------------------------------------------
# Chat
# ------------------------------------------------------------------------------------------


def test_chat_answers_once_and_keeps_history_within_the_context(tmp_path):
  from research import chat as chat_lib  # pylint: disable=import-outside-toplevel
  config = shrunk("alpaca_gpt")
  train.train_and_evaluate(config, str(tmp_path))
  chat = chat_lib.Chat(str(tmp_path), max_new_tokens=8,
                       sampling=decode.SamplingConfig(temperature=0.0))
  first = chat.reply("Give three tips for staying healthy.")
  assert isinstance(first, str) and chat.history == [("Give three tips for staying healthy.",
                                                      first)]
  for i in range(40):  # a long conversation: old turns fall out of the window
    chat.history.append((f"question {i} " * 3, "answer " * 5))
  ids = chat.context_ids("last one?")
  assert len(ids) <= config.model.max_len - 8
  assert chat.tokenizer.decode(ids).endswith(tasks.USER_PREFIX + "last one?" +
                                             tasks.ASSISTANT_PREFIX)
