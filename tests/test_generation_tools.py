"""Streaming generation, Ctrl-C during a generation, chat templates and few-shot evaluation.

The pretrained model here is the tiny Llama GGUF fixture (tests/fixtures/gguf, random weights,
a 420-token byte-level vocabulary, context 128): what is checked is the machinery (streams,
stops, batching and padding of few-shot prompts), not the quality of the text.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import convert, decode, fewshot, tasks
from research.chat import Chat
from research.config import ExperimentConfig, load_config_file
from research.generate import generate_text
from research.kinds.instruction import GEMMA, PLAIN, chat_template, instruction_text
from tests import cli

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

TINY = str(REPO_ROOT / "tests" / "fixtures" / "gguf" / "tiny_llama.gguf")


@pytest.fixture(scope="module")
def tiny():
  model, params, tokenizer, config = convert.load_pretrained(TINY)
  return model, params, tokenizer, config


def test_stream_gives_the_tokens_of_the_one_program_generation(tiny):
  model, params, _, _ = tiny
  prompt = np.array([[5, 9, 33, 70], [8, 8, 100, 3]], np.int32)
  sampling = decode.SamplingConfig(temperature=1.0)  # sampled: the random draws line up too
  rng = jax.random.key(3)
  whole = np.asarray(decode._sample(  # pylint: disable=protected-access
      params, jnp.asarray(prompt), jnp.ones(prompt.shape, bool), jax.random.fold_in(rng, 0),
      model=model, num_steps=21, sampling=sampling))
  chunks = list(decode.stream(model, params, prompt, 21, rng, sampling, chunk=4))
  assert [c.shape[1] for c in chunks] == [4, 4, 4, 4, 4, 1]
  np.testing.assert_array_equal(np.concatenate(chunks, axis=1), whole)


def test_stream_stops_once_every_row_has_ended(tiny):
  model, params, _, _ = tiny
  prompt = np.array([[5, 9, 33, 70], [8, 8, 100, 3]], np.int32)
  greedy = decode.SamplingConfig(temperature=0.0)
  free = np.concatenate(list(decode.stream(model, params, prompt, 24, jax.random.key(0), greedy,
                                           chunk=4)), axis=1)
  eos = int(free[0, 5])  # row 0 "ends" at its 6th token
  ended = np.concatenate(list(decode.stream(model, params, prompt, 24, jax.random.key(0),
                                            greedy, eos_id=eos, chunk=4)), axis=1)
  first = [int(np.argmax(row == eos)) if (row == eos).any() else None for row in free]
  for row, stop, out in zip(free, first, ended):
    if stop is None:  # a row that never ends runs on unchanged
      np.testing.assert_array_equal(out, row[:out.size])
    else:
      np.testing.assert_array_equal(out[:stop + 1], row[:stop + 1])
      assert (out[stop:] == eos).all()  # after a row's end: its end token again
  if None not in first:
    assert ended.shape[1] == -(-(max(first) + 1) // 4) * 4  # no chunk after every row ended


def test_generation_streams_its_text_and_ctrl_c_keeps_it():
  pieces = []
  greedy = decode.SamplingConfig(temperature=0.0)
  texts = generate_text(None, "hola", 40, greedy, pretrained=TINY, on_text=pieces.append)
  assert len(pieces) > 1 and "".join(pieces) == texts[0]

  def interrupt(piece):
    pieces.append(piece)
    if len(pieces) == 2:
      raise KeyboardInterrupt
  pieces.clear()
  with pytest.raises(decode.Stopped) as stopped:
    generate_text(None, "hola", 40, greedy, pretrained=TINY, on_text=interrupt)
  kept = stopped.value.texts[0]
  assert texts[0].startswith(kept) and len("hola") < len(kept) <= len(texts[0])


def test_chat_keeps_the_turns_that_fit_and_says_when_it_drops_some(tiny, capsys):
  chat = Chat(None, 40, decode.SamplingConfig(temperature=0.0), pretrained=TINY)
  assert chat.template == PLAIN  # the Llama fixture has no Gemma turn markers
  shown = []
  reply = chat.reply("hola", shown.append)
  assert "".join(shown) == reply and chat.history == [("hola", reply)]
  chat.history += [("x" * 30, "y" * 30)] * 3
  ids = chat.context_ids("adios")
  assert len(ids) <= chat.config.model.max_len - chat.max_new_tokens
  assert "oldest" in capsys.readouterr().err


def _gemma_like(tokenizer):
  """The fixture's vocabulary with Gemma's two turn markers added (as special tokens)."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  from research.data.tokenizers import HFTokenizer  # pylint: disable=import-outside-toplevel
  tokenizer_json = tokenizers.Tokenizer.from_str(tokenizer.tokenizer_json)
  tokenizer_json.add_special_tokens(["<start_of_turn>", "<end_of_turn>"])
  return HFTokenizer(tokenizer_json.to_str())


