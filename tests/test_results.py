"""experiments/results.py: the README's results tables are the committed results files, the
runner runs README commands per seed and resumes, and a run records its precision policy."""

import json

import pytest

from experiments import results
from research import workdir as workdir_lib
from research.paths import REPO_ROOT


def test_readme_tables_are_the_committed_results():
  readme = (REPO_ROOT / "README.md").read_text()
  blocks = results.readme_blocks(readme)
  assert blocks, "the README has no generated results tables"
  for name, start, end in blocks:
    committed = json.loads((REPO_ROOT / name).read_text())
    assert readme[start:end] == results.render_tables(committed), (
        f"the README's table from {name} differs from that file: run "
        "`python -m experiments.results --readme`")
    markdown = (REPO_ROOT / name).with_suffix(".md").read_text()
    assert markdown == results.render(committed), f"{name} and its .md differ"


def test_every_committed_result_names_its_machine_precision_and_seeds():
  files = sorted(results.COMMITTED.glob("*/results.json"))
  assert files
  for path in files:
    committed = json.loads(path.read_text())
    assert committed["machine"]["tag"] == path.parent.name
    assert committed["machine"]["cpu_kind"] in ("AMX", "AVX-512", "AVX2", "other")
    for name, seeds in committed["rows"].items():
      assert name in results.ROWS
      for seed, record in seeds.items():
        assert record["seed"] == int(seed)
        assert record["precision"]["matmul_dtype"] in ("float32", "bfloat16")
        assert set(record["metrics"]) == {m.key for m in results.ROWS[name].metrics}


def test_mean_and_sample_sd():
  assert results.mean_sd([1.0], 3) == "1.000"
  assert results.mean_sd([1.0, 2.0, 3.0], 2) == "2.00 ± 1.00"


def test_a_resume_in_another_precision_says_so(tmp_path):
  bf16 = {"matmul_dtype": "bfloat16", "activation_dtype": "float32"}
  f32 = {"matmul_dtype": "float32", "activation_dtype": "float32"}
  assert workdir_lib.record_precision(tmp_path, bf16, "AMX box", 0) is None
  assert workdir_lib.record_precision(tmp_path, bf16, "AMX box", 100) is None  # same policy
  stretches = json.loads((tmp_path / "precision.json").read_text())["stretches"]
  assert [s["from_step"] for s in stretches] == [0]
  note = workdir_lib.record_precision(tmp_path, f32, "AVX2 box", 200)
  assert note.startswith("note: steps 0-200") and "matmul_dtype=bfloat16 -> float32" in note
  assert "\n" not in note
  stretches = json.loads((tmp_path / "precision.json").read_text())["stretches"]
  assert [(s["from_step"], s["matmul_dtype"]) for s in stretches] == [(0, "bfloat16"),
                                                                      (200, "float32")]
  # Back on the first machine, resuming at step 300: the change is said again.
  assert "float32 -> bfloat16" in workdir_lib.record_precision(tmp_path, bf16, "AMX box", 300)
  # A run restarted from scratch drops the stretches its checkpoint no longer holds.
  assert workdir_lib.record_precision(tmp_path, f32, "AVX2 box", 0) is None
  stretches = json.loads((tmp_path / "precision.json").read_text())["stretches"]
  assert [(s["from_step"], s["matmul_dtype"]) for s in stretches] == [(0, "float32")]


def test_rows_run_after_the_rows_they_start_from():
  names = [row.name for row in results.order_rows(["spa_eng_t5_continued", "sst2_minilm"])]
  assert names == ["spa_eng_t5", "spa_eng_t5_continued", "sst2_minilm"]


TINY = ("model.num_layers=1", "model.embed_dim=32", "model.num_heads=2", "model.mlp_dim=64",
        "data.seq_len=32", "data.batch_size=8", "train.steps=3", "train.eval_every=3",
        "train.eval_batches=1", "train.eval_batch_size=8", "train.checkpoint_every=3",
        "train.log_every=1", "optimizer.warmup_steps=1")


def test_the_runner_runs_rows_per_seed_and_skips_finished_ones(tmp_path, monkeypatch):
  first = results.Row("tiny", "pretraining", "gpt_shakespeare_char.py", "tiny GPT",
                      (results.LOSS,), overrides=TINY)
  second = results.Row("tiny_more", "pretraining", "gpt_shakespeare_char.py", "tiny, continued",
                       (results.LOSS,), overrides=TINY, after="tiny")
  monkeypatch.setattr(results, "ROWS", {"tiny": first, "tiny_more": second})
  out = tmp_path / "out"
  written = results.run(out, ["tiny_more"], [0])
  assert set(written["rows"]) == {"tiny", "tiny_more"}
  record = written["rows"]["tiny_more"]["0"]
  assert record["steps"] == 3 and record["metrics"]["loss"] > 0
  assert record["precision"]["matmul_dtype"] in ("float32", "bfloat16")
  assert "--config.init_from=OUT/tiny/seed0/workdir" in record["commands"][0]
  saved = json.loads((out / "tiny_more/seed0/workdir/config.json").read_text())
  assert saved["train"]["seed"] == 0 and saved["init_from"].endswith("tiny/seed0/workdir")
  markdown = (out / "results.md").read_text()
  assert "[`tiny_more`]" in markdown and "val loss **" in markdown
  # A rerun runs nothing (no subprocess) and gives the same results.
  monkeypatch.setattr(results, "run_row", lambda *a: pytest.fail("a finished row ran again"))
  again = results.run(out, ["tiny_more"], [0])
  assert again["rows"] == written["rows"]