def test_gemma_vocabularies_get_gemma_turn_markers(tiny):
  tokenizer = _gemma_like(tiny[2])
  assert chat_template(tokenizer) == GEMMA
  ids = list(decode.encode_with_specials(tokenizer, GEMMA.user + "¿Hola?" + GEMMA.assistant,
                                         list(GEMMA.markers)))
  assert ids.count(tokenizer.token_to_id("<start_of_turn>")) == 2
  assert ids.count(tokenizer.token_to_id("<end_of_turn>")) == 1
  assert tokenizer.decode(ids) == GEMMA.user + "¿Hola?" + GEMMA.assistant


def test_instruction_tuning_on_a_gemma_vocabulary_writes_what_chat_writes(tiny):
  """A one-turn conversation as the instruction kind trains on it is what research.chat reads
  the tuned model with: the same prompt ids (Gemma's markers as their ids), the response ending
  where chat stops (EOS: a base Gemma cannot learn to write <end_of_turn>, the kind's
  docstring), and evaluation's generation stopping at the kind's end token."""
  tokenizer = _gemma_like(tiny[2])
  config = load_config_file(str(REPO_ROOT / "configs" / "alpaca_gpt.py"))
  config.task.update(max_target_len=32, eval_batch_size=2)
  config.data.update(seq_len=96)
  config = ExperimentConfig.from_config_dict(config)
  kind = tasks.kind_of(config, tokenizer)
  chat = Chat(None, 40, decode.SamplingConfig(temperature=0.0), pretrained=TINY)
  chat.use_tokenizer(tokenizer)
  end_of_turn = tokenizer.token_to_id("<end_of_turn>")
  records = [{"instruction": "¿Cuál es la capital de España?", "input": "", "output": "Madrid."},
             {"instruction": "Translate.", "input": "the dog\nruns", "output": "el perro"}]
  for record, feature in zip(records, kind.features(records)):
    prompt, response = feature["prompt"], feature["target"]
    np.testing.assert_array_equal(prompt, chat.context_ids(instruction_text(record)))
    # The begin-of-text id, then the user's turn opened by its marker's id, not its text.
    assert list(prompt[:2]) == [tokenizer.token_to_id("<|begin_of_text|>"),
                                tokenizer.token_to_id("<start_of_turn>")]
    assert list(response) == list(tokenizer.encode(record["output"])) + [tokenizer.eos_id]
  assert kind.end_id == tokenizer.eos_id and chat.end_id == end_of_turn  # chat stops at both
  # Generation stops at the kind's end token (set here to one the fixture's random model
  # writes: its 4th greedy token).
  model, params, _, _ = tiny
  plain = [np.array([5, 9, 33, 70], np.int32), np.array([8, 8, 100], np.int32)]
  kind.end_id = -1  # never written: the whole generation
  free = kind._generate(model, params, plain, seq2seq=False)  # pylint: disable=protected-access
  kind.end_id = int(free[0][3])
  cut = kind._generate(model, params, plain, seq2seq=False)  # pylint: disable=protected-access
  for whole, ended in zip(free, cut):
    stop = list(whole).index(kind.end_id) if kind.end_id in whole else len(whole)
    np.testing.assert_array_equal(ended, whole[:stop])
  assert len(cut[0]) <= 3


def _translation_records(n):
  words = ["casa", "perro", "gato", "sol", "luna", "agua", "mar", "cielo"]
  return [{"es": f"el {words[i % 8]} y la {words[(i * 3) % 8]}" + " muy" * (i % 2),
           "en": f"the {i}"} for i in range(n)]


def test_few_shot_batches_answer_as_each_prompt_alone(tiny):
  model, params, tokenizer, config = tiny
  records, train = _translation_records(9), _translation_records(40)[20:]
  result, predictions = fewshot.evaluate(model, params, tokenizer, config, "spa_eng", records,
                                         train, shots=1, begin=[])
  assert result["examples"] == 9 and 0 <= result["bleu"] <= 100
  context = fewshot.demonstrations(fewshot.TASKS["spa_eng"], train, tokenizer, 1)
  for record, prediction in zip(records, predictions):
    ids = np.asarray(tokenizer.encode(context + fewshot.TASKS["spa_eng"].question(record)))
    alone = decode.generate(model, params, ids[None], 48, jax.random.key(0),
                            decode.SamplingConfig(temperature=0.0))[0, ids.size:]
    alone = alone[:np.argmax(alone == tokenizer.eos_id)] if (alone == tokenizer.eos_id).any() \
        else alone
    assert prediction == tokenizer.decode(alone).strip().split("\n")[0].strip()


def test_few_shot_classification_ranks_the_label_words(tiny):
  model, params, tokenizer, config = tiny
  records = [{"sentence": s, "label": i % 2} for i, s in enumerate(
      ["a fine film", "dull and long", "great fun", "awful , bad", "ok"])]
  result, predictions = fewshot.evaluate(model, params, tokenizer, config, "sst2", records,
                                         records, shots=2, begin=[])
  task = fewshot.TASKS["sst2"]
  context = fewshot.demonstrations(task, records, tokenizer, 2)
  first = [int(tokenizer.encode(c)[0]) for c in task.choices]
  forward = jax.jit(lambda ids: model.apply({"params": params}, ids)[0, -1])
  for record, prediction in zip(records, predictions):
    ids = jnp.asarray(tokenizer.encode(context + task.question(record)))[None]
    logits = np.asarray(forward(ids))
    assert prediction == task.choices[int(np.argmax(logits[first]))].strip()
  expected = np.mean([p == ("negative", "positive")[r["label"]]
                      for p, r in zip(predictions, records)])
  assert result["accuracy"] == pytest.approx(expected)


def test_evaluate_pretrained_is_one_line_without_a_task():
  run = cli.run("research.evaluate", [f"--pretrained={TINY}"], timeout=300)
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1].startswith("error: --pretrained is evaluated "
                                                         "few-shot on a task: add --task=")


def test_ctrl_c_stops_the_generate_cli_and_keeps_the_text():
  """A generation far past the context (the window slides) streams; SIGINT ends it with what was
  written on stdout, a note and exit status 130. (The random fixture model ends a text when it
  happens to sample its end token; a seed whose text ended before the signal is tried again
  with the next seed.)"""
  import os  # pylint: disable=import-outside-toplevel
  import signal  # pylint: disable=import-outside-toplevel
  for seed in range(4):
    process = subprocess.Popen(
        [sys.executable, "-m", "research.generate", f"--pretrained={TINY}", "--prompt=hola",
         "--max_new_tokens=1000000", f"--seed={seed}"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
      first = process.stdout.read(8)  # the stream has started
      process.send_signal(signal.SIGINT)
      out, err = process.communicate(timeout=120)
    finally:
      process.kill()
    if process.returncode == 0 and "interrupted" not in err.decode():
      continue  # this seed's text ended before the signal came
    assert process.returncode == 130, err.decode()
    text = (first + out).decode("utf-8", "replace")
    assert text.startswith("hola") and len(text) > len("hola")
    assert "note: interrupted (Ctrl-C)" in err.decode()
    assert "the window slides" in err.decode()
    return
  pytest.fail("every seed's generation ended before the signal came")
